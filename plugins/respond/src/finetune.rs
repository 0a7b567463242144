//! The generator's fine-tuning (ECR §4.1-4.2): samples from the review database, one per review,
//! and a LoRA adapter trained on them ([`train_adapter`]).
//!
//! A sample: the recipe's prompt, rendered by the recipe's own prompt stage from a turn that holds
//! the movie as the only candidate, the review's KG facts (its entities that are one-hop
//! neighbours of the movie under the recipe's relations), its other entities, and up to `k`
//! sentences of the movie's *other* reviews (as inference retrieves them); the target is the
//! review, whole sentences up to `max_target_tokens`, with KG-fact injection (p 0.1). With
//! `target = "emotional"` the review's sentences that express a feeling (the review database's
//! lexicon mark, the sentences the retriever shows) are the target and the facts and entities of
//! the prompt come from those sentences.
//!
//! Inference prompts differ from ECR's training prompts in two ways that the recipe can close:
//! most recommended movies have no reviews, so their prompts show *similar films'* sentences
//! (`similar_share` of the samples show them too, chosen as the retriever chooses them), and the
//! retriever's knowledge is the movie's plot, genres and people, not only the review's triples
//! (`knowledge = "retrieved"`).
//!
//! `drop_unsupported` leaves out of the targets the sentences whose claims (people, companies,
//! other movies) the evaluation's [`FactChecker`] would count as unsupported.
//!
//! `select = "novel"` draws the training samples by what their targets add ([`novel_order`]):
//! each next sample is the one whose target has the largest share of word pairs not yet in the
//! chosen ones, so reviews made of stock phrases ("I loved it. It was great.") come last.

use crate::knowledge::{KnowledgeIndex, display_name, fact_sentence, info_relations, movie_facts};
use crate::metrics::{FactChecker, RecommendedMovie};
use crate::retrieve::{PassageSource, movie_entities, sentence_passage, similar_sentences};
use crate::reviewdb::ReviewDb;
use crate::stage::{REVIEW_ENTITIES, RetrieverConfig};
use candle_core::{Device, Tensor};
use ecr_data::prepare::Resources;
use ecr_engine::{BoxError, Candidate, Engine, Fact, Field, Passage, Turn};
use ecr_llm::dense::{DenseLlama, LossTerms, itf_weights};
use ecr_llm::gguf::GgufFile;
use ecr_llm::lora::{Adapter, BaseModel, LoraConfig, SplitMix};
use ecr_llm::{Llm, LlmTokenizer};
use ecr_neural::fit::{FitConfig, Objective, Selection, fit};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The adapter file inside the generator's checkpoint directory.
pub const ADAPTER_FILE: &str = "adapter.safetensors";

/// `[stages.<generator>.with.finetune]`: train a LoRA adapter on the review database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    /// Train and use the adapter (`false`: a recipe that extends a fine-tuning one runs the base
    /// model, prompted).
    pub enabled: bool,
    /// The adapter's shape.
    pub lora: LoraConfig,
    /// The training loop's settings (epochs, batch, lr, warm-up, seed).
    pub train: FitConfig,
    /// Where the reviews come from: the review database as a retriever opens it (index_dir,
    /// filter, encoder, relations for the facts).
    pub reviews: RetrieverConfig,
    /// Training samples used at most (drawn by the seed; 0: all).
    pub max_samples: usize,
    /// Held-out samples used at most for selection and perplexity.
    pub max_valid: usize,
    /// Target tokens kept (whole sentences; a first sentence longer than this is cut).
    pub max_target_tokens: usize,
    /// Related entities in a prompt.
    pub max_entities: usize,
    /// Sentences of the movie's other reviews in a prompt.
    pub other_sentences: usize,
    /// KG-fact injection probability per fact (ECR: 0.1).
    pub inject: f64,
    /// Share of movies held out.
    pub valid_share: f64,
    /// Which of a review's sentences make its target.
    pub target: TargetSentences,
    /// Share of samples (drawn by the seed) whose prompt shows similar films' feeling sentences,
    /// found as the retriever finds them for a movie without reviews (the reviews config's
    /// `similar_k`, `per_movie`), instead of the movie's other reviews (0: ECR).
    // Left out of the settings' serialisation at their defaults, so that adapters trained before
    // these keys existed keep their fingerprint.
    #[serde(skip_serializing_if = "is_zero")]
    pub similar_share: f64,
    /// The knowledge in a sample's prompt.
    #[serde(skip_serializing_if = "PromptKnowledge::is_review")]
    pub knowledge: PromptKnowledge,
    /// Leave out of the targets the sentences that name a person, company or movie the KG and
    /// movie_info do not tie to the review's movie (the claims the evaluation's factual
    /// consistency counts as unsupported), so that the adapter does not learn to name-drop.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub drop_unsupported: bool,
    /// How the `max_samples` training samples are drawn from the reviews.
    #[serde(skip_serializing_if = "SampleSelection::is_random")]
    pub select: SampleSelection,
    /// Weight of the token-level unlikelihood loss on the target's own earlier tokens (Welleck et
    /// al., 2019; their value 1.0), added to the training loss: the adapter learns not to say
    /// again what its answer already said. 0: cross-entropy only (ECR). Selection and perplexity
    /// use the cross-entropy alone.
    #[serde(skip_serializing_if = "is_zero")]
    pub unlikelihood: f64,
    /// Exponent λ of the inverse token frequency weights of the cross-entropy (Nakamura et al.,
    /// 2019, "Another diversity-promoting objective function for neural dialogue generation"): a
    /// target token that occurs `c` times over the training targets weighs `c^−λ`, the weights
    /// averaging 1, so the reviewers' stock words ("great", "movie", "loved") teach the adapter
    /// less and their rarer words more. 0: plain cross-entropy (ECR). Selection and perplexity
    /// use the plain cross-entropy.
    #[serde(skip_serializing_if = "is_zero")]
    pub itf: f64,
}

