//! The loaded model with its two decoders behind one API, per-generation sessions, and the
//! generation loop (sampling, stop rules, streaming).

use crate::candle_ref::{CandleModel, CandleState};
use crate::fast::{FastModel, FastState};
use crate::gguf::{GgufFile, LlamaConfig};
use crate::lora::{Adapter, BaseModel, LoraConfig};
use crate::sampling::{Sampler, SamplingParams, Spared};
use crate::tokenizer::{LlmTokenizer, TextStream};
use crate::{LlmError, Result};
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Which decoder runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecoderKind {
    /// Our decoder ([`crate::fast`]): repacked quantized weights, SIMD kernels, a thread pool.
    #[default]
    Fast,
    /// candle's `quantized_llama` (the reference), optionally re-quantized to Q4_0 at load.
    Candle,
}

/// How to load a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadOptions {
    /// The decoder.
    pub decoder: DecoderKind,
    /// Threads of the fast decoder's pool (default: `available_parallelism`). candle's decoder
    /// uses its own (rayon) threads, `RAYON_NUM_THREADS`.
    pub threads: Option<usize>,
    /// candle only: re-quantize the Q4_1 weights to Q4_0 at load, candle's fastest configuration
    /// on this CPU (Q4_1 has no SIMD kernel in candle 0.11). Changes the outputs slightly.
    pub candle_q4_0: bool,
    /// Fast decoder only: use the portable scalar kernels even where AVX2 or AVX-512 VNNI is available
    /// (for tests of the fast path against the fallback).
    pub force_scalar: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { decoder: DecoderKind::Fast, threads: None, candle_q4_0: false, force_scalar: false }
    }
}

/// What to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerateParams {
    /// Stop after this many new tokens.
    pub max_new_tokens: usize,
    /// Generate at least this many new tokens: until then the end-of-sequence token, the other
    /// control tokens and the tokens that contain a stop sequence are banned (Hugging Face's
    /// `min_new_tokens`, extended to the stop sequences). An instruct model prompted to continue
    /// a finished opening sentence otherwise often ends its turn at once.
    pub min_new_tokens: usize,
    /// Token choice.
    pub sampling: SamplingParams,
    /// Stop when the text contains one of these; the text ends before it. (The end-of-sequence
    /// token, `<|im_end|>` for SmolLM2-Instruct, always stops.)
    pub stop: Vec<String>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            min_new_tokens: 0,
            sampling: SamplingParams::default(),
            stop: vec!["<|im_end|>".into()],
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum StopReason {
    /// The model produced the end-of-sequence token.
    Eos,
    /// The text reached a stop sequence (given).
    StopSequence(String),
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The callback asked to stop.
    Cancelled,
    /// The context window is full.
    ContextFull,
}

/// Wall-clock times of one generation.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Reading the prompt (prefill), seconds.
    pub prompt_s: f64,
    /// From the start to the first generated token, milliseconds.
    pub first_token_ms: f64,
    /// Decoding the generated tokens after the first one, seconds.
    pub generate_s: f64,
}

/// The result of a generation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Generation {
    /// The generated text (the stop sequence and end-of-sequence token not included).
    pub text: String,
    /// The generated token ids (including the one that completed a stop sequence, not the eos).
    pub tokens: Vec<u32>,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Why it ended.
    pub stop: StopReason,
    /// Times.
    pub timings: Timings,
}

enum Backend {
    Fast(FastModel),
    Candle(CandleModel),
}

/// A loaded model: tokenizer and weights, `Send + Sync`, shared by any number of [`Session`]s.
pub struct Llm {
    tokenizer: Arc<LlmTokenizer>,
    config: LlamaConfig,
    backend: Backend,
    kind: DecoderKind,
}

impl Llm {
    /// Load a GGUF file with the chosen decoder.
    pub fn load(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        let path = path.as_ref();
        let _span = tracing::info_span!("llm_load", path = %path.display(), decoder = ?opts.decoder).entered();
        let g = GgufFile::open(path)?;
        let tokenizer = Arc::new(LlmTokenizer::from_gguf(&g)?);
        Self::from_gguf(&g, tokenizer, opts)
    }

