//! Choosing the next token from the logits: greedy, or temperature + top-p with a seeded RNG, after
//! banning tokens that would repeat an n-gram and penalising tokens already written.

use serde::{Deserialize, Serialize};

/// How tokens are chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling: sample among the most likely tokens whose probabilities sum to `top_p`
    /// (1 = all tokens). Ignored when greedy.
    pub top_p: f32,
    /// Seed of the sampling RNG: the same seed gives the same text.
    pub seed: u64,
    /// Ban any token that would repeat an n-gram of this length (0 = off; ECR uses 3).
    pub no_repeat_ngram: usize,
    /// Whether the prompt's n-grams count as already seen (Hugging Face's rule for decoder-only
    /// models). Off by default: a prompt full of facts would otherwise forbid quoting a title.
    pub ngram_includes_prompt: bool,
    /// Hugging Face's (CTRL's) repetition penalty: the logit of a token already in the history
    /// (the same history as the n-gram rule's) is divided by this when positive and multiplied by
    /// it when negative (1 = off; above 1 discourages repeating a word, e.g. "great ... great").
    #[serde(skip_serializing_if = "is_one")]
    pub repetition_penalty: f32,
}

fn is_one(x: &f32) -> bool {
    *x == 1.0
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            seed: 42,
            no_repeat_ngram: 0,
            ngram_includes_prompt: false,
            repetition_penalty: 1.0,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding with no n-gram rule.
    pub fn greedy() -> Self {
        Self::default()
    }
}

/// A small, fast, seedable RNG (SplitMix64): reproducible across platforms.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// An RNG from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Names (as token sequences) that the repetition rules must not deform. Without it the
/// n-gram ban and the repetition penalty make a model that writes a name for the second time
/// avoid its tokens ("Blended" becomes "Blened", "Tommy Chong" "Tommy Chung"). Spared after a
/// history: the next token of each name the history ends inside of. A name's first token and
/// the words between names stay under the rules, so neither "Blended Blended Blended" nor a
/// repeated "X stars Y. X stars Y." can loop.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Spared {
    names: Vec<Vec<u32>>,
}

impl Spared {
    /// The names given as token sequences (empty ones and duplicates are dropped).
    pub fn new(names: impl IntoIterator<Item = Vec<u32>>) -> Self {
        let mut names: Vec<Vec<u32>> = names.into_iter().filter(|n| !n.is_empty()).collect();
        names.sort_unstable();
        names.dedup();
        Self { names }
    }