/// How the training samples are drawn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleSelection {
    /// At random, by the seed (ECR).
    #[default]
    Random,
    /// By novelty ([`novel_order`]): the samples whose targets repeat least what the others say.
    Novel,
}

impl SampleSelection {
    fn is_random(&self) -> bool {
        *self == SampleSelection::Random
    }
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// What a sample's prompt shows as knowledge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptKnowledge {
    /// The KG triples between the movie and the entities the target mentions (ECR).
    #[default]
    Review,
    /// What the retriever gives at inference (plot, genres, people by relation, at most the
    /// reviews config's `max_facts`), then the review's triples not among them. KG-fact injection
    /// draws from all of them but the plot, as ECR's draws from the facts its prompt shows.
    Retrieved,
}

impl PromptKnowledge {
    fn is_review(&self) -> bool {
        *self == PromptKnowledge::Review
    }
}

/// Which sentences of a review make a training target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetSentences {
    /// Every sentence, in order (ECR).
    #[default]
    All,
    /// The sentences that express a feeling (at least one lexicon word), in order; a review
    /// without one gives no sample.
    Emotional,
}

impl TargetSentences {
    fn keeps(self, s: &crate::reviewdb::Sentence) -> bool {
        match self {
            TargetSentences::All => true,
            TargetSentences::Emotional => s.is_emotional(),
        }
    }
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            enabled: true,
            lora: LoraConfig { layers: 8, ..LoraConfig::default() },
            train: FitConfig { epochs: 1, batch_size: 4, lr: 1e-3, weight_decay: 0.0, warmup: 0.05, seed: 42 },
            reviews: RetrieverConfig::default(),
            max_samples: 600,
            max_valid: 40,
            max_target_tokens: 96,
            max_entities: 4,
            other_sentences: 2,
            inject: 0.1,
            valid_share: 0.05,
            target: TargetSentences::All,
            similar_share: 0.0,
            knowledge: PromptKnowledge::Review,
            drop_unsupported: false,
            select: SampleSelection::Random,
            unlikelihood: 0.0,
            itf: 0.0,
        }
    }
}

/// What a review gives a sample before rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleFields {
    /// The movie's KG entity and display title (with year).
    pub item: u32,
    /// Title.
    pub movie: String,
    /// The prompt's facts: between the movie and entities the review mentions, after what the
    /// retriever gives with `knowledge = "retrieved"`.
    pub facts: Vec<Fact>,
    /// The review's other entities (display names), at most `max_entities`.
    pub entities: Vec<String>,
    /// Sentences of the movie's other reviews.
    pub reviews: Vec<String>,
    /// Instead of those, similar films' sentences (the passages the retriever would give).
    pub similar: Vec<Passage>,
    /// The target: the review's sentences (after injection).
    pub target: Vec<String>,
    /// Held out (by a hash of the movie), for model selection and perplexity.
    pub held_out: bool,
}