    /// Load a GGUF file with a LoRA adapter file applied beside its weights (fast decoder only).
    /// The adapter must have been trained on this very file, and with `expected`'s shape when
    /// given ([`Adapter::load`]).
    pub fn load_with_adapter(
        path: impl AsRef<Path>,
        opts: &LoadOptions,
        adapter: &Path,
        expected: Option<&LoraConfig>,
    ) -> Result<Self> {
        let path = path.as_ref();
        let _span = tracing::info_span!("llm_load", path = %path.display(), adapter = %adapter.display()).entered();
        let g = GgufFile::open(path)?;
        let adapter = Adapter::load(adapter, &BaseModel::of(&g)?, expected)?;
        let tokenizer = Arc::new(LlmTokenizer::from_gguf(&g)?);
        Self::from_gguf_with(&g, tokenizer, opts, Some(&adapter))
    }

    /// The residual stream (`T × d_model`, row-major) of `tokens` from position 0 as it enters
    /// layer `layer`, computed by the fast decoder as generation computes it: the frozen input of
    /// the layers an adapter trains ([`crate::dense::DenseLlama::target_loss_from`]).
    pub fn residual_before(&self, tokens: &[u32], layer: usize) -> Result<Vec<f32>> {
        match &self.backend {
            Backend::Fast(m) => m.residual_before(&mut m.new_state(), tokens, layer),
            Backend::Candle(_) => Err(LlmError::Invalid("residual_before needs the fast decoder".into())),
        }
    }

    /// Load from an opened file, reusing a tokenizer (e.g. to load both decoders from one read).
    pub fn from_gguf(g: &GgufFile, tokenizer: Arc<LlmTokenizer>, opts: &LoadOptions) -> Result<Self> {
        Self::from_gguf_with(g, tokenizer, opts, None)
    }

    /// [`Llm::from_gguf`] with `adapter` applied beside the quantized weights, in f32 (candle's
    /// decoder cannot take an adapter).
    pub fn from_gguf_with(
        g: &GgufFile,
        tokenizer: Arc<LlmTokenizer>,
        opts: &LoadOptions,
        adapter: Option<&Adapter>,
    ) -> Result<Self> {
        let config = g.llama_config()?;
        let backend = match (opts.decoder, adapter) {
            (DecoderKind::Fast, _) => {
                Backend::Fast(FastModel::load(g, &config, opts.threads, opts.force_scalar, adapter)?)
            }
            (DecoderKind::Candle, None) => Backend::Candle(CandleModel::load(g, opts.candle_q4_0)?),
            (DecoderKind::Candle, Some(_)) => {
                return Err(LlmError::Invalid(
                    "candle's reference decoder cannot apply a LoRA adapter: use decoder = \"fast\" or no adapter"
                        .into(),
                ));
            }
        };
        Ok(Self { tokenizer, config, backend, kind: opts.decoder })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &LlmTokenizer {
        &self.tokenizer
    }

    /// A shared handle on the tokenizer.
    pub fn tokenizer_arc(&self) -> Arc<LlmTokenizer> {
        self.tokenizer.clone()
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Which decoder runs it.
    pub fn kind(&self) -> DecoderKind {
        self.kind
    }

    /// A description of the decoder (kernels, threads) for logs and benchmarks.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Fast(m) => m.describe(),
            Backend::Candle(m) => m.describe(),
        }
    }

    /// Longest sequence (prompt + generated tokens) a session can hold.
    pub fn max_positions(&self) -> usize {
        match &self.backend {
            Backend::Fast(_) => self.config.context,
            Backend::Candle(_) => self.config.context.min(candle_transformers::models::quantized_llama::MAX_SEQ_LEN),
        }
    }

