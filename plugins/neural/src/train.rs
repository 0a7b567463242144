//! Training the emotion tagger's head on the LLM annotations.
//!
//! The annotated messages are split by conversation into a training part and
//! a held-out part (`holdout`, for model selection); their MiniLM embeddings
//! come from the on-disk cache. The head is trained with AdamW on a soft-target
//! cross-entropy: one gold label gets probability 1, two get `primary_weight`
//! and `1 - primary_weight` (most salient first). After each epoch the head is
//! scored on the held-out part; the epoch with the best Recall@2 (ties: lower
//! held-out loss) is kept.

use crate::cache::EmbeddingCache;
use crate::error::{NeuralError, Result};
use crate::metrics::{EmotionMetrics, evaluate};
use crate::rng::Rng;
use crate::tagger::{ContextMode, EmotionHead, EmotionTagger, HeadShape, N_LABELS, TaggerInput, features};
use crate::text::TextEncoder;
use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use ecr_data::Annotation;
use ecr_engine::Emotion;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Instant;

/// Hyper-parameters of the tagger's training (`[stages.<id>.with.train]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// The annotation file to train on; default `<data dir>/emotion/annotations_train.jsonl`.
    pub annotations: Option<String>,
    /// Share of the conversations held out for model selection.
    pub holdout: f32,
    /// Context embedded besides the utterance: `"last"` (the preceding message) or `"none"`.
    pub context: ContextMode,
    /// Hidden units of the MLP head.
    pub hidden: usize,
    /// Dropout on the hidden layer during training.
    pub dropout: f32,
    /// Passes over the training part.
    pub epochs: usize,
    /// Examples per optimisation step.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Target probability of the first of two gold labels (the second gets the rest).
    pub primary_weight: f32,
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
            epochs: 40,
            batch_size: 64,
            lr: 1e-3,
            weight_decay: 0.01,
            primary_weight: 0.6,
            seed: 13,
            limit: None,
        }
    }
}

