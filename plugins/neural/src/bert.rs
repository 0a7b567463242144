//! A trainable BERT forward pass for fine-tuning MiniLM.
//!
//! candle-transformers' `BertModel` is built from fused kernels (layer norm,
//! softmax) that have no backward pass, so gradients stop at them. This is
//! the same computation from differentiable operations, with the encoder
//! layers as trainable [`Var`]s (the embedding layer stays frozen). After
//! training, [`TrainableBert::save`] writes weights that `BertModel` (and so
//! [`crate::TextEncoder`]) loads for fast inference.

use crate::error::{NeuralError, Result};
use candle_core::{D, DType, Device, Tensor, Var};
use std::collections::HashMap;
use std::path::Path;

/// MiniLM's encoder with trainable layers.
pub struct TrainableBert {
    frozen: HashMap<String, Tensor>,
    vars: Vec<(String, Var)>,
    index: HashMap<String, usize>,
    layers: usize,
    heads: usize,
    eps: f64,
}

fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)?.broadcast_mul(w)?.broadcast_add(b)
}

fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_matmul(&w.t()?)?.broadcast_add(b)
}

impl TrainableBert {
    /// Load the weights file of MiniLM (`layers` layers, `heads` attention heads) onto `device`.
    pub fn load(weights: &Path, layers: usize, heads: usize, eps: f64, device: &Device) -> Result<Self> {
        let all = candle_core::safetensors::load(weights, device)
            .map_err(|e| NeuralError::bad_file(weights, format!("cannot read the weights: {e}")))?;
        let mut frozen = HashMap::new();
        let mut vars = Vec::new();
        let mut names: Vec<&String> = all.keys().collect();
        names.sort();
        for name in names {
            let t = &all[name];
            if t.dtype() != DType::F32 || name.starts_with("pooler.") {
                continue;
            }
            if name.starts_with("encoder.") {
                vars.push((name.clone(), Var::from_tensor(t)?));
            } else {
                frozen.insert(name.clone(), t.clone());
            }
        }
        let index = vars.iter().enumerate().map(|(i, (n, _))| (n.clone(), i)).collect();
        let bert = TrainableBert { frozen, vars, index, layers, heads, eps };
        // Fail now, naming the file, rather than in the middle of training.
        for n in ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight"] {
            bert.get(n).map_err(|_| NeuralError::bad_file(weights, format!("tensor {n} is missing")))?;
        }
        Ok(bert)
    }

    /// The trainable variables with their names (`encoder.layer.…`).
    pub fn named_vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// The trainable variables.
    pub fn vars(&self) -> Vec<Var> {
        self.vars.iter().map(|(_, v)| v.clone()).collect()
    }

    fn get(&self, name: &str) -> Result<&Tensor> {
        if let Some(&i) = self.index.get(name) {
            return Ok(self.vars[i].1.as_tensor());
        }
        self.frozen.get(name).ok_or_else(|| NeuralError::Invalid(format!("BERT weights lack tensor {name}")))
    }

    /// Last hidden states `(b, t, d)` for token ids and attention mask `(b, t)`.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let word = self.get("embeddings.word_embeddings.weight")?;
        let d = word.dim(1)?;
        let pos_ids = Tensor::arange(0u32, t as u32, ids.device())?;
        let emb = word
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, d))?
            .broadcast_add(&self.get("embeddings.position_embeddings.weight")?.index_select(&pos_ids, 0)?)?
            .broadcast_add(&self.get("embeddings.token_type_embeddings.weight")?.narrow(0, 0, 1)?)?;
        let mut h = layer_norm(
            &emb,
            self.get("embeddings.LayerNorm.weight")?,
            self.get("embeddings.LayerNorm.bias")?,
            self.eps,
        )?;
        // Additive mask: 0 for real tokens, -1e4 for padding; (b, 1, 1, t).
        let mask_add = ((mask.to_dtype(DType::F32)? - 1.0)? * 1e4)?.reshape((b, 1, 1, t))?;
        let (nh, dh) = (self.heads, d / self.heads);
        for l in 0..self.layers {
            let p = |s: &str| format!("encoder.layer.{l}.{s}");
            let lin = |x: &Tensor, s: &str| -> Result<Tensor> {
                Ok(linear(x, self.get(&p(&format!("{s}.weight")))?, self.get(&p(&format!("{s}.bias")))?)?)
            };
            let heads = |x: Tensor| x.reshape((b, t, nh, dh))?.transpose(1, 2)?.contiguous();
            let q = heads(lin(&h, "attention.self.query")?)?;
            let k = heads(lin(&h, "attention.self.key")?)?;
            let v = heads(lin(&h, "attention.self.value")?)?;
            let scores = (q.matmul(&k.t()?.contiguous()?)? / (dh as f64).sqrt())?.broadcast_add(&mask_add)?;
            // Softmax from differentiable ops; the max shift is a constant for the gradient.
            let max = scores.max_keepdim(D::Minus1)?.detach();
            let e = scores.broadcast_sub(&max)?.exp()?;
            let probs = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
            let ctx = probs.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((b, t, d))?;
            let a = layer_norm(
                &(lin(&ctx, "attention.output.dense")? + &h)?,
                self.get(&p("attention.output.LayerNorm.weight"))?,
                self.get(&p("attention.output.LayerNorm.bias"))?,
                self.eps,
            )?;
            let inter = lin(&a, "intermediate.dense")?.gelu_erf()?;
            h = layer_norm(
                &(lin(&inter, "output.dense")? + &a)?,
                self.get(&p("output.LayerNorm.weight"))?,
                self.get(&p("output.LayerNorm.bias"))?,
                self.eps,
            )?;
        }
        Ok(h)
    }

    /// A copy of the trainable weights.
    pub fn snapshot(&self) -> Result<Vec<Tensor>> {
        Ok(self.vars.iter().map(|(_, v)| v.as_tensor().copy()).collect::<candle_core::Result<_>>()?)
    }

    /// Restore weights taken by [`TrainableBert::snapshot`].
    pub fn restore(&self, snapshot: &[Tensor]) -> Result<()> {
        for ((_, v), t) in self.vars.iter().zip(snapshot) {
            v.set(t)?;
        }
        Ok(())
    }

    /// Write all weights (frozen and trained) as a safetensors file that
    /// `BertModel` loads.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut all: HashMap<String, Tensor> = self.frozen.clone();
        for (n, v) in &self.vars {
            all.insert(n.clone(), v.as_tensor().clone());
        }
        candle_core::safetensors::save(&all, path)
            .map_err(|e| NeuralError::bad_file(path, format!("cannot write the fine-tuned encoder: {e}")))
    }
}