    /// A new, empty generation state (KV cache) on this model.
    pub fn session(&self) -> Session<'_> {
        let state = match &self.backend {
            Backend::Fast(m) => State::Fast(m.new_state()),
            Backend::Candle(m) => State::Candle(m.new_state()),
        };
        Session { llm: self, state }
    }

    /// Generate a continuation of `prompt` (special tokens written literally are recognised) in a
    /// new session. `on_piece` gets each new piece of text (valid UTF-8, possibly empty pieces are
    /// not sent) and may return `ControlFlow::Break(())` to stop (cancellation).
    pub fn generate(
        &self,
        prompt: &str,
        params: &GenerateParams,
        on_piece: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        self.generate_sparing(prompt, params, &Spared::default(), on_piece)
    }

    /// [`Llm::generate`] with the repetition rules sparing the names of `spared`
    /// ([`Llm::spared_names`]).
    pub fn generate_sparing(
        &self,
        prompt: &str,
        params: &GenerateParams,
        spared: &Spared,
        on_piece: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        let ids = self.tokenizer.encode(prompt)?;
        self.session().generate_sparing(&ids, params, spared, on_piece)
    }

    /// `names` as [`Spared`] token sequences, each as written inside a sentence (after a space)
    /// and at the start of a line.
    pub fn spared_names<S: AsRef<str>>(&self, names: &[S]) -> Result<Spared> {
        let mut seqs = Vec::with_capacity(2 * names.len());
        for name in names.iter().map(AsRef::as_ref).filter(|n| !n.trim().is_empty()) {
            seqs.push(self.tokenizer.encode(&format!(" {name}"))?);
            seqs.push(self.tokenizer.encode(name)?);
        }
        Ok(Spared::new(seqs))
    }
}

enum State {
    Fast(FastState),
    Candle(CandleState),
}

/// One generation's state on a shared [`Llm`]: the KV cache and the position.
pub struct Session<'a> {
    llm: &'a Llm,
    state: State,
}

