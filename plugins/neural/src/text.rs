//! The sentence encoder: all-MiniLM-L6-v2 (a 6-layer BERT) in candle.
//!
//! A sentence embedding is the mean of the last hidden states over the real
//! tokens (padding masked out), L2-normalised, as in sentence-transformers.
//! Texts are embedded in batches sorted by length so that little padding is
//! computed; the output order is the input order.

use crate::error::{NeuralError, Result};
use candle_core::{D, DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// The directory name of MiniLM under `models/` (written by `models/fetch.sh`).
pub const MINILM_DIR: &str = "all-MiniLM-L6-v2";

/// How the encoder tokenizes and batches.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderOptions {
    /// Texts longer than this many tokens are truncated (sentence-transformers uses 256 for MiniLM).
    pub max_tokens: usize,
    /// Texts per forward pass.
    pub batch_size: usize,
    /// Pad every input to this many tokens instead of to the longest of its
    /// batch (the shipped tokenizer pads to 128). Padding is masked out, so
    /// this changes speed, not embeddings.
    pub pad_to: Option<usize>,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        EncoderOptions { max_tokens: 256, batch_size: 32, pad_to: None }
    }
}

/// The MiniLM sentence encoder.
pub struct TextEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dim: usize,
    id: String,
    weights_sha256: String,
    options: EncoderOptions,
    model_dir: PathBuf,
    weights_path: PathBuf,
    layers: usize,
    heads: usize,
    eps: f64,
}

/// The files of a MiniLM directory, or [`NeuralError::MissingModel`] for the first one missing.
fn model_files(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let files = (dir.join("config.json"), dir.join("tokenizer.json"), dir.join("model.safetensors"));
    for p in [&files.0, &files.1, &files.2] {
        if !p.is_file() {
            return Err(NeuralError::MissingModel { path: p.clone() });
        }
    }
    Ok(files)
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| NeuralError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| NeuralError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl TextEncoder {
    /// Load MiniLM from `dir` (holding `config.json`, `tokenizer.json`,
    /// `model.safetensors`) with the default options.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_with(dir, EncoderOptions::default())
    }

    /// Load MiniLM from `dir` with `options`.
    pub fn load_with(dir: &Path, options: EncoderOptions) -> Result<Self> {
        let (_, _, weights) = model_files(dir)?;
        Self::load_parts(dir, &weights, options)
    }

    /// Load the config and tokenizer of `dir` with other weights (a fine-tuned MiniLM), on the CPU.
    pub fn load_parts(dir: &Path, weights: &Path, options: EncoderOptions) -> Result<Self> {
        Self::load_parts_on(dir, weights, options, &Device::Cpu)
    }

    /// Like [`TextEncoder::load_parts`], on `device`.
    pub fn load_parts_on(dir: &Path, weights: &Path, options: EncoderOptions, device: &Device) -> Result<Self> {
        if !weights.is_file() {
            return Err(NeuralError::MissingModel { path: weights.to_path_buf() });
        }
        if options.batch_size == 0 || options.max_tokens < 2 {
            return Err(NeuralError::Invalid(format!(
                "encoder options {options:?}: batch_size must be >= 1 and max_tokens >= 2"
            )));
        }
        let (config_path, tokenizer_path, _) = model_files(dir)?;
        let weights_path = weights.to_path_buf();
        let config_text = std::fs::read_to_string(&config_path).map_err(|e| NeuralError::io(&config_path, e))?;
        let config: Config = serde_json::from_str(&config_text).map_err(|e| {
            NeuralError::bad_file(&config_path, format!("not a BERT config: {e}; rerun models/fetch.sh"))
        })?;
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| {
            NeuralError::bad_file(&tokenizer_path, format!("not a tokenizer: {e}; rerun models/fetch.sh"))
        })?;
        let padding = match options.pad_to {
            Some(n) => PaddingStrategy::Fixed(n),
            None => PaddingStrategy::BatchLongest,
        };
        tokenizer.with_padding(Some(PaddingParams { strategy: padding, ..Default::default() }));
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: options.max_tokens, ..Default::default() }))
            .map_err(|e| NeuralError::Tokenizer(e.to_string()))?;
        let weights_sha256 = sha256_file(&weights_path)?;
        let device = device.clone();
        // SAFETY: the weights file is memory-mapped read-only; models/fetch.sh writes it once
        // and nothing in ecr modifies it while a model is loaded.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights_path], DType::F32, &device) }
            .map_err(|e| NeuralError::bad_file(&weights_path, format!("cannot read the weights: {e}")))?;
        let model = BertModel::load(vb, &config).map_err(|e| {
            NeuralError::bad_file(&weights_path, format!("not MiniLM/BERT weights: {e}; rerun models/fetch.sh"))
        })?;
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "bert".into());
        let id = format!("{name}@{}", &weights_sha256[..16]);
        Ok(TextEncoder {
            model,
            tokenizer,
            device,
            dim: config.hidden_size,
            id,
            weights_sha256,
            options,
            model_dir: dir.to_path_buf(),
            weights_path,
            layers: config.num_hidden_layers,
            heads: config.num_attention_heads,
            eps: config.layer_norm_eps,
        })
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The directory the config and tokenizer came from.
    pub fn model_dir(&self) -> &Path {
        &self.model_dir
    }

    /// The weights file.
    pub fn weights_path(&self) -> &Path {
        &self.weights_path
    }

    /// `(layers, attention heads, layer-norm epsilon)` of the model.
    pub fn architecture(&self) -> (usize, usize, f64) {
        (self.layers, self.heads, self.eps)
    }

    /// Token ids and attention mask `(b, t)` of `texts`, padded to the longest
    /// (or to `pad_to`) and truncated to `max_tokens`.
    pub fn tokenize(&self, texts: &[&str]) -> Result<(Tensor, Tensor)> {
        let encodings =
            self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| NeuralError::Tokenizer(e.to_string()))?;
        let len = encodings.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(texts.len() * len);
        let mut mask = Vec::with_capacity(texts.len() * len);
        for e in &encodings {
            // Padding makes every encoding `len` long; guard anyway so shapes always agree.
            let (i, m) = (e.get_ids(), e.get_attention_mask());
            ids.extend((0..len).map(|k| i.get(k).copied().unwrap_or(0)));
            mask.extend((0..len).map(|k| m.get(k).copied().unwrap_or(0)));
        }
        let ids = Tensor::from_vec(ids, (texts.len(), len), &self.device)?;
        let mask = Tensor::from_vec(mask, (texts.len(), len), &self.device)?;
        Ok((ids, mask))
    }

    /// `<model dir name>@<first 16 hex digits of the weights' sha256>`: names
    /// the model in caches and checkpoints.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The sha256 of the weights file.
    pub fn weights_sha256(&self) -> &str {
        &self.weights_sha256
    }

    /// Embedding dimension (384 for MiniLM).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The options the encoder was loaded with.
    pub fn options(&self) -> &EncoderOptions {
        &self.options
    }

    /// Number of tokens (with `[CLS]`/`[SEP]`, after truncation) of `text`.
    pub fn token_count(&self, text: &str) -> Result<usize> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| NeuralError::Tokenizer(e.to_string()))?;
        Ok(enc.get_attention_mask().iter().filter(|&&m| m == 1).count())
    }

    /// Embed `texts`: one L2-normalised vector of [`TextEncoder::dim`] floats
    /// per text, in input order.
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>> {
        // Sort by length (characters approximate tokens) so batches need little padding.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].as_ref().len());
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(self.options.batch_size) {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i].as_ref()).collect();
            let rows = self.embed_batch(&batch)?.to_vec2::<f32>()?;
            for (&i, row) in chunk.iter().zip(rows) {
                out[i] = row;
            }
        }
        Ok(out)
    }

    /// Embed one batch in one forward pass: a `(texts.len(), dim)` tensor.
    pub fn embed_batch(&self, texts: &[&str]) -> Result<Tensor> {
        if texts.is_empty() {
            return Ok(Tensor::zeros((0, self.dim), DType::F32, &self.device)?);
        }
        let _span = tracing::trace_span!("minilm_batch", n = texts.len()).entered();
        let (ids, mask) = self.tokenize(texts)?;
        let type_ids = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?;
        Ok(mean_pool_normalize(&hidden, &mask)?)
    }
}