impl TrainConfig {
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
        if self.epochs == 0 || self.batch_size == 0 {
            return bad(if self.epochs == 0 { "epochs" } else { "batch_size" }, "must be at least 1");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", "must be a positive number");
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

/// The soft target of ordered gold labels.
pub fn target(labels: &[Emotion], primary: f32) -> [f32; N_LABELS] {
    let mut t = [0.0; N_LABELS];
    match labels {
        [] => {}
        [a] => t[a.index()] = 1.0,
        [a, b, ..] => {
            t[b.index()] += 1.0 - primary;
            t[a.index()] += primary;
        }
    }
    t
}

/// Whether a conversation goes to the held-out part (a stable hash of its id).
pub fn is_held_out(conversation_id: &str, holdout: f32, seed: u64) -> bool {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(conversation_id.as_bytes());
    let d = h.finalize();
    let x = u32::from_le_bytes([d[0], d[1], d[2], d[3]]) as f64 / u32::MAX as f64;
    x < holdout as f64
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

/// Train a head on `annotations` with `encoder` and `config`; embeddings are
/// read from and added to `cache`. Returns the tagger (best held-out epoch)
/// and a report. `progress` shows progress bars.
pub fn train_tagger(
    encoder: Arc<TextEncoder>,
    mut cache: Option<&mut EmbeddingCache>,
    annotations: &[Annotation],
    config: &TrainConfig,
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
    let _span = tracing::info_span!("train_emotion_tagger", n_train = train.len(), n_holdout = dev.len()).entered();
    let dev_device = Device::Cpu;
    let t0 = Instant::now();
    let inputs = |v: &[&Annotation]| v.iter().map(|a| input_of(a)).collect::<Vec<_>>();
    let x_train = features(&encoder, cache.as_deref_mut(), &inputs(&train), config.context, progress)?;
    let x_dev =
        if dev.is_empty() { None } else { Some(features(&encoder, cache, &inputs(&dev), config.context, progress)?) };
    let embed_seconds = t0.elapsed().as_secs_f64();
    let targets = |v: &[&Annotation]| -> Result<Tensor> {
        let flat: Vec<f32> = v.iter().flat_map(|a| target(&a.labels, config.primary_weight)).collect();
        Ok(Tensor::from_vec(flat, (v.len(), N_LABELS), &dev_device)?)
    };
    let y_train = targets(&train)?;
    let y_dev = if dev.is_empty() { None } else { Some(targets(&dev)?) };
    let dev_gold: Vec<Vec<Emotion>> = dev.iter().map(|a| a.labels.clone()).collect();

    let t1 = Instant::now();
    let mut rng = Rng::new(config.seed);
    let shape = HeadShape { embed_dim: encoder.dim(), context: config.context, hidden: config.hidden };
    let head = EmotionHead::init(shape, &mut rng)?;
    let params = ParamsAdamW { lr: config.lr, weight_decay: config.weight_decay, ..Default::default() };
    let mut opt = AdamW::new(head.vars(), params)?;
    let n = train.len();
    let mut order: Vec<u32> = (0..n as u32).collect();
    let keep = 1.0 - config.dropout;
    let bar = if progress {
        let b = indicatif::ProgressBar::new(config.epochs as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("training {bar:40} epoch {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut best: Option<(f64, f32, usize, Vec<Tensor>)> = None;
    let mut curve = Vec::new();
    for epoch in 1..=config.epochs {
        rng.shuffle(&mut order);
        let (mut sum, mut batches) = (0f32, 0usize);
        for chunk in order.chunks(config.batch_size) {
            let ids = Tensor::new(chunk, &dev_device)?;
            let xb = x_train.index_select(&ids, 0)?;
            let yb = y_train.index_select(&ids, 0)?;
            let mask = if config.dropout > 0.0 {
                let m: Vec<f32> = (0..chunk.len() * config.hidden)
                    .map(|_| if rng.uniform() < keep { 1.0 / keep } else { 0.0 })
                    .collect();
                Some(Tensor::from_vec(m, (chunk.len(), config.hidden), &dev_device)?)
            } else {
                None
            };
            let loss = soft_ce(&head.forward(&xb, mask.as_ref())?, &yb)?;
            opt.backward_step(&loss)?;
            sum += loss.to_scalar::<f32>()?;
            batches += 1;
        }
        let train_loss = sum / batches.max(1) as f32;
        let (dev_loss, dev_r2) = match (&x_dev, &y_dev) {
            (Some(x), Some(y)) => {
                let logits = head.forward(x, None)?;
                let loss = soft_ce(&logits, y)?.to_scalar::<f32>()?;
                let probs = head.probs(x)?;
                (loss, evaluate(&probs, &dev_gold, 0.1).recall_2)
            }
            _ => (train_loss, 0.0),
        };
        curve.push((train_loss, dev_loss, dev_r2));
        bar.set_message(format!("loss {train_loss:.3} holdout loss {dev_loss:.3} R@2 {dev_r2:.4}"));
        bar.inc(1);
        let better = match &best {
            None => true,
            Some((r2, l, _, _)) => dev_r2 > *r2 || (dev_r2 == *r2 && dev_loss < *l),
        };
        if better {
            best = Some((dev_r2, dev_loss, epoch, head.snapshot()?));
        }
    }
    bar.finish_and_clear();
    let Some((_, _, best_epoch, snapshot)) = best else {
        return Err(NeuralError::Invalid("emotion tagger training ran no epoch".into()));
    };
    head.restore(&snapshot)?;
    let holdout = match &x_dev {
        Some(x) => Some(evaluate(&head.probs(x)?, &dev_gold, 0.1)),
        None => None,
    };
    let report = TrainReport {
        n_train: train.len(),
        n_holdout: dev.len(),
        best_epoch,
        holdout,
        curve,
        embed_seconds,
        train_seconds: t1.elapsed().as_secs_f64(),
    };
    let facts = serde_json::json!({
        "config": config,
        "n_train": report.n_train,
        "n_holdout": report.n_holdout,
        "best_epoch": report.best_epoch,
        "holdout_recall@2": report.holdout.as_ref().map(|m| m.recall_2),
        "train_seconds": report.train_seconds,
    });
    Ok((EmotionTagger::new(encoder, head, facts), report))
}