impl Session<'_> {
    /// Tokens processed so far.
    pub fn position(&self) -> usize {
        match &self.state {
            State::Fast(s) => s.position(),
            State::Candle(s) => s.position(),
        }
    }

    /// Forget everything (empty the KV cache).
    pub fn reset(&mut self) {
        match &mut self.state {
            State::Fast(s) => s.reset(),
            State::Candle(s) => s.reset(),
        }
    }

    /// Append `tokens` at the current position and return the logits after the last of them.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(LlmError::Invalid("forward: no tokens given".into()));
        }
        let vocab = self.llm.config.vocab;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(LlmError::Invalid(format!("token id {bad} is outside the vocabulary of {vocab}")));
        }
        let max = self.llm.max_positions();
        if self.position() + tokens.len() > max {
            return Err(LlmError::Invalid(format!(
                "{} tokens at position {} exceed the context of {max} positions",
                tokens.len(),
                self.position()
            )));
        }
        match (&mut self.state, &self.llm.backend) {
            (State::Fast(s), Backend::Fast(m)) => m.forward(s, tokens),
            (State::Candle(s), Backend::Candle(m)) => m.forward(s, tokens),
            _ => unreachable!("a session's state always matches its model's backend"),
        }
    }

    /// Generate after `prompt` (token ids) from the current position; see [`Llm::generate`].
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        on_piece: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        self.generate_sparing(prompt, params, &Spared::default(), on_piece)
    }

    /// [`Session::generate`] with the repetition rules sparing the names of `spared`.
    pub fn generate_sparing(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        spared: &Spared,
        mut on_piece: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        let _span = tracing::debug_span!("generate", prompt_tokens = prompt.len()).entered();
        if prompt.is_empty() {
            return Err(LlmError::Invalid("the prompt has no tokens".into()));
        }
        let penalty = params.sampling.repetition_penalty;
        if !(penalty.is_finite() && penalty > 0.0) {
            return Err(LlmError::Invalid(format!(
                "sampling.repetition_penalty {penalty}: must be a positive number (1 = off)"
            )));
        }
        let tok = self.llm.tokenizer.clone();
        let start = Instant::now();
        let mut logits = self.forward(prompt)?;
        let prompt_s = start.elapsed().as_secs_f64();
        let mut sampler = Sampler::sparing(params.sampling.clone(), spared.clone());
        let mut history: Vec<u32> = if params.sampling.ngram_includes_prompt { prompt.to_vec() } else { Vec::new() };
        let mut stream = TextStream::new();
        let mut out = Generation {
            text: String::new(),
            tokens: Vec::new(),
            prompt_tokens: prompt.len(),
            stop: StopReason::MaxTokens,
            timings: Timings { prompt_s, ..Default::default() },
        };
        let mut emitted: usize = 0; // bytes of `out.text` already given to the callback
        let max_stop = params.stop.iter().map(String::len).max().unwrap_or(0);
        let mut first_at = None;
        let early_stops = if params.min_new_tokens > 0 { early_stop_tokens(&tok, &params.stop) } else { Vec::new() };
        while out.tokens.len() < params.max_new_tokens {
            if out.tokens.len() < params.min_new_tokens {
                for &t in &early_stops {
                    if let Some(l) = logits.get_mut(t as usize) {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
            let next = sampler.sample(&mut logits, &history);
            if first_at.is_none() {
                first_at = Some(Instant::now());
                out.timings.first_token_ms = start.elapsed().as_secs_f64() * 1e3;
            }
            if next == tok.eos_id() {
                out.stop = StopReason::Eos;
                break;
            }
            out.tokens.push(next);
            history.push(next);
            out.text.push_str(&stream.push(tok.token_bytes(next)));
            // A stop sequence can only start in the part not yet emitted (or just before it).
            let from = floor_char_boundary(&out.text, emitted.saturating_sub(max_stop));
            if let Some((at, s)) = find_stop(&out.text[from..], &params.stop) {
                out.text.truncate(from + at);
                out.stop = StopReason::StopSequence(s.to_string());
                if out.text.len() > emitted {
                    let _ = on_piece(&out.text[emitted..]);
                }
                emitted = out.text.len();
                break;
            }
            // Hold back a tail that could still grow into a stop sequence.
            let safe = out.text.len() - stop_prefix_len(&out.text, &params.stop);
            if safe > emitted {
                let piece = &out.text[emitted..safe];
                emitted = safe;
                if on_piece(piece).is_break() {
                    out.stop = StopReason::Cancelled;
                    break;
                }
            }
            if out.tokens.len() >= params.max_new_tokens {
                break;
            }
            if self.position() + 1 > self.llm.max_positions() {
                out.stop = StopReason::ContextFull;
                break;
            }
            logits = self.forward(&[next])?;
        }
        if !matches!(out.stop, StopReason::StopSequence(_)) {
            out.text.push_str(&stream.finish());
            if out.text.len() > emitted {
                let _ = on_piece(&out.text[emitted..]);
            }
        }
        if let Some(t) = first_at {
            out.timings.generate_s = t.elapsed().as_secs_f64();
        }
        Ok(out)
    }
}

/// The tokens [`GenerateParams::min_new_tokens`] bans: end-of-sequence, the other control tokens,
/// and every token whose text contains a stop sequence (a `"\n"` stop bans the newline tokens).
fn early_stop_tokens(tok: &LlmTokenizer, stops: &[String]) -> Vec<u32> {
    let stops: Vec<&[u8]> = stops.iter().filter(|s| !s.is_empty()).map(|s| s.as_bytes()).collect();
    (0..tok.vocab_size() as u32)
        .filter(|&t| {
            let bytes = tok.token_bytes(t);
            t == tok.eos_id()
                || tok.is_special(t)
                || stops.iter().any(|s| bytes.len() >= s.len() && bytes.windows(s.len()).any(|w| w == *s))
        })
        .collect()
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The earliest stop sequence in `text`: (byte offset, which).
fn find_stop<'s>(text: &str, stops: &'s [String]) -> Option<(usize, &'s str)> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()).map(|at| (at, s.as_str())))
        .min_by_key(|(at, _)| *at)
}

/// Length of the longest suffix of `text` that is a proper prefix of a stop sequence.
fn stop_prefix_len(text: &str, stops: &[String]) -> usize {
    let mut best = 0;
    for s in stops {
        for n in (best + 1..s.len()).rev() {
            if text.len() >= n && s.is_char_boundary(n) && text.as_bytes().ends_with(&s.as_bytes()[..n]) {
                best = n;
                break;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_prefixes_are_held_back() {
        let stops = vec!["<|im_end|>".to_string(), "User:".to_string()];
        assert_eq!(stop_prefix_len("Hello <|im", &stops), 4);
        assert_eq!(stop_prefix_len("Hello Us", &stops), 2);
        assert_eq!(stop_prefix_len("Hello", &stops), 0);
        assert_eq!(find_stop("a User: b <|im_end|>", &stops), Some((2, "User:")));
    }
}
