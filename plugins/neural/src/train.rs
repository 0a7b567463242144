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
//! Both use AdamW on a soft-target cross-entropy: one gold label gets probability 1, two get `primary_weight`
//! and `1 - primary_weight` (most salient first). After each epoch the head is
//! scored on the held-out part; the epoch with the best Recall@2 (ties: lower
//! held-out loss) is kept.

use crate::bert::TrainableBert;
use crate::cache::EmbeddingCache;
use crate::error::{NeuralError, Result};
use crate::metrics::{EmotionMetrics, evaluate};
use crate::rng::Rng;
use crate::tagger::ENCODER_FILE;
use crate::tagger::{ContextMode, EmotionHead, EmotionTagger, HeadShape, N_LABELS, TaggerInput, features};
use crate::text::{EncoderOptions, TextEncoder, mean_pool_normalize};
use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
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
fn targets_of(v: &[&Annotation], primary: f32) -> Result<Tensor> {
    let flat: Vec<f32> = v.iter().flat_map(|a| target(&a.labels, primary)).collect();
    Ok(Tensor::from_vec(flat, (v.len(), N_LABELS), &Device::Cpu)?)
}

/// A dropout mask `(rows, cols)` scaled by `1 / keep`, or `None` without dropout.
fn dropout_mask(rng: &mut Rng, rows: usize, cols: usize, dropout: f32) -> Result<Option<Tensor>> {
    if dropout <= 0.0 {
        return Ok(None);
    }
    let keep = 1.0 - dropout;
    let m: Vec<f32> = (0..rows * cols).map(|_| if rng.uniform() < keep { 1.0 / keep } else { 0.0 }).collect();
    Ok(Some(Tensor::from_vec(m, (rows, cols), &Device::Cpu)?))
}