/// The fields of every review in `db` whose movie is a KG movie, built as `o` says.
pub fn sample_fields(db: &ReviewDb, res: &Resources, index: &KnowledgeIndex, o: &FinetuneConfig) -> Vec<SampleFields> {
    let retrieve = o.reviews.options();
    let kg = &res.kg;
    let mut rng = SplitMix::new(o.train.seed);
    // A stream of its own, so that the similar-film draw leaves the injection draws as they were.
    let mut pick = SplitMix::new(o.train.seed ^ 0x5111_1a12);
    let movie_entity = movie_entities(db, &res.linker);
    let no_dialogue = vec![0.0; db.dim()];
    let same = |a: &Fact, b: &Fact| a.relation == b.relation && a.tail.eq_ignore_ascii_case(&b.tail);
    let checker = FactChecker::new(kg, &res.catalogue, &res.linker, index);
    let mut out = Vec::new();
    for (m, movie) in db.movies().iter().enumerate() {
        let Some(item) = movie_entity[m] else { continue };
        let held_out = (SplitMix::new(o.train.seed ^ u64::from(item)).next_f32() as f64) < o.valid_share;
        let neighbours: Vec<(String, u32)> = index
            .neighbours(kg, item)
            .filter_map(|(r, t)| {
                let rel = kg.relations.get(r as usize)?;
                retrieve.relations.contains(rel).then(|| (rel.clone(), t))
            })
            .collect();
        let retrieved = match o.knowledge {
            PromptKnowledge::Review => Vec::new(),
            PromptKnowledge::Retrieved => {
                movie_facts(kg, &res.catalogue, index, item, &movie.title, &retrieve.relations, retrieve.max_facts)
            }
        };
        let sentences = &db.sentences()[db.movie_sentences(m)];
        // The similar films' sentences depend on the movie only: searched once, when first drawn.
        let mut similar_of_movie: Option<Vec<Passage>> = None;
        let mut reviews: Vec<u32> = sentences.iter().map(|s| s.review).collect();
        reviews.dedup();
        let rec = RecommendedMovie { item, name: movie.title.clone() };
        let movie_support = o.drop_unsupported.then(|| checker.support(item));
        let supported = |s: &&crate::reviewdb::Sentence| match &movie_support {
            Some(sup) => checker.claims_against(&s.text, &rec, sup, &[]).iter().all(|c| c.supported),
            None => true,
        };
        for &r in &reviews {
            let own: Vec<_> =
                sentences.iter().filter(|s| s.review == r && o.target.keeps(s)).filter(supported).collect();
            if own.is_empty() {
                continue;
            }
            let mut facts = Vec::new();
            let mut entities = Vec::new();
            for e in own.iter().flat_map(|s| s.entities.iter().copied()) {
                let name = kg.name(e).map(display_name).unwrap_or_default();
                match neighbours.iter().find(|(_, t)| *t == e) {
                    Some((rel, _)) => {
                        let f = Fact { head: movie.title.clone(), relation: rel.clone(), tail: name };
                        if !facts.contains(&f) {
                            facts.push(f);
                        }
                    }
                    None if !name.is_empty() && !entities.contains(&name) && entities.len() < o.max_entities => {
                        entities.push(name)
                    }
                    None => {}
                }
            }
            let mut target: Vec<String> = own.iter().map(|s| s.text.clone()).collect();
            let mut prompt_facts = retrieved.clone();
            prompt_facts.extend(facts.into_iter().filter(|f| !retrieved.iter().any(|g| same(f, g))));
            // ECR injects the facts its prompt shows; with the retriever's knowledge that is them
            // too (not the plot: a synopsis is not a sentence of a review).
            let injectable: Vec<Fact> =
                prompt_facts.iter().filter(|f| f.relation != info_relations::PLOT).cloned().collect();
            inject_facts(&mut target, &injectable, o.inject, &mut rng);
            let (others, similar) = if (pick.next_f32() as f64) < o.similar_share {
                let similar = similar_of_movie.get_or_insert_with(|| {
                    let desc = db.description_vector(m);
                    similar_sentences(db, &movie_entity, item, &no_dialogue, desc, &retrieve)
                        .into_iter()
                        .map(|(i, film, score)| sentence_passage(db, i, film, score, Some(&movie.title)))
                        .collect()
                });
                (Vec::new(), similar.clone())
            } else {
                let others = sentences
                    .iter()
                    .filter(|s| s.review != r && s.is_emotional())
                    .take(o.other_sentences)
                    .map(|s| s.text.clone());
                (others.collect(), Vec::new())
            };
            out.push(SampleFields {
                item,
                movie: movie.title.clone(),
                facts: prompt_facts,
                entities,
                reviews: others,
                similar,
                target,
                held_out,
            });
        }
    }
    out
}

