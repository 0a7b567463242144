//! The emotion tagger: frozen MiniLM sentence embeddings of the utterance
//! (and of its preceding message) fed to a small MLP head trained here, giving
//! a probability for each of the nine emotions (a softmax: they sum to 1).
//!
//! A checkpoint is a directory with `head.safetensors` (the head's weights)
//! and `tagger.json` (format, labels, the encoder's id and sha256, the head's
//! shape, the weights file's sha256, and training facts). Loading checks all of
//! it, so a corrupted or mismatched checkpoint is refused with an error naming
//! the file.

use crate::cache::{EmbeddingCache, embed_cached};
use crate::error::{NeuralError, Result};
use crate::rng::Rng;
use crate::text::{EncoderOptions, TextEncoder, sha256_file};
use candle_core::{DType, Device, Tensor, Var};
use ecr_engine::{Emotion, EmotionDist};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Number of labels.
pub const N_LABELS: usize = Emotion::COUNT;
/// The checkpoint format tag written to `tagger.json`.
pub const FORMAT: &str = "ecr-emotion-tagger/1";
/// File name of the head's weights in a checkpoint directory.
pub const WEIGHTS_FILE: &str = "head.safetensors";
/// File name of the checkpoint's description in a checkpoint directory.
pub const META_FILE: &str = "tagger.json";
/// File name of the fine-tuned encoder's weights in a checkpoint directory.
pub const ENCODER_FILE: &str = "encoder.safetensors";

/// Which of the preceding messages the tagger embeds besides the utterance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ContextMode {
    /// The utterance alone.
    None,
    /// The utterance and the message just before it (with its `SEEKER: `/`RECOMMENDER: ` prefix).
    #[default]
    Last,
}

/// What the tagger reads of one message.
#[derive(Debug, Clone, PartialEq)]
pub struct TaggerInput {
    /// The seeker's message (movies written out).
    pub utterance: String,
    /// Preceding messages, oldest first, each prefixed `SEEKER: ` or
    /// `RECOMMENDER: ` (the annotation files' format).
    pub context: Vec<String>,
}

impl TaggerInput {
    /// The text embedded as context under `mode` (empty when there is none).
    pub fn context_text(&self, mode: ContextMode) -> &str {
        match mode {
            ContextMode::None => "",
            ContextMode::Last => self.context.last().map(String::as_str).unwrap_or(""),
        }
    }
}

/// The shape of the head.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadShape {
    /// Embedding dimension of the encoder.
    pub embed_dim: usize,
    /// Context used besides the utterance.
    pub context: ContextMode,
    /// Hidden units of the MLP.
    pub hidden: usize,
}

impl HeadShape {
    /// Input features: the utterance embedding, plus the context embedding.
    pub fn input_dim(&self) -> usize {
        match self.context {
            ContextMode::None => self.embed_dim,
            ContextMode::Last => 2 * self.embed_dim,
        }
    }
}

/// The MLP head: `x·√d → Linear → GELU → dropout → Linear → logits(9)`.
pub struct EmotionHead {
    shape: HeadShape,
    w1: Var,
    b1: Var,
    w2: Var,
    b2: Var,
}

impl EmotionHead {
    /// A freshly initialised head (uniform ±1/√fan_in, as PyTorch's Linear).
    pub fn init(shape: HeadShape, rng: &mut Rng, device: &Device) -> Result<Self> {
        let dev = device.clone();
        let mut uniform = |rows: usize, cols: usize, fan_in: usize| -> Result<Var> {
            let b = 1.0 / (fan_in as f32).sqrt();
            let v: Vec<f32> = (0..rows * cols).map(|_| (rng.uniform() * 2.0 - 1.0) * b).collect();
            Ok(Var::from_tensor(&Tensor::from_vec(v, (rows, cols), &dev)?)?)
        };
        let (d, h) = (shape.input_dim(), shape.hidden);
        let w1 = uniform(h, d, d)?;
        let b1 = uniform(1, h, d)?;
        let w2 = uniform(N_LABELS, h, h)?;
        let b2 = uniform(1, N_LABELS, h)?;
        Ok(EmotionHead { shape, w1, b1, w2, b2 })
    }

    /// The head's shape.
    pub fn shape(&self) -> HeadShape {
        self.shape
    }

    /// The trainable variables.
    pub fn vars(&self) -> Vec<Var> {
        vec![self.w1.clone(), self.b1.clone(), self.w2.clone(), self.b2.clone()]
    }

