//! The reference decoder: candle's `quantized_llama::ModelWeights` on the same GGUF file.

use crate::Result;
use crate::gguf::GgufFile;
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use std::io::Cursor;

/// candle's model, loaded once; sessions clone it (its tensors are shared, its KV cache is not).
pub(crate) struct CandleModel {
    weights: ModelWeights,
    q4_0: bool,
}

/// A session's copy of candle's model (with its own KV cache) and the position.
pub(crate) struct CandleState {
    weights: ModelWeights,
    pos: usize,
}

impl CandleModel {
    /// Load the file as it is, or with its Q4_1 tensors re-quantized to Q4_0.
    pub(crate) fn load(g: &GgufFile, q4_0: bool) -> Result<Self> {
        let weights = if q4_0 {
            let bytes = requantized_gguf(g, GgmlDType::Q4_1, GgmlDType::Q4_0)?;
            let mut r = Cursor::new(bytes);
            let content = gguf_file::Content::read(&mut r)?;
            ModelWeights::from_gguf(content, &mut r, &Device::Cpu)?
        } else {
            let mut r = g.reader();
            let content = gguf_file::Content::read(&mut r)?;
            ModelWeights::from_gguf(content, &mut r, &Device::Cpu)?
        };
        Ok(Self { weights, q4_0 })
    }

    pub(crate) fn describe(&self) -> String {
        let threads = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()).to_string());
        let fmt = if self.q4_0 { "Q4_1 re-quantized to Q4_0" } else { "Q4_1 as shipped" };
        format!("candle 0.11 quantized_llama, {fmt}, {threads} rayon threads")
    }

    pub(crate) fn new_state(&self) -> CandleState {
        let mut weights = self.weights.clone();
        weights.clear_kv_cache();
        CandleState { weights, pos: 0 }
    }

    pub(crate) fn forward(&self, s: &mut CandleState, tokens: &[u32]) -> Result<Vec<f32>> {
        let x = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
        let logits = s.weights.forward(&x, s.pos)?;
        s.pos += tokens.len();
        Ok(logits.squeeze(0)?.to_vec1::<f32>()?)
    }
}

impl CandleState {
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn reset(&mut self) {
        self.weights.clear_kv_cache();
        self.pos = 0;
    }
}

/// The file rewritten in memory with every `from` tensor re-quantized to `to`.
fn requantized_gguf(g: &GgufFile, from: GgmlDType, to: GgmlDType) -> Result<Vec<u8>> {
    let content = g.content();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: Vec<(&str, QTensor)> = Vec::with_capacity(names.len());
    for name in names {
        let t = g.tensor(name)?;
        let t = if t.dtype() == from { QTensor::quantize(&t.dequantize(&Device::Cpu)?, to)? } else { t };
        tensors.push((name.as_str(), t));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &metadata, &refs)?;
    Ok(out.into_inner())
}