/// ECR's KG-fact injection: each fact, with probability `p`, becomes a sentence placed before the
/// first sentence that mentions its tail (else at a random place).
pub fn inject_facts(target: &mut Vec<String>, facts: &[Fact], p: f64, rng: &mut SplitMix) {
    for f in facts {
        if (rng.next_f32() as f64) >= p {
            continue;
        }
        let tail = f.tail.to_lowercase();
        let at = target
            .iter()
            .position(|s| s.to_lowercase().contains(&tail))
            .unwrap_or_else(|| (rng.next_u64() % (target.len() as u64 + 1)) as usize);
        target.insert(at, fact_sentence(f));
    }
}

/// The word pairs of `sentence` (lowercased, punctuation trimmed), repeats included.
fn word_pairs(sentence: &str) -> Vec<(String, String)> {
    let words: Vec<String> = sentence
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase())
        .filter(|w| !w.is_empty())
        .collect();
    words.windows(2).map(|p| (p[0].clone(), p[1].clone())).collect()
}

/// Up to `n` of `targets` (indices), greedily by novelty: each next one has the largest share of
/// word pairs (within sentences, repeats counted) not in the ones chosen before it; ties go to the
/// earlier index, so a seeded shuffle of `targets` decides them. A target that repeats itself
/// ("great acting, great acting") or the others ("I loved it.") scores low. Targets without a word
/// pair come last. Lazy greedy: a target's share can only fall as others are chosen, so a share
/// recomputed to its old value is the largest.
pub fn novel_order(targets: &[&[String]], n: usize) -> Vec<usize> {
    use std::collections::HashSet;
    let pairs: Vec<Vec<(String, String)>> =
        targets.iter().map(|t| t.iter().flat_map(|s| word_pairs(s)).collect()).collect();
    let mut seen: HashSet<&(String, String)> = HashSet::new();
    let share = |i: usize, seen: &HashSet<&(String, String)>| -> f64 {
        let p = &pairs[i];
        if p.is_empty() {
            return -1.0;
        }
        let mut new: HashSet<&(String, String)> = HashSet::new();
        for q in p {
            if !seen.contains(q) {
                new.insert(q);
            }
        }
        new.len() as f64 / p.len() as f64
    };
    let mut bound: Vec<Option<f64>> = (0..targets.len()).map(|i| Some(share(i, &seen))).collect();
    let mut order = Vec::with_capacity(n.min(targets.len()));
    while order.len() < n {
        let mut best: Option<(usize, f64)> = None;
        for (i, b) in bound.iter().enumerate() {
            if let Some(b) = *b
                && best.is_none_or(|(_, x)| b > x)
            {
                best = Some((i, b));
            }
        }
        let Some((i, b)) = best else { break };
        let now = share(i, &seen);
        if now < b {
            bound[i] = Some(now);
            continue;
        }
        bound[i] = None;
        seen.extend(pairs[i].iter());
        order.push(i);
    }
    order
}

/// Distinct word pairs of `targets` per target (the training set's own Dist-2).
pub fn distinct_pairs_per_target(targets: &[&[String]]) -> f64 {
    let all: std::collections::HashSet<(String, String)> =
        targets.iter().flat_map(|t| t.iter().flat_map(|s| word_pairs(s))).collect();
    all.len() as f64 / targets.len().max(1) as f64
}

/// One tokenized sample: the prompt's tokens then the target's, the frozen layers' output, and
/// the target tokens' loss weights (empty: plain cross-entropy).
struct Encoded {
    tokens: Vec<u32>,
    from: usize,
    residual: Vec<f32>,
    weights: Vec<f32>,
}

/// The stage of `upstream` that writes the prompt (the recipe's prompt builder, whatever it is).
fn prompt_stage(upstream: &Engine) -> Result<String, BoxError> {
    upstream
        .stages()
        .filter(|(_, _, io)| io.writes.contains(&Field::Prompt))
        .map(|(id, _, _)| id.to_string())
        .last()
        .ok_or_else(|| "finetune: no stage before the generator writes the prompt: add a prompt_builder".into())
}