    /// Logits `(b, 9)` for features `(b, input_dim)`; `dropout` is an optional
    /// `(b, hidden)` mask already scaled by `1 / (1 - p)`.
    pub fn forward(&self, x: &Tensor, dropout: Option<&Tensor>) -> Result<Tensor> {
        let x = (x * (self.shape.embed_dim as f64).sqrt())?;
        let mut h = x.matmul(&self.w1.as_tensor().t()?)?.broadcast_add(self.b1.as_tensor())?.gelu_erf()?;
        if let Some(m) = dropout {
            h = (h * m)?;
        }
        Ok(h.matmul(&self.w2.as_tensor().t()?)?.broadcast_add(self.b2.as_tensor())?)
    }

    /// Probabilities `(b, 9)` (softmax of the logits).
    pub fn probs(&self, x: &Tensor) -> Result<Vec<[f32; N_LABELS]>> {
        let p = candle_nn::ops::softmax_last_dim(&self.forward(x, None)?)?;
        Ok(p.to_vec2::<f32>()?.into_iter().map(|r| std::array::from_fn(|i| r[i])).collect())
    }

    /// A copy of the current weights (for keeping the best epoch).
    pub fn snapshot(&self) -> Result<Vec<Tensor>> {
        Ok(self.vars().iter().map(|v| v.as_tensor().copy()).collect::<candle_core::Result<Vec<_>>>()?)
    }

    /// Restore weights taken by [`EmotionHead::snapshot`].
    pub fn restore(&self, snapshot: &[Tensor]) -> Result<()> {
        for (v, t) in self.vars().iter().zip(snapshot) {
            v.set(t)?;
        }
        Ok(())
    }

    /// The variables by their checkpoint names (`l1.weight`, `l1.bias`, `l2.weight`, `l2.bias`).
    pub fn named(&self) -> [(&'static str, &Var); 4] {
        [("l1.weight", &self.w1), ("l1.bias", &self.b1), ("l2.weight", &self.w2), ("l2.bias", &self.b2)]
    }
}

/// The description of a checkpoint (`tagger.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointMeta {
    /// Always [`FORMAT`].
    pub format: String,
    /// The label order of the head's outputs.
    pub labels: Vec<String>,
    /// The encoder id ([`TextEncoder::id`]).
    pub encoder_id: String,
    /// The sha256 of the encoder's weights.
    pub encoder_sha256: String,
    /// The head's shape.
    pub head: HeadShape,
    /// The sha256 of `head.safetensors`.
    pub weights_sha256: String,
    /// When the encoder was fine-tuned: the sha256 of `encoder.safetensors`
    /// (the base encoder's config and tokenizer are used with it).
    #[serde(default)]
    pub finetuned_encoder: Option<FinetunedEncoder>,
    /// Facts about training (config, selection, timings); free-form.
    #[serde(default)]
    pub training: serde_json::Value,
}

/// A fine-tuned encoder stored in the checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetunedEncoder {
    /// The sha256 of `encoder.safetensors`.
    pub sha256: String,
    /// The encoder's token limit.
    pub max_tokens: usize,
}

/// Features `(n, input_dim)` of `inputs`: the utterance embeddings, then the
/// context embeddings when the shape uses context. Embeddings come from
/// `cache` when it has them.
pub fn features(
    encoder: &TextEncoder,
    cache: Option<&mut EmbeddingCache>,
    inputs: &[TaggerInput],
    context: ContextMode,
    progress: bool,
) -> Result<Tensor> {
    let mut texts: Vec<&str> = inputs.iter().map(|i| i.utterance.as_str()).collect();
    if context != ContextMode::None {
        texts.extend(inputs.iter().map(|i| i.context_text(context)));
    }
    let vecs = embed_cached(encoder, cache, &texts, progress)?;
    let d = encoder.dim();
    let n = inputs.len();
    let flat: Vec<f32> = vecs.into_iter().flatten().collect();
    let t = Tensor::from_vec(flat, (texts.len(), d), encoder.device())?;
    Ok(match context {
        ContextMode::None => t,
        ContextMode::Last => Tensor::cat(&[t.narrow(0, 0, n)?, t.narrow(0, n, n)?], 1)?,
    })
}

/// A trained tagger: the shared encoder and a head.
pub struct EmotionTagger {
    encoder: Arc<TextEncoder>,
    head: EmotionHead,
    meta: CheckpointMeta,
}