/// Masked mean over the token axis of `hidden` `(b, t, d)` with `mask`
/// `(b, t)` (1 = real token), then L2 normalisation: `(b, d)`.
pub fn mean_pool_normalize(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(1e-9, f64::INFINITY)?;
    let mean = summed.broadcast_div(&counts)?;
    let norm = mean.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::INFINITY)?;
    mean.broadcast_div(&norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pool_ignores_masked_tokens_and_normalises() {
        let dev = Device::Cpu;
        // Two tokens, the second masked out: the result is the first token, normalised.
        let h = Tensor::new(&[[[3f32, 4.0], [100.0, -100.0]]], &dev).unwrap();
        let m = Tensor::new(&[[1u32, 0]], &dev).unwrap();
        let v = mean_pool_normalize(&h, &m).unwrap().to_vec2::<f32>().unwrap();
        assert!((v[0][0] - 0.6).abs() < 1e-6 && (v[0][1] - 0.8).abs() < 1e-6, "{v:?}");
    }

    #[test]
    fn missing_model_dir_says_to_run_fetch() {
        let err = TextEncoder::load(Path::new("/nonexistent/minilm")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("models/fetch.sh"), "{err}");
    }
}

/// The MiniLM encoder in a model directory, as an engine resource: loaded once
/// per engine and shared by every stage that embeds text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TextEncoderKey(pub PathBuf);

impl ecr_engine::ResourceKey for TextEncoderKey {
    type Value = TextEncoder;
    fn create(&self, _: &ecr_engine::Resources) -> std::result::Result<TextEncoder, ecr_engine::BoxError> {
        // The key has no context; the device is the process's `$ECR_DEVICE`, the rule of `BuildContext::device`.
        let device = crate::device::device_named(&crate::device::env_device_name())?;
        let (_, _, weights) = model_files(&self.0)?;
        Ok(TextEncoder::load_parts_on(&self.0, &weights, EncoderOptions::default(), &device)?)
    }
}