/// The prompt of `f` rendered by the prompt stage of `upstream` (the recipe's own, whatever it
/// is), and the opening sentence the reply starts with.
pub fn render(upstream: &Engine, f: &SampleFields) -> Result<(String, String), BoxError> {
    let stage = prompt_stage(upstream)?;
    let source = PassageSource { film: f.movie.clone(), similar_to: None, review: "other review".into() }.render();
    let own = f.reviews.iter().map(|t| Passage { item: f.item, text: t.clone(), score: 1.0, source: source.clone() });
    let mut turn = Turn {
        candidates: vec![Candidate { item: f.item, name: f.movie.clone(), score: 1.0 }],
        passages: own.chain(f.similar.iter().cloned()).collect(),
        facts: f.facts.clone(),
        ..Turn::default()
    };
    turn.ext.insert(REVIEW_ENTITIES.into(), serde_json::json!(f.entities));
    upstream.run_stage(&stage, &mut turn)?;
    let prompt = turn.prompt.ok_or("finetune: the prompt stage wrote no prompt")?;
    let prefix = turn.ext.get(crate::stage::RESPONSE_PREFIX).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    Ok((prompt, prefix))
}

/// The tokens of a rendered sample: the prompt, then whole target sentences up to `max` tokens
/// and the end-of-turn token when the review fits.
fn encode(tok: &LlmTokenizer, prompt: &str, target: &[String], max: usize) -> Result<(Vec<u32>, usize), BoxError> {
    let mut tokens = tok.encode(prompt)?;
    let from = tokens.len();
    let mut kept = 0;
    for (i, s) in target.iter().enumerate() {
        let piece = tok.encode(&format!(" {s}"))?;
        if kept + piece.len() > max {
            if i == 0 {
                tokens.extend(&piece[..max]);
            }
            return Ok((tokens, from));
        }
        kept += piece.len();
        tokens.extend(piece);
    }
    tokens.extend(tok.token_id("<|im_end|>"));
    Ok((tokens, from))
}

struct Tuning<'a> {
    dense: &'a DenseLlama,
    adapter: &'a Adapter,
    train: &'a [Encoded],
    valid: &'a [Encoded],
    dropout: SplitMix,
    d: usize,
    unlikelihood: f64,
}

impl Tuning<'_> {
    /// The loss of `e`: training (dropout, the ITF weights and the unlikelihood term) or held-out
    /// (plain cross-entropy).
    fn loss_of(&mut self, e: &Encoded, training: bool) -> ecr_neural::Result<Tensor> {
        let r = Tensor::from_vec(e.residual.clone(), (e.tokens.len() - 1, self.d), &Device::Cpu)?;
        let (dropout, terms) = if training {
            let weights = (!e.weights.is_empty()).then_some(e.weights.as_slice());
            (Some(&mut self.dropout), LossTerms { weights, unlikelihood: self.unlikelihood })
        } else {
            (None, LossTerms::default())
        };
        self.dense
            .target_loss_from(r, &e.tokens, e.from, Some(self.adapter), dropout, terms)
            .map_err(|e| ecr_neural::NeuralError::Invalid(e.to_string()))
    }

    /// Mean held-out loss per target token.
    fn valid_loss(&mut self) -> ecr_neural::Result<f64> {
        let (mut sum, mut n) = (0.0, 0usize);
        for i in 0..self.valid.len() {
            let e = &self.valid[i];
            let k = e.tokens.len() - e.from;
            sum += self.loss_of(e, false)?.to_scalar::<f32>()? as f64 * k as f64;
            n += k;
        }
        Ok(sum / n.max(1) as f64)
    }
}

impl Objective for Tuning<'_> {
    fn n_train(&self) -> usize {
        self.train.len()
    }

    fn loss(&mut self, batch: &[usize], _rng: &mut ecr_neural::rng::Rng) -> ecr_neural::Result<Tensor> {
        let mut total: Option<Tensor> = None;
        for &i in batch {
            let l = self.loss_of(&self.train[i], true)?;
            total = Some(match total {
                Some(t) => (t + l)?,
                None => l,
            });
        }
        let total = total.ok_or_else(|| ecr_neural::NeuralError::Invalid("empty batch".into()))?;
        Ok((total / batch.len() as f64)?)
    }

    fn select(&mut self) -> ecr_neural::Result<Selection> {
        let loss = self.valid_loss()?;
        Ok(Selection {
            metric: -loss,
            extra: serde_json::json!({ "valid_loss": loss, "valid_perplexity": loss.exp() }),
        })
    }

    fn metric_name(&self) -> &str {
        "held-out -loss/token"
    }
}