impl EmotionTagger {
    /// A tagger from a trained head (the checkpoint description is filled by [`EmotionTagger::save`]).
    pub fn new(encoder: Arc<TextEncoder>, head: EmotionHead, training: serde_json::Value) -> Self {
        let meta = CheckpointMeta {
            format: FORMAT.into(),
            labels: Emotion::ALL.iter().map(|e| e.name().to_string()).collect(),
            encoder_id: encoder.id().to_string(),
            encoder_sha256: encoder.weights_sha256().to_string(),
            head: head.shape(),
            weights_sha256: String::new(),
            finetuned_encoder: None,
            training,
        };
        EmotionTagger { encoder, head, meta }
    }

    /// A tagger whose encoder was fine-tuned from `base`.
    pub fn new_finetuned(
        base: &TextEncoder,
        finetuned: Arc<TextEncoder>,
        head: EmotionHead,
        training: serde_json::Value,
    ) -> Self {
        let mut t = Self::new(finetuned, head, training);
        t.meta.encoder_id = base.id().to_string();
        t.meta.encoder_sha256 = base.weights_sha256().to_string();
        t.meta.finetuned_encoder = Some(FinetunedEncoder {
            sha256: t.encoder.weights_sha256().to_string(),
            max_tokens: t.encoder.options().max_tokens,
        });
        t
    }

    /// The encoder.
    pub fn encoder(&self) -> &Arc<TextEncoder> {
        &self.encoder
    }

    /// The head.
    pub fn head(&self) -> &EmotionHead {
        &self.head
    }

    /// The checkpoint description.
    pub fn meta(&self) -> &CheckpointMeta {
        &self.meta
    }

    /// One distribution over the nine labels per input (softmax; sums to 1).
    pub fn predict(&self, inputs: &[TaggerInput], cache: Option<&mut EmbeddingCache>) -> Result<Vec<EmotionDist>> {
        Ok(self.predict_probs(inputs, cache, false)?.into_iter().map(EmotionDist).collect())
    }

