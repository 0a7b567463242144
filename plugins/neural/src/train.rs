//! Training the emotion tagger on the LLM annotations.
//!
//! The annotated messages are split by conversation into a training part and
//! a held-out part (`holdout`, for model selection). Two ways to train:
//!
//! * `finetune = true` (default): MiniLM's encoder layers and the head are
//!   trained together on the utterance ([`crate::bert::TrainableBert`]); the
//!   fine-tuned encoder is saved in the checkpoint.
//! * `finetune = false`: MiniLM stays frozen; the utterance (and previous
//!   message) embeddings come from the on-disk cache and only the head is trained.
//!
//! Both are one [`crate::fit`] objective run by the project's one training
//! loop: AdamW (no weight decay on biases; the head's rate `lr` and the
//! encoder's `encoder_lr` both decay linearly to 0) on a soft-target
//! cross-entropy: one gold label gets probability 1, two get `primary_weight`
//! and `1 - primary_weight` (most salient first). After each epoch the head is
//! scored on the held-out part; the epoch with the best Recall@2 (ties: lower
//! held-out loss) is kept.

use crate::bert::TrainableBert;
use crate::cache::EmbeddingCache;
use crate::error::{NeuralError, Result};
use crate::fit::{FitConfig, Objective, Selection, fit};
use crate::metrics::{EmotionMetrics, evaluate};
use crate::rng::Rng;
use crate::tagger::ENCODER_FILE;
use crate::tagger::{ContextMode, EmotionHead, EmotionTagger, HeadShape, N_LABELS, TaggerInput, features};
use crate::text::{EncoderOptions, TextEncoder, mean_pool_normalize};
use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use ecr_data::Annotation;
use ecr_engine::Emotion;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Hyper-parameters of the tagger's training (`[stages.<id>.with.train]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// The annotation file to train on; default `<data dir>/emotion/annotations_train.jsonl`.
    pub annotations: Option<String>,
    /// Share of the conversations held out for model selection.
    pub holdout: f64,
    /// Context embedded besides the utterance when not fine-tuning: `"last"`
    /// (the preceding message) or `"none"`. A fine-tuned tagger reads the utterance alone.
    pub context: ContextMode,
    /// Hidden units of the MLP head.
    pub hidden: usize,
    /// Dropout on the hidden layer during training.
    pub dropout: f64,
    /// Fine-tune MiniLM's encoder layers with the head (else train the head on frozen embeddings).
    pub finetune: bool,
    /// Passes over the training part; default 4 when fine-tuning, 40 otherwise.
    pub epochs: Option<usize>,
    /// Examples per optimisation step.
    pub batch_size: usize,
    /// AdamW learning rate of the head.
    pub lr: f64,
    /// AdamW learning rate of the encoder when fine-tuning (decays linearly to 0).
    pub encoder_lr: f64,
    /// Token limit of the fine-tuned encoder.
    pub max_tokens: usize,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Target probability of the first of two gold labels (the second gets the rest).
    pub primary_weight: f64,
    /// Seed of initialisation, shuffling and dropout.
    pub seed: u64,
    /// Train on only the first `limit` annotations (quick tests); all when absent.
    pub limit: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            annotations: None,
            holdout: 0.1,
            context: ContextMode::Last,
            hidden: 512,
            dropout: 0.3,
            finetune: true,
            epochs: None,
            batch_size: 32,
            lr: 1e-3,
            encoder_lr: 5e-5,
            max_tokens: 128,
            weight_decay: 0.01,
            primary_weight: 0.6,
            seed: 13,
            limit: None,
        }
    }
}

impl TrainConfig {
    /// The number of epochs (the default depends on `finetune`).
    pub fn epochs(&self) -> usize {
        self.epochs.unwrap_or(if self.finetune { 4 } else { 40 })
    }

    /// Check value ranges; the error names the key.
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((format!("train.{k}"), m.to_string()));
        if !(0.0..1.0).contains(&self.holdout) {
            return bad("holdout", "must be in [0, 1)");
        }
        if self.hidden == 0 {
            return bad("hidden", "must be at least 1");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout", "must be in [0, 1)");
        }
        if self.epochs == Some(0) || self.batch_size == 0 {
            return bad(if self.epochs == Some(0) { "epochs" } else { "batch_size" }, "must be at least 1");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", "must be a positive number");
        }
        if !(self.encoder_lr > 0.0 && self.encoder_lr.is_finite()) {
            return bad("encoder_lr", "must be a positive number");
        }
        if self.max_tokens < 8 {
            return bad("max_tokens", "must be at least 8");
        }