/// Train an adapter on the samples `fields` (rendered through `upstream`'s prompt stage) on the
/// base model `gguf`, and write it to `dir`. The frozen layers below the adapted ones run in the
/// fast decoder loaded with `load` (its thread count: a busy machine wants fewer threads).
/// Returns the figures (held-out perplexity before and after, samples, steps, time).
#[allow(clippy::too_many_arguments)]
pub fn train_adapter(
    config: &FinetuneConfig,
    gguf: &Path,
    load: &ecr_llm::LoadOptions,
    fields: &[SampleFields],
    upstream: &Engine,
    dir: &Path,
    trained_from: &str,
    progress: bool,
) -> Result<serde_json::Value, BoxError> {
    let _span = tracing::info_span!("finetune", samples = fields.len()).entered();
    let t0 = std::time::Instant::now();
    let g = GgufFile::open(gguf)?;
    let base = BaseModel::of(&g)?;
    let cfg = g.llama_config()?;
    let first = config.lora.first_layer(cfg.n_layer);
    let tok = LlmTokenizer::from_gguf(&g)?;
    let fast = Llm::from_gguf(&g, std::sync::Arc::new(LlmTokenizer::from_gguf(&g)?), load)?;
    // Training samples drawn by the seed; held-out ones are the first `max_valid` of their movies.
    let mut rng = ecr_neural::rng::Rng::new(config.train.seed);
    let mut train_f: Vec<&SampleFields> = fields.iter().filter(|f| !f.held_out).collect();
    rng.shuffle(&mut train_f);
    let n = if config.max_samples > 0 { config.max_samples } else { train_f.len() };
    match config.select {
        SampleSelection::Random => train_f.truncate(n),
        SampleSelection::Novel => {
            let targets: Vec<&[String]> = train_f.iter().map(|f| f.target.as_slice()).collect();
            train_f = novel_order(&targets, n).into_iter().map(|i| train_f[i]).collect();
        }
    }
    let chosen: Vec<&[String]> = train_f.iter().map(|f| f.target.as_slice()).collect();
    let target_pairs = distinct_pairs_per_target(&chosen);
    let valid_f: Vec<&SampleFields> = fields.iter().filter(|f| f.held_out).take(config.max_valid).collect();
    if train_f.is_empty() || valid_f.is_empty() {
        return Err(format!(
            "finetune: {} training and {} held-out samples: the review database is too small for finetune.valid_share {}",
            train_f.len(),
            valid_f.len(),
            config.valid_share
        )
        .into());
    }
    let bar = ecr_data::progress::bar(progress, "finetune: rendering samples");
    bar.set_length((train_f.len() + valid_f.len()) as u64);
    let enc = |fs: &[&SampleFields]| -> Result<Vec<Encoded>, BoxError> {
        let mut out = Vec::with_capacity(fs.len());
        for f in fs {
            let (prompt, _) = render(upstream, f)?;
            let (tokens, from) = encode(&tok, &prompt, &f.target, config.max_target_tokens)?;
            if from >= tokens.len() || tokens.len() > cfg.context {
                continue;
            }
            let residual = fast.residual_before(&tokens[..tokens.len() - 1], first)?;
            out.push(Encoded { tokens, from, residual, weights: Vec::new() });
            bar.inc(1);
        }
        Ok(out)
    };
    let (mut train, valid) = (enc(&train_f)?, enc(&valid_f)?);
    bar.finish_and_clear();
    if config.itf > 0.0 {
        let targets: Vec<&[u32]> = train.iter().map(|e| &e.tokens[e.from..]).collect();
        let weights = itf_weights(&targets, config.itf);
        train.iter_mut().zip(weights).for_each(|(e, w)| e.weights = w);
    }
    let longest = train.iter().chain(&valid).map(|e| e.tokens.len()).max().unwrap_or(1);
    let dense = DenseLlama::top_layers(&g, longest, first)?;
    let (adapter, vars) = Adapter::init(&config.lora, &base, config.train.seed)?;
    let varmap = candle_nn::VarMap::new();
    {
        let mut data = varmap.data().lock().map_err(|_| "finetune: variable map poisoned")?;
        for (name, v) in vars {
            data.insert(name, v);
        }
    }
    let mut objective = Tuning {
        dense: &dense,
        adapter: &adapter,
        train: &train,
        valid: &valid,
        dropout: SplitMix::new(config.train.seed),
        d: cfg.d_model,
        unlikelihood: config.unlikelihood,
    };
    let base_loss = objective.valid_loss()?;
    let report = fit(&varmap, &mut objective, &config.train, "generator adapter", progress)?;
    let tuned_loss = -report.best_metric;
    let prompt_tokens = train.iter().map(|e| e.from).sum::<usize>() as f64 / train.len() as f64;
    let target_tokens = train.iter().map(|e| e.tokens.len() - e.from).sum::<usize>() as f64 / train.len() as f64;
    let metrics = serde_json::json!({
        "trained_from": trained_from,
        "train_samples": train.len(),
        "valid_samples": valid.len(),
        "mean_prompt_tokens": prompt_tokens,
        "mean_target_tokens": target_tokens,
        "target_distinct_pairs_per_sample": target_pairs,
        "adapter_params": adapter.params(),
        "valid_perplexity_base": base_loss.exp(),
        "valid_perplexity_tuned": tuned_loss.exp(),
        "fit": report,
        "seconds": t0.elapsed().as_secs_f64(),
    });
    std::fs::create_dir_all(dir)?;
    adapter.save(&dir.join(ADAPTER_FILE), &metrics)?;
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(sentences: &[&str]) -> Vec<String> {
        sentences.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn novel_order_puts_stock_phrases_and_self_repetition_last() {
        let targets = [
            t(&["I loved it.", "It was great."]),
            t(&["Great acting, great acting and great acting."]),
            t(&["Tom Hanks moved me to tears in the last scene."]),
            t(&["I loved it!", "It was great!"]),
            t(&[]),
            t(&["The score by John Williams still gives me chills."]),
        ];
        let refs: Vec<&[String]> = targets.iter().map(Vec::as_slice).collect();
        // 0, 2 and 5 are all new (share 1): the earliest first, then the others by index; 1 repeats
        // "great acting" (share 4/6 of its pairs are new: "great acting" counts once); 3 says what 0
        // said (share 0); the empty target comes last.
        assert_eq!(novel_order(&refs, 10), vec![0, 2, 5, 1, 3, 4]);
        assert_eq!(novel_order(&refs, 2), vec![0, 2]);
        assert_eq!(novel_order(&refs, 0), Vec::<usize>::new());
        // The share falls as others are chosen: once 0 is in, 3 (the same words) adds nothing.
        assert_eq!(novel_order(&refs[..4], 4), vec![0, 2, 1, 3]);
    }

    #[test]
    fn distinct_pairs_count_each_pair_once() {
        let a = t(&["I loved it.", "It was great."]);
        let b = t(&["I LOVED it!"]);
        // "i loved", "loved it", "it was", "was great": 4 distinct pairs over 2 targets.
        assert_eq!(distinct_pairs_per_target(&[a.as_slice(), b.as_slice()]), 2.0);
        assert_eq!(distinct_pairs_per_target(&[]), 0.0);
    }

    #[test]
    fn new_keys_default_to_ecr_and_stay_out_of_the_fingerprint() {
        let c = FinetuneConfig::default();
        assert_eq!((c.select, c.unlikelihood, c.itf), (SampleSelection::Random, 0.0, 0.0));
        let v = serde_json::to_value(&c).unwrap();
        for key in ["select", "unlikelihood", "itf"] {
            assert!(v.get(key).is_none(), "{key}: the default must not change old adapters' fingerprints");
        }
        let ul: FinetuneConfig = toml::from_str("unlikelihood = 1.0").unwrap();
        assert_eq!(serde_json::to_value(&ul).unwrap()["unlikelihood"], 1.0);
        let itf: FinetuneConfig = toml::from_str("itf = 0.4").unwrap();
        assert_eq!(serde_json::to_value(&itf).unwrap()["itf"], 0.4);
        let novel: FinetuneConfig = toml::from_str("select = \"novel\"").unwrap();
        assert_eq!(novel.select, SampleSelection::Novel);
        assert!(toml::from_str::<FinetuneConfig>("select = \"best\"").is_err());
    }
}
