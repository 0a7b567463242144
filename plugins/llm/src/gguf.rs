//! Reading a Llama-architecture GGUF file: its hyper-parameters and its tensors.

use crate::{LlmError, Result};
use candle_core::Device;
use candle_core::quantized::{QTensor, gguf_file};
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// Hyper-parameters of a Llama-architecture model, from the GGUF metadata (`llama.*`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LlamaConfig {
    /// Transformer blocks (`llama.block_count`).
    pub n_layer: usize,
    /// Hidden size (`llama.embedding_length`).
    pub d_model: usize,
    /// Query heads (`llama.attention.head_count`).
    pub n_head: usize,
    /// Key/value heads (`llama.attention.head_count_kv`).
    pub n_kv_head: usize,
    /// Feed-forward width (`llama.feed_forward_length`).
    pub d_ff: usize,
    /// Vocabulary size (rows of `token_embd.weight`).
    pub vocab: usize,
    /// Context length the model was trained for (`llama.context_length`).
    pub context: usize,
    /// RoPE base frequency (`llama.rope.freq_base`).
    pub rope_theta: f32,
    /// RMSNorm epsilon (`llama.attention.layer_norm_rms_epsilon`).
    pub rms_eps: f32,
}

impl LlamaConfig {
    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_head
    }
}

/// An opened GGUF file: metadata and the raw bytes its tensors are read from.
pub struct GgufFile {
    path: PathBuf,
    content: gguf_file::Content,
    bytes: Vec<u8>,
}

impl GgufFile {
    /// Read a GGUF file into memory and parse its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let bytes = std::fs::read(&path).map_err(|source| LlmError::Io { path: path.clone(), source })?;
        let content = gguf_file::Content::read(&mut Cursor::new(&bytes))
            .map_err(|e| LlmError::Model { path: path.clone(), msg: format!("not a readable GGUF file: {e}") })?;
        Ok(Self { path, content, bytes })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed header (metadata and tensor infos).
    pub fn content(&self) -> &gguf_file::Content {
        &self.content
    }

    /// An error about this file.
    pub fn error(&self, msg: impl Into<String>) -> LlmError {
        LlmError::Model { path: self.path.clone(), msg: msg.into() }
    }

    /// A metadata value, or an error naming the missing key.
    pub fn meta(&self, key: &str) -> Result<&gguf_file::Value> {
        self.content.metadata.get(key).ok_or_else(|| self.error(format!("metadata key `{key}` is missing")))
    }

    fn meta_usize(&self, key: &str) -> Result<usize> {
        let v = self.meta(key)?;
        v.to_u32()
            .map(|x| x as usize)
            .or_else(|_| v.to_u64().map(|x| x as usize))
            .map_err(|e| self.error(format!("metadata key `{key}`: {e}")))
    }

    fn meta_f32(&self, key: &str) -> Result<f32> {
        self.meta(key)?.to_f32().map_err(|e| self.error(format!("metadata key `{key}`: {e}")))
    }

    /// A list of strings from the metadata (e.g. `tokenizer.ggml.tokens`).
    pub fn meta_strings(&self, key: &str) -> Result<Vec<&str>> {
        let list = self.meta(key)?.to_vec().map_err(|e| self.error(format!("metadata key `{key}`: {e}")))?;
        list.iter()
            .map(|v| v.to_string().map(String::as_str).map_err(|e| self.error(format!("metadata key `{key}`: {e}"))))
            .collect()
    }

    /// A list of integers from the metadata (e.g. `tokenizer.ggml.token_type`).
    pub fn meta_ints(&self, key: &str) -> Result<Vec<i64>> {
        let list = self.meta(key)?.to_vec().map_err(|e| self.error(format!("metadata key `{key}`: {e}")))?;
        list.iter()
            .map(|v| {
                v.to_i32()
                    .map(i64::from)
                    .or_else(|_| v.to_u32().map(i64::from))
                    .map_err(|e| self.error(format!("metadata key `{key}`: {e}")))
            })
            .collect()
    }

    /// An optional unsigned metadata value.
    pub fn meta_opt_u32(&self, key: &str) -> Option<u32> {
        self.content.metadata.get(key).and_then(|v| v.to_u32().ok())
    }

    /// The model's hyper-parameters; the architecture must be `llama`.
    pub fn llama_config(&self) -> Result<LlamaConfig> {
        let arch = self.meta("general.architecture")?.to_string().map_err(|e| self.error(e.to_string()))?;
        if arch != "llama" {
            return Err(self.error(format!("architecture `{arch}` is not supported (only `llama`)")));
        }
        let emb = self.tensor_shape("token_embd.weight")?;
        let c = LlamaConfig {
            n_layer: self.meta_usize("llama.block_count")?,
            d_model: self.meta_usize("llama.embedding_length")?,
            n_head: self.meta_usize("llama.attention.head_count")?,
            n_kv_head: self.meta_usize("llama.attention.head_count_kv")?,
            d_ff: self.meta_usize("llama.feed_forward_length")?,
            vocab: emb[0],
            context: self.meta_usize("llama.context_length")?,
            rope_theta: self.meta_f32("llama.rope.freq_base").unwrap_or(10_000.0),
            rms_eps: self.meta_f32("llama.attention.layer_norm_rms_epsilon")?,
        };
        if c.n_head == 0
            || c.n_kv_head == 0
            || !c.d_model.is_multiple_of(c.n_head)
            || !c.n_head.is_multiple_of(c.n_kv_head)
        {
            return Err(self.error(format!(
                "inconsistent heads: d_model {} with {} query heads and {} key/value heads",
                c.d_model, c.n_head, c.n_kv_head
            )));
        }
        if emb[1] != c.d_model {
            return Err(self.error(format!("token_embd.weight has width {}, expected {}", emb[1], c.d_model)));
        }
        Ok(c)
    }

    /// A tensor's shape in candle's order (rows first), or an error naming it.
    pub fn tensor_shape(&self, name: &str) -> Result<Vec<usize>> {
        self.content
            .tensor_infos
            .get(name)
            .map(|t| t.shape.dims().to_vec())
            .ok_or_else(|| self.error(format!("tensor `{name}` is missing")))
    }

    /// Read one tensor (on the CPU).
    pub fn tensor(&self, name: &str) -> Result<QTensor> {
        if !self.content.tensor_infos.contains_key(name) {
            return Err(self.error(format!("tensor `{name}` is missing")));
        }
        self.content
            .tensor(&mut Cursor::new(&self.bytes), name, &Device::Cpu)
            .map_err(|e| self.error(format!("tensor `{name}`: {e}")))
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A reader over the whole file (for candle's loaders).
    pub fn reader(&self) -> Cursor<&[u8]> {
        Cursor::new(&self.bytes)
    }
}