        if !(0.5..=1.0).contains(&self.primary_weight) {
            return bad("primary_weight", "must be in [0.5, 1]");
        }
        Ok(())
    }
}

/// What the tagger sees of an annotated message.
pub fn input_of(a: &Annotation) -> TaggerInput {
    TaggerInput { utterance: a.utterance.clone(), context: a.context.clone() }
}

/// The soft target of ordered gold labels: the data layer's one label list →
/// distribution rule ([`ecr_data::emotion_source::labels_to_dist`]).
pub fn target(labels: &[Emotion], primary: f32) -> [f32; N_LABELS] {
    ecr_data::emotion_source::labels_to_dist(labels, primary).0
}

/// Whether a conversation goes to the held-out part (a stable hash of its id).
pub fn is_held_out(conversation_id: &str, holdout: f64, seed: u64) -> bool {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(conversation_id.as_bytes());
    let d = h.finalize();
    let x = u32::from_le_bytes([d[0], d[1], d[2], d[3]]) as f64 / u32::MAX as f64;
    x < holdout
}

/// The outcome of training.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    /// Training examples.
    pub n_train: usize,
    /// Held-out examples.
    pub n_holdout: usize,
    /// The epoch kept (1-based).
    pub best_epoch: usize,
    /// Held-out metrics of the kept epoch.
    pub holdout: Option<EmotionMetrics>,
    /// Per epoch: training loss, held-out loss and Recall@2.
    pub curve: Vec<(f32, f32, f64)>,
    /// Seconds spent embedding (0 when everything was cached).
    pub embed_seconds: f64,
    /// Seconds spent training the head.
    pub train_seconds: f64,
}

fn soft_ce(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?;
    Ok((logp * targets)?.sum(1)?.neg()?.mean_all()?)
}

/// Train a tagger on `annotations` with the base `encoder` and `config`, and
/// save it to `checkpoint` (a directory). Frozen embeddings are read from and
/// added to `cache`. Returns the tagger (best held-out epoch) and a report.
/// `progress` shows progress bars.
pub fn train_tagger(
    encoder: Arc<TextEncoder>,
    cache: Option<&mut EmbeddingCache>,
    annotations: &[Annotation],
    config: &TrainConfig,
    checkpoint: &Path,
    progress: bool,
) -> Result<(EmotionTagger, TrainReport)> {
    config.validate().map_err(|(k, m)| NeuralError::Invalid(format!("emotion tagger training: {k} {m}")))?;
    let all = match config.limit {
        Some(n) => &annotations[..n.min(annotations.len())],
        None => annotations,
    };
    let (dev, train): (Vec<&Annotation>, Vec<&Annotation>) =
        all.iter().partition(|a| is_held_out(&a.conversation_id, config.holdout, config.seed));
    if train.is_empty() {
        return Err(NeuralError::Invalid(
            "emotion tagger training: no training examples left after the holdout".into(),
        ));
    }
    let (mut tagger, report) = if config.finetune {
        finetune(encoder, &train, &dev, config, checkpoint, progress)?
    } else {
        train_head(encoder, cache, &train, &dev, config, progress)?
    };
    tagger.save(checkpoint)?;
    Ok((tagger, report))
}

/// Soft targets `(n, 9)` of annotations.
fn targets_of(v: &[&Annotation], primary: f32, device: &Device) -> Result<Tensor> {
    let flat: Vec<f32> = v.iter().flat_map(|a| target(&a.labels, primary)).collect();
    Ok(Tensor::from_vec(flat, (v.len(), N_LABELS), device)?)
}

/// A dropout mask `(rows, cols)` scaled by `1 / keep`, or `None` without dropout.
fn dropout_mask(rng: &mut Rng, rows: usize, cols: usize, dropout: f32, device: &Device) -> Result<Option<Tensor>> {
    if dropout <= 0.0 {
        return Ok(None);
    }
    let keep = 1.0 - dropout;
    let m: Vec<f32> = (0..rows * cols).map(|_| if rng.uniform() < keep { 1.0 / keep } else { 0.0 }).collect();
    Ok(Some(Tensor::from_vec(m, (rows, cols), device)?))
}