    /// Like [`EmotionTagger::predict`], as arrays, optionally with a progress bar while embedding.
    pub fn predict_probs(
        &self,
        inputs: &[TaggerInput],
        cache: Option<&mut EmbeddingCache>,
        progress: bool,
    ) -> Result<Vec<[f32; N_LABELS]>> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let x = features(&self.encoder, cache, inputs, self.meta.head.context, progress)?;
        self.head.probs(&x)
    }

    /// Write the checkpoint to `dir` (created if needed).
    pub fn save(&mut self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| NeuralError::io(dir, e))?;
        let weights = dir.join(WEIGHTS_FILE);
        let tensors: HashMap<String, Tensor> =
            self.head.named().iter().map(|(n, v)| (n.to_string(), v.as_tensor().clone())).collect();
        candle_core::safetensors::save(&tensors, &weights)
            .map_err(|e| NeuralError::bad_file(&weights, format!("cannot write the head's weights: {e}")))?;
        self.meta.weights_sha256 = sha256_file(&weights)?;
        if self.meta.finetuned_encoder.is_some() {
            let dest = dir.join(ENCODER_FILE);
            if self.encoder.weights_path() != dest {
                std::fs::copy(self.encoder.weights_path(), &dest).map_err(|e| NeuralError::io(&dest, e))?;
            }
        }
        let meta = dir.join(META_FILE);
        let json = serde_json::to_string_pretty(&self.meta)
            .map_err(|e| NeuralError::Invalid(format!("cannot serialise the checkpoint description: {e}")))?;
        std::fs::write(&meta, json).map_err(|e| NeuralError::io(&meta, e))
    }

    /// Load the checkpoint in `dir` for `encoder`. Refuses, naming the file:
    /// a missing checkpoint (train it first), a description that does not
    /// parse or has another format or label order, an encoder other than the
    /// one it was trained with, weights whose sha256 differs from the recorded
    /// one (corrupted), or tensors of the wrong name or shape.
    pub fn load(dir: &Path, encoder: Arc<TextEncoder>) -> Result<Self> {
        let meta_path = dir.join(META_FILE);
        let weights_path = dir.join(WEIGHTS_FILE);
        for p in [&meta_path, &weights_path] {
            if !p.is_file() {
                return Err(NeuralError::bad_file(
                    p,
                    "missing: no trained emotion tagger here; train it with `ecr train -r RECIPE --stage emotion`",
                ));
            }
        }
        let text = std::fs::read_to_string(&meta_path).map_err(|e| NeuralError::io(&meta_path, e))?;
        let meta: CheckpointMeta = serde_json::from_str(&text).map_err(|e| {
            NeuralError::bad_file(&meta_path, format!("not an emotion tagger description ({e}); retrain the tagger"))
        })?;
        if meta.format != FORMAT {
            return Err(NeuralError::bad_file(
                &meta_path,
                format!("format {:?}, expected {FORMAT:?}; retrain the tagger", meta.format),
            ));
        }
        let labels: Vec<&str> = Emotion::ALL.iter().map(|e| e.name()).collect();
        if meta.labels != labels {
            return Err(NeuralError::bad_file(
                &meta_path,
                format!("label order {:?} differs from {:?}; retrain the tagger", meta.labels, labels),
            ));
        }
        if meta.encoder_sha256 != encoder.weights_sha256() || meta.head.embed_dim != encoder.dim() {
            return Err(NeuralError::bad_file(
                &meta_path,
                format!(
                    "trained on encoder {} but the configured encoder is {}; point model_dir at the encoder it was \
                     trained with, or retrain the tagger",
                    meta.encoder_id,
                    encoder.id()
                ),
            ));
        }
        let encoder = match &meta.finetuned_encoder {
            None => encoder,
            Some(ft) => {
                let path = dir.join(ENCODER_FILE);
                let opts = EncoderOptions { max_tokens: ft.max_tokens, ..EncoderOptions::default() };
                let enc = TextEncoder::load_parts_on(encoder.model_dir(), &path, opts, encoder.device()).map_err(
                    |e| match e {
                        NeuralError::MissingModel { path } => NeuralError::bad_file(
                            path,
                            "missing: the fine-tuned encoder of this checkpoint; retrain the tagger",
                        ),
                        e => e,
                    },
                )?;
                if enc.weights_sha256() != ft.sha256 {
                    return Err(NeuralError::bad_file(
                        &path,
                        format!(
                            "corrupted: sha256 {} differs from {} recorded in {META_FILE}; retrain the tagger",
                            enc.weights_sha256(),
                            ft.sha256
                        ),
                    ));
                }
                Arc::new(enc)
            }
        };
        let sha = sha256_file(&weights_path)?;
        if sha != meta.weights_sha256 {
            return Err(NeuralError::bad_file(
                &weights_path,
                format!(
                    "corrupted: sha256 {sha} differs from {} recorded in {META_FILE}; retrain the tagger",
                    meta.weights_sha256
                ),
            ));
        }
        let tensors = candle_core::safetensors::load(&weights_path, encoder.device()).map_err(|e| {
            NeuralError::bad_file(&weights_path, format!("corrupted: not a safetensors file ({e}); retrain the tagger"))
        })?;
        let shape = meta.head;
        let (d, h) = (shape.input_dim(), shape.hidden);
        let expected: [(&str, (usize, usize)); 4] =
            [("l1.weight", (h, d)), ("l1.bias", (1, h)), ("l2.weight", (N_LABELS, h)), ("l2.bias", (1, N_LABELS))];
        let mut vars = Vec::new();
        for (name, dims) in expected {
            let t = tensors.get(name).ok_or_else(|| {
                NeuralError::bad_file(&weights_path, format!("tensor {name} is missing; retrain the tagger"))
            })?;
            if t.dims() != [dims.0, dims.1] || t.dtype() != DType::F32 {
                return Err(NeuralError::bad_file(
                    &weights_path,
                    format!("tensor {name} has shape {:?} {:?}, expected {dims:?} f32", t.dims(), t.dtype()),
                ));
            }
            vars.push(Var::from_tensor(t)?);
        }
        let mut it = vars.into_iter();
        let (Some(w1), Some(b1), Some(w2), Some(b2)) = (it.next(), it.next(), it.next(), it.next()) else {
            return Err(NeuralError::Invalid("internal: four head tensors expected".into()));
        };
        Ok(EmotionTagger { encoder, head: EmotionHead { shape, w1, b1, w2, b2 }, meta })
    }
}

/// The checkpoint directory's two files.
pub fn checkpoint_files(dir: &Path) -> [PathBuf; 2] {
    [dir.join(META_FILE), dir.join(WEIGHTS_FILE)]
}