    /// The tokens spared after `history` into `out`, ascending without duplicates.
    pub fn tokens_after(&self, history: &[u32], out: &mut Vec<u32>) {
        out.clear();
        for name in &self.names {
            for j in 1..name.len() {
                if history.ends_with(&name[..j]) {
                    out.push(name[j]);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
    }
}

/// Picks tokens according to [`SamplingParams`]; one per generation (it owns the RNG).
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    spared: Spared,
    /// Reused by the repetition penalty, so that a token costs no allocation.
    seen: Vec<u32>,
    /// Reused for the tokens [`Spared`] after the current history.
    spared_now: Vec<u32>,
}

impl Sampler {
    /// A sampler seeded from `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        Self::sparing(params, Spared::default())
    }

    /// A sampler whose repetition rules spare the names of `spared`.
    pub fn sparing(params: SamplingParams, spared: Spared) -> Self {
        let rng = Rng::new(params.seed);
        Self { params, rng, spared, seen: Vec::new(), spared_now: Vec::new() }
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Choose the next token. `history` is the sequence the n-gram rule looks at (the generated
    /// tokens, preceded by the prompt when `ngram_includes_prompt`). Banned tokens get `-inf`,
    /// except those the sampler's [`Spared`] names spare (which the penalty skips too).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.spared.tokens_after(history, &mut self.spared_now);
        let spared = &self.spared_now;
        penalise_repeats(logits, history, self.params.repetition_penalty, spared, &mut self.seen);
        for t in banned_tokens(history, self.params.no_repeat_ngram) {
            if spared.binary_search(&t).is_ok() {
                continue;
            }
            if let Some(l) = logits.get_mut(t as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        if self.params.temperature <= 0.0 {
            return argmax(logits);
        }
        self.sample_top_p(logits)
    }

    fn sample_top_p(&mut self, logits: &[f32]) -> u32 {
        let inv_t = 1.0 / self.params.temperature as f64;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, ((l as f64 - max) * inv_t).exp()))
            .collect();
        if probs.is_empty() {
            return argmax(logits);
        }
        let total: f64 = probs.iter().map(|p| p.1).sum();
        // Most likely first; ties broken by id so the order (and the draw) is deterministic.
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let top_p = (self.params.top_p as f64).clamp(0.0, 1.0);
        let mut keep = probs.len();
        if top_p < 1.0 {
            let mut acc = 0.0;
            for (i, p) in probs.iter().enumerate() {
                acc += p.1 / total;
                if acc >= top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        let kept = &probs[..keep];
        let mass: f64 = kept.iter().map(|p| p.1).sum();
        let mut r = self.rng.next_f64() * mass;
        for p in kept {
            r -= p.1;
            if r < 0.0 {
                return p.0;
            }
        }
        kept[kept.len() - 1].0
    }
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Applies the repetition penalty `p` once to each distinct token of `history` (1 = nothing)
/// but those in `spared` (ascending); `seen` is scratch space, kept by the caller across tokens.
pub fn penalise_repeats(logits: &mut [f32], history: &[u32], p: f32, spared: &[u32], seen: &mut Vec<u32>) {
    if p == 1.0 {
        return;
    }
    seen.clear();
    seen.extend_from_slice(history);
    seen.sort_unstable();
    seen.dedup();
    for &t in seen.iter().filter(|t| spared.binary_search(t).is_err()) {
        if let Some(l) = logits.get_mut(t as usize) {
            *l = if *l > 0.0 { *l / p } else { *l * p };
        }
    }
}

/// Tokens that would complete an n-gram already present in `history`: for n-gram size `n`, the
/// last `n - 1` tokens are a prefix; every earlier occurrence of that prefix bans what followed it.
pub fn banned_tokens(history: &[u32], n: usize) -> Vec<u32> {
    if n == 0 || history.len() < n {
        return Vec::new();
    }
    let prefix = &history[history.len() - (n - 1)..];
    history.windows(n).filter(|w| &w[..n - 1] == prefix).map(|w| w[n - 1]).collect()
}

/// Whether `tokens` repeats some n-gram (for tests and checks).
pub fn has_repeated_ngram(tokens: &[u32], n: usize) -> bool {
    if n == 0 {
        return false;
    }
    let mut seen = std::collections::HashSet::new();
    tokens.windows(n).any(|w| !seen.insert(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banned_tokens_follow_the_last_prefix() {
        // history ... 5 6 7 ... 5 6 → 7 is banned for trigrams.
        assert_eq!(banned_tokens(&[5, 6, 7, 1, 5, 6], 3), vec![7]);
        assert_eq!(banned_tokens(&[5, 6, 7, 1, 5, 6], 0), Vec::<u32>::new());
        assert_eq!(banned_tokens(&[5, 6], 3), Vec::<u32>::new());
        // Unigram rule: every token seen is banned.
        assert_eq!(banned_tokens(&[3, 4], 1), vec![3, 4]);
    }

    #[test]
    fn the_repetition_penalty_lowers_each_seen_token_once_whatever_its_sign() {
        let mut logits = vec![4.0, -1.0, 3.0, 2.0];
        penalise_repeats(&mut logits, &[0, 1, 0, 0], 2.0, &[], &mut Vec::new());
        assert_eq!(logits, vec![2.0, -2.0, 3.0, 2.0]);
        // Greedy: token 0 led, once written it falls behind token 2.
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..SamplingParams::greedy() });
        assert_eq!(s.sample(&mut [4.0, -1.0, 3.0], &[]), 0);
        assert_eq!(s.sample(&mut [4.0, -1.0, 3.0], &[0]), 2);
        let mut off = vec![4.0, -1.0];
        penalise_repeats(&mut off, &[0, 1], 1.0, &[], &mut Vec::new());
        assert_eq!(off, vec![4.0, -1.0]);
    }

    #[test]
    fn greedy_takes_the_argmax_unless_banned() {
        let mut s = Sampler::new(SamplingParams { no_repeat_ngram: 2, ..SamplingParams::greedy() });
        let mut logits = vec![0.0, 5.0, 1.0];
        assert_eq!(s.sample(&mut logits.clone(), &[0]), 1);
        // history 1 0 1: the bigram (1, 0) exists, so after 1 the token 0 is banned, 1 still allowed.
        assert_eq!(s.sample(&mut logits, &[1, 1]), 2);
    }

    #[test]
    fn top_p_sampling_is_deterministic_for_a_seed_and_respects_the_nucleus() {
        let params = SamplingParams { temperature: 1.0, top_p: 0.9, seed: 7, ..Default::default() };
        let logits: Vec<f32> = (0..50).map(|i| -(i as f32) * 0.5).collect();
        let draw = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone());
            (0..200).map(|_| s.sample(&mut logits.clone(), &[])).collect::<Vec<_>>()
        };
        let a = draw(&params);
        assert_eq!(a, draw(&params), "same seed, same draws");
        assert_ne!(a, draw(&SamplingParams { seed: 8, ..params.clone() }), "another seed, other draws");
        // p_i ∝ e^{-i/2}: the 0.9 nucleus is tokens 0..=4 (cumulative 0.918 at i = 4).
        assert!(a.iter().all(|&t| t <= 4), "a token outside the nucleus was drawn: {a:?}");
        assert!(a.iter().any(|&t| t != 0), "sampling never left the argmax");
    }

    #[test]
    fn spared_names_escape_the_ban_and_the_penalty_only_where_they_continue() {
        // The name is 7 8 9; history "5 7 8 9 5 7 8": the trigram rule bans 9 after "7 8", but 9
        // continues the name being written, so it is spared. Its first token 7 is not: a name
        // may not follow itself forever.
        let spared = Spared::new([vec![7, 8, 9], vec![], vec![7, 8, 9]]);
        let mut now = Vec::new();
        spared.tokens_after(&[5, 7, 8, 9, 5, 7, 8], &mut now);
        assert_eq!(now, vec![9]);
        spared.tokens_after(&[5, 7], &mut now);
        assert_eq!(now, vec![8]);
        spared.tokens_after(&[5, 8], &mut now);
        assert!(now.is_empty(), "8 outside the name is not spared");
        spared.tokens_after(&[7, 8, 9], &mut now);
        assert!(now.is_empty(), "after the whole name nothing is spared");
        let params = SamplingParams { no_repeat_ngram: 3, repetition_penalty: 100.0, ..SamplingParams::greedy() };
        let history = [5, 7, 8, 9, 5, 7, 8];
        let logits = |top: usize| {
            let mut l = vec![0.1f32; 10];
            l[top] = 5.0;
            l
        };
        assert_ne!(Sampler::new(params.clone()).sample(&mut logits(9), &history), 9, "unspared: banned");
        let mut s = Sampler::sparing(params.clone(), spared.clone());
        assert_eq!(s.sample(&mut logits(9), &history), 9, "spared: the name goes on");
        // Outside a name the rules hold: 5 was written, is penalised, and 4 wins over it.
        let mut l = logits(5);
        l[4] = 1.0;
        assert_eq!(s.sample(&mut l, &[5, 6]), 4);
    }

    #[test]
    fn repeated_ngrams_are_detected() {
        assert!(has_repeated_ngram(&[1, 2, 3, 9, 1, 2, 3], 3));
        assert!(!has_repeated_ngram(&[1, 2, 3, 9, 1, 2, 4], 3));
    }
}