/// Batches for one epoch: shuffle, cut into pools of 16 batches, sort each
/// pool by token length (so a batch pads little), then shuffle the batches.
/// As many batches as plain chunks (each full pool is a whole number of batches).
fn length_bucketed_batches(rng: &mut Rng, order: &mut [usize], lengths: &[usize], batch: usize) -> Vec<Vec<usize>> {
    rng.shuffle(order);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for pool in order.chunks(batch * 16) {
        let mut pool = pool.to_vec();
        pool.sort_by_key(|&i| lengths[i]);
        batches.extend(pool.chunks(batch).map(<[usize]>::to_vec));
    }
    rng.shuffle(&mut batches);
    batches
}

fn facts(config: &TrainConfig, report: &TrainReport) -> serde_json::Value {
    serde_json::json!({
        "config": config,
        "n_train": report.n_train,
        "n_holdout": report.n_holdout,
        "best_epoch": report.best_epoch,
        "holdout_recall@2": report.holdout.as_ref().map(|m| m.recall_2),
        "train_seconds": report.train_seconds,
    })
}

/// Where the head's input features come from.
enum Features<'a> {
    /// Frozen embeddings computed once: `(n, input_dim)` for training and held-out examples.
    Frozen { train: Tensor, dev: Option<Tensor> },
    /// The utterances, embedded by the encoder being fine-tuned at every step.
    Encoder {
        bert: Box<TrainableBert>,
        tok: Box<TextEncoder>,
        train: Vec<&'a str>,
        dev: Vec<&'a str>,
        lengths: Vec<usize>,
    },
}

impl Features<'_> {
    /// Embeddings `(b, dim)` of `texts` by the fine-tuned encoder.
    fn embed(bert: &TrainableBert, tok: &TextEncoder, texts: &[&str]) -> Result<Tensor> {
        let (ids, mask) = tok.tokenize(texts)?;
        Ok(mean_pool_normalize(&bert.forward(&ids, &mask)?, &mask)?)
    }
}

/// The tagger as a [`fit`] objective: soft-target cross-entropy of the head
/// (with dropout on its hidden layer) on frozen or fine-tuned features;
/// selection by held-out Recall@2, ties broken by the lower held-out loss.
struct TaggerObjective<'a> {
    head: EmotionHead,
    features: Features<'a>,
    y_train: Tensor,
    y_dev: Option<Tensor>,
    dev_gold: Vec<Vec<Emotion>>,
    dropout: f32,
    /// The encoder's learning rate relative to the head's.
    encoder_scale: f64,
    device: Device,
}

impl TaggerObjective<'_> {
    /// Held-out `(mean loss, probabilities)`, or `None` without a held-out part.
    fn holdout(&self) -> Result<Option<(f64, Vec<[f32; N_LABELS]>)>> {
        let Some(y_dev) = &self.y_dev else { return Ok(None) };
        let (mut loss, mut probs) = (0f64, Vec::with_capacity(self.dev_gold.len()));
        let mut add = |x: &Tensor, y: &Tensor| -> Result<()> {
            let n = x.dim(0)? as f64;
            loss += soft_ce(&self.head.forward(x, None)?, y)?.to_scalar::<f32>()? as f64 * n;
            probs.extend(self.head.probs(x)?);
            Ok(())
        };
        match &self.features {
            Features::Frozen { dev: Some(x), .. } => add(x, y_dev)?,
            Features::Frozen { dev: None, .. } => return Ok(None),
            Features::Encoder { bert, tok, dev, .. } => {
                for (k, chunk) in dev.chunks(64).enumerate() {
                    let x = Features::embed(bert, tok, chunk)?.detach();
                    add(&x, &y_dev.narrow(0, k * 64, chunk.len())?)?;
                }
            }
        }
        Ok(Some((loss / self.dev_gold.len().max(1) as f64, probs)))
    }
}