/// Batches for one epoch: shuffle, cut into pools of 16 batches, sort each
/// pool by token length (so a batch pads little), then shuffle the batches.
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
    let opts = EncoderOptions { max_tokens: config.max_tokens, ..EncoderOptions::default() };
    let tok = TextEncoder::load_parts(base.model_dir(), base.weights_path(), opts.clone())?;
    let (layers, heads, eps) = base.architecture();
    let bert = TrainableBert::load(base.weights_path(), layers, heads, eps)?;
    let mut rng = Rng::new(config.seed);
    let shape = HeadShape { embed_dim: base.dim(), context: ContextMode::None, hidden: config.hidden };
    let head = EmotionHead::init(shape, &mut rng)?;
    let head_params = ParamsAdamW { lr: config.lr, weight_decay: config.weight_decay, ..Default::default() };
    let mut opt_head = AdamW::new(head.vars(), head_params)?;
    let enc_params = ParamsAdamW { lr: config.encoder_lr, weight_decay: config.weight_decay, ..Default::default() };
    let mut opt_enc = AdamW::new(bert.vars(), enc_params)?;
    let embed = |texts: &[&str]| -> Result<Tensor> {
        let (ids, mask) = tok.tokenize(texts)?;
        Ok(mean_pool_normalize(&bert.forward(&ids, &mask)?, &mask)?)
    };
    let y_train = targets_of(train, config.primary_weight as f32)?;
    let y_dev = targets_of(dev, config.primary_weight as f32)?;
    let dev_gold: Vec<Vec<Emotion>> = dev.iter().map(|a| a.labels.clone()).collect();
    let dev_eval = |head: &EmotionHead| -> Result<(f32, f64, Vec<[f32; N_LABELS]>)> {
        let mut probs = Vec::with_capacity(dev.len());
        let mut loss = 0f32;
        for (k, chunk) in dev.chunks(64).enumerate() {
            let texts: Vec<&str> = chunk.iter().map(|a| a.utterance.as_str()).collect();
            let x = embed(&texts)?.detach();
            let y = y_dev.narrow(0, k * 64, chunk.len())?;
            loss += soft_ce(&head.forward(&x, None)?, &y)?.to_scalar::<f32>()? * chunk.len() as f32;
            probs.extend(head.probs(&x)?);
        }
        let r2 = evaluate(&probs, &dev_gold, 0.1).recall_2;
        Ok((loss / dev.len().max(1) as f32, r2, probs))
    };
    let epochs = config.epochs();
    let total = epochs * train.len().div_ceil(config.batch_size);
    let pb = crate::fit::progress_bar(progress, total, "fine-tuning");
    let lengths: Vec<usize> = train.iter().map(|a| tok.token_count(&a.utterance)).collect::<Result<Vec<_>>>()?;
    let mut order: Vec<usize> = (0..train.len()).collect();
    // (held-out Recall@2, held-out loss, epoch, encoder weights, head weights) of the best epoch.
    type Best = (f64, f32, usize, Vec<Tensor>, Vec<Tensor>);
    let mut best: Option<Best> = None;
    let mut curve = Vec::new();
    let mut step = 0usize;
    for epoch in 1..=epochs {
        let batches_of_epoch = length_bucketed_batches(&mut rng, &mut order, &lengths, config.batch_size);
        let (mut sum, mut batches) = (0f32, 0usize);
        for chunk in &batches_of_epoch {
            opt_enc.set_learning_rate(config.encoder_lr * (1.0 - step as f64 / total as f64));
            let texts: Vec<&str> = chunk.iter().map(|&i| train[i].utterance.as_str()).collect();
            let idx: Vec<u32> = chunk.iter().map(|&i| i as u32).collect();
            let yb = y_train.index_select(&Tensor::new(idx.as_slice(), &Device::Cpu)?, 0)?;
            let x = embed(&texts)?;
            let mask = dropout_mask(&mut rng, chunk.len(), config.hidden, config.dropout as f32)?;
            let loss = soft_ce(&head.forward(&x, mask.as_ref())?, &yb)?;
            let grads = loss.backward()?;
            opt_enc.step(&grads)?;
            opt_head.step(&grads)?;
            sum += loss.to_scalar::<f32>()?;
            batches += 1;
            step += 1;
            pb.set_message(format!("epoch {epoch} loss {:.3}", sum / batches as f32));
            pb.inc(1);
        }
        let train_loss = sum / batches.max(1) as f32;
        let (dev_loss, dev_r2) =
            if dev.is_empty() { (train_loss, 0.0) } else { dev_eval(&head).map(|(l, r, _)| (l, r))? };
        curve.push((train_loss, dev_loss, dev_r2));
        tracing::info!(epoch, train_loss, dev_loss, dev_r2, "fine-tuning epoch done");
        let better = match &best {
            None => true,
            Some((r2, l, ..)) => dev_r2 > *r2 || (dev_r2 == *r2 && dev_loss < *l),
        };
        if better {
            best = Some((dev_r2, dev_loss, epoch, bert.snapshot()?, head.snapshot()?));
        }
    }
    pb.finish_and_clear();
    let Some((_, _, best_epoch, enc_snap, head_snap)) = best else {
        return Err(NeuralError::Invalid("emotion tagger training ran no epoch".into()));
    };
    bert.restore(&enc_snap)?;
    head.restore(&head_snap)?;
    let holdout = if dev.is_empty() { None } else { Some(evaluate(&dev_eval(&head)?.2, &dev_gold, 0.1)) };
    std::fs::create_dir_all(checkpoint).map_err(|e| NeuralError::io(checkpoint, e))?;
    let enc_path = checkpoint.join(ENCODER_FILE);
    bert.save(&enc_path)?;
    let finetuned = Arc::new(TextEncoder::load_parts(base.model_dir(), &enc_path, opts)?);
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
    Ok((EmotionTagger::new_finetuned(&base, finetuned, head, facts), report))
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
    let dev_device = Device::Cpu;
    let t0 = Instant::now();
    let inputs = |v: &[&Annotation]| v.iter().map(|a| input_of(a)).collect::<Vec<_>>();
    let x_train = features(&encoder, cache.as_deref_mut(), &inputs(train), config.context, progress)?;
    let x_dev =
        if dev.is_empty() { None } else { Some(features(&encoder, cache, &inputs(dev), config.context, progress)?) };
    let embed_seconds = t0.elapsed().as_secs_f64();
    let y_train = targets_of(train, config.primary_weight as f32)?;
    let y_dev = if dev.is_empty() { None } else { Some(targets_of(dev, config.primary_weight as f32)?) };
    let dev_gold: Vec<Vec<Emotion>> = dev.iter().map(|a| a.labels.clone()).collect();

    let t1 = Instant::now();
    let mut rng = Rng::new(config.seed);
    let shape = HeadShape { embed_dim: encoder.dim(), context: config.context, hidden: config.hidden };
    let head = EmotionHead::init(shape, &mut rng)?;
    let params = ParamsAdamW { lr: config.lr, weight_decay: config.weight_decay, ..Default::default() };
    let mut opt = AdamW::new(head.vars(), params)?;
    let n = train.len();
    let mut order: Vec<u32> = (0..n as u32).collect();
    let bar = if progress {
        let b = indicatif::ProgressBar::new(config.epochs() as u64);
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
    for epoch in 1..=config.epochs() {
        rng.shuffle(&mut order);
        let (mut sum, mut batches) = (0f32, 0usize);
        for chunk in order.chunks(config.batch_size) {
            let ids = Tensor::new(chunk, &dev_device)?;
            let xb = x_train.index_select(&ids, 0)?;
            let yb = y_train.index_select(&ids, 0)?;
            let mask = dropout_mask(&mut rng, chunk.len(), config.hidden, config.dropout as f32)?;
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
    let facts = facts(config, &report);
    Ok((EmotionTagger::new(encoder, head, facts), report))
}