impl Objective for TaggerObjective<'_> {
    fn n_train(&self) -> usize {
        self.y_train.dim(0).unwrap_or(0)
    }

    fn loss(&mut self, batch: &[usize], rng: &mut Rng) -> Result<Tensor> {
        let idx: Vec<u32> = batch.iter().map(|&i| i as u32).collect();
        let ids = Tensor::new(idx.as_slice(), &self.device)?;
        let y = self.y_train.index_select(&ids, 0)?;
        let x = match &self.features {
            Features::Frozen { train, .. } => train.index_select(&ids, 0)?,
            Features::Encoder { bert, tok, train, .. } => {
                let texts: Vec<&str> = batch.iter().map(|&i| train[i]).collect();
                Features::embed(bert, tok, &texts)?
            }
        };
        let mask = dropout_mask(rng, batch.len(), self.head.shape().hidden, self.dropout, &self.device)?;
        soft_ce(&self.head.forward(&x, mask.as_ref())?, &y)
    }

    fn select(&mut self) -> Result<Selection> {
        Ok(match self.holdout()? {
            Some((loss, probs)) => {
                let r2 = evaluate(&probs, &self.dev_gold, 0.1).recall_2;
                Selection { metric: r2, extra: serde_json::json!({ "loss": loss }) }
            }
            None => Selection { metric: 0.0, extra: serde_json::json!({ "loss": 0.0 }) },
        })
    }

    fn metric_name(&self) -> &str {
        "Recall@2"
    }

    fn batches(&mut self, order: &mut [usize], batch_size: usize, rng: &mut Rng) -> Vec<Vec<usize>> {
        match &self.features {
            Features::Encoder { lengths, .. } => length_bucketed_batches(rng, order, lengths, batch_size),
            Features::Frozen { .. } => {
                rng.shuffle(order);
                order.chunks(batch_size).map(<[usize]>::to_vec).collect()
            }
        }
    }

    fn lr_scale(&self, name: &str) -> f64 {
        if name.starts_with(HEAD_PREFIX) { 1.0 } else { self.encoder_scale }
    }

    fn better(&self, new: &Selection, best: &Selection) -> bool {
        let loss = |s: &Selection| s.extra["loss"].as_f64().unwrap_or(f64::INFINITY);
        new.metric > best.metric || (new.metric == best.metric && loss(new) < loss(best))
    }
}

/// The prefix of the head's variables in the training [`VarMap`].
const HEAD_PREFIX: &str = "head.";

/// Put `vars` into `varmap` under their names (with `prefix`).
fn register<'v>(varmap: &VarMap, prefix: &str, vars: impl IntoIterator<Item = (&'v str, &'v Var)>) {
    let mut data = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
    for (name, var) in vars {
        data.insert(format!("{prefix}{name}"), var.clone());
    }
}

/// Per epoch: training loss, held-out loss and held-out Recall@2.
type Curve = Vec<(f32, f32, f64)>;

/// Run [`fit`] on the tagger objective; returns the report's per-epoch curve and kept epoch.
fn fit_tagger(
    varmap: &VarMap,
    objective: &mut TaggerObjective<'_>,
    config: &TrainConfig,
    what: &str,
    progress: bool,
) -> Result<(usize, Curve)> {
    // The head's learning rate is `lr`; the encoder's `encoder_lr` ([`Objective::lr_scale`]).
    let fit_config = FitConfig {
        epochs: config.epochs(),
        batch_size: config.batch_size,
        lr: config.lr,
        weight_decay: config.weight_decay,
        warmup: 0.0,
        seed: config.seed,
    };
    let report = fit(varmap, objective, &fit_config, what, progress)?;
    let curve = report
        .epochs
        .iter()
        .map(|e| {
            let dev_loss = e.selection.extra["loss"].as_f64().unwrap_or(f64::NAN);
            (e.train_loss as f32, dev_loss as f32, e.selection.metric)
        })
        .collect();
    Ok((report.best_epoch, curve))
}

/// Fine-tune MiniLM's encoder layers and the head on the utterances.
fn finetune(
    base: Arc<TextEncoder>,
    train: &[&Annotation],
    dev: &[&Annotation],
    config: &TrainConfig,
    checkpoint: &Path,
    progress: bool,
) -> Result<(EmotionTagger, TrainReport)> {
    let _span = tracing::info_span!("finetune_emotion_tagger", n_train = train.len(), n_holdout = dev.len()).entered();
    let t0 = Instant::now();
    let device = base.device().clone();
    let opts = EncoderOptions { max_tokens: config.max_tokens, ..EncoderOptions::default() };
    let tok = TextEncoder::load_parts_on(base.model_dir(), base.weights_path(), opts.clone(), &device)?;
    let (layers, heads, eps) = base.architecture();
    let bert = TrainableBert::load(base.weights_path(), layers, heads, eps, &device)?;
    let shape = HeadShape { embed_dim: base.dim(), context: ContextMode::None, hidden: config.hidden };
    let head = EmotionHead::init(shape, &mut Rng::new(config.seed), &device)?;
    let varmap = VarMap::new();
    register(&varmap, HEAD_PREFIX, head.named());
    register(&varmap, "", bert.named_vars().iter().map(|(n, v)| (n.as_str(), v)));
    let lengths: Vec<usize> = train.iter().map(|a| tok.token_count(&a.utterance)).collect::<Result<Vec<_>>>()?;
    let primary = config.primary_weight as f32;
    let mut objective = TaggerObjective {
        y_train: targets_of(train, primary, &device)?,
        y_dev: if dev.is_empty() { None } else { Some(targets_of(dev, primary, &device)?) },
        dev_gold: dev.iter().map(|a| a.labels.clone()).collect(),
        features: Features::Encoder {
            bert: Box::new(bert),
            tok: Box::new(tok),
            train: train.iter().map(|a| a.utterance.as_str()).collect(),
            dev: dev.iter().map(|a| a.utterance.as_str()).collect(),
            lengths,
        },
        head,
        dropout: config.dropout as f32,
        encoder_scale: config.encoder_lr / config.lr,
        device,
    };
    let (best_epoch, curve) = fit_tagger(&varmap, &mut objective, config, "fine-tuning", progress)?;
    let holdout = objective.holdout()?.map(|(_, probs)| evaluate(&probs, &objective.dev_gold, 0.1));
    let Features::Encoder { bert, .. } = &objective.features else {
        return Err(NeuralError::Invalid("internal: fine-tuning without an encoder".into()));
    };
    std::fs::create_dir_all(checkpoint).map_err(|e| NeuralError::io(checkpoint, e))?;
    let enc_path = checkpoint.join(ENCODER_FILE);
    bert.save(&enc_path)?;
    let finetuned = Arc::new(TextEncoder::load_parts_on(base.model_dir(), &enc_path, opts, base.device())?);
    let report = TrainReport {
        n_train: train.len(),
        n_holdout: dev.len(),
        best_epoch,
        holdout,
        curve,
        embed_seconds: 0.0,
        train_seconds: t0.elapsed().as_secs_f64(),
    };
    let facts = facts(config, &report);
    Ok((EmotionTagger::new_finetuned(&base, finetuned, objective.head, facts), report))
}

/// Train the head on frozen (cached) embeddings.
fn train_head(
    encoder: Arc<TextEncoder>,
    mut cache: Option<&mut EmbeddingCache>,
    train: &[&Annotation],
    dev: &[&Annotation],
    config: &TrainConfig,
    progress: bool,
) -> Result<(EmotionTagger, TrainReport)> {
    let _span = tracing::info_span!("train_emotion_tagger", n_train = train.len(), n_holdout = dev.len()).entered();
    let device = encoder.device().clone();
    let t0 = Instant::now();
    let inputs = |v: &[&Annotation]| v.iter().map(|a| input_of(a)).collect::<Vec<_>>();
    let x_train = features(&encoder, cache.as_deref_mut(), &inputs(train), config.context, progress)?;
    let x_dev =
        if dev.is_empty() { None } else { Some(features(&encoder, cache, &inputs(dev), config.context, progress)?) };
    let embed_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let shape = HeadShape { embed_dim: encoder.dim(), context: config.context, hidden: config.hidden };
    let head = EmotionHead::init(shape, &mut Rng::new(config.seed), &device)?;
    let varmap = VarMap::new();
    register(&varmap, HEAD_PREFIX, head.named());
    let primary = config.primary_weight as f32;
    let mut objective = TaggerObjective {
        y_train: targets_of(train, primary, &device)?,
        y_dev: if dev.is_empty() { None } else { Some(targets_of(dev, primary, &device)?) },
        dev_gold: dev.iter().map(|a| a.labels.clone()).collect(),
        features: Features::Frozen { train: x_train, dev: x_dev },
        head,
        dropout: config.dropout as f32,
        encoder_scale: 1.0,
        device,
    };
    let (best_epoch, curve) = fit_tagger(&varmap, &mut objective, config, "training", progress)?;
    let holdout = objective.holdout()?.map(|(_, probs)| evaluate(&probs, &objective.dev_gold, 0.1));
    let report = TrainReport {
        n_train: train.len(),
        n_holdout: dev.len(),
        best_epoch,
        holdout,
        curve,
        embed_seconds,
        train_seconds: t1.elapsed().as_secs_f64(),
    };
    let facts = facts(config, &report);
    Ok((EmotionTagger::new(encoder, objective.head, facts), report))
}
