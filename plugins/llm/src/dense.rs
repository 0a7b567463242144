//! The model in f32 on candle tensors, differentiable: what a LoRA [`Adapter`] is trained and
//! scored on.
//!
//! Every weight is dequantised from the GGUF file once (135M parameters: ~540 MB) and frozen
//! (plain tensors, not variables, so backpropagation computes no gradient for them and only
//! flows through them to the adapter). The forward pass is the decoders' (RMSNorm, GGUF's
//! interleaved RoPE, grouped-query causal attention, SwiGLU, tied output head) written with
//! differentiable candle operations only (candle's fused RMSNorm, softmax and RoPE kernels have
//! no backward pass). Logits are computed only where they are needed (the target tokens), which
//! saves most of the output head's cost.

use crate::gguf::{GgufFile, LlamaConfig};
use crate::lora::{Adapter, SplitMix, Target};
use crate::{LlmError, Result};
use candle_core::{D, DType, Device, Tensor};

struct DenseLayer {
    attn_norm: Tensor,
    ffn_norm: Tensor,
    /// Projections `out × in`, in [`Target::ALL`] order.
    w: [Tensor; 7],
}

/// The dequantised model.
pub struct DenseLlama {
    cfg: LlamaConfig,
    embed: Tensor,
    head: Tensor,
    out_norm: Tensor,
    /// The first layer held: layers below it are not dequantised (their output comes from the
    /// fast decoder, [`crate::Llm::residual_before`]).
    first_layer: usize,
    /// Layers `first_layer ..`.
    layers: Vec<DenseLayer>,
    /// `cos` and `sin` per (position, dimension): each pair's angle written twice, `sin` signed
    /// (−, +) so that `rope(x) = x·cos + (x·P)·sin` with `P` the pair swap.
    cos: Tensor,
    sin: Tensor,
    swap: Tensor,
}

fn f32_of(g: &GgufFile, name: &str) -> Result<Tensor> {
    Ok(g.tensor(name)?.dequantize(&Device::Cpu)?.to_dtype(DType::F32)?)
}

impl DenseLlama {
    /// Dequantise the model of `g` (positions up to `max_positions` get RoPE tables).
    pub fn from_gguf(g: &GgufFile, max_positions: usize) -> Result<Self> {
        Self::top_layers(g, max_positions, 0)
    }

    /// Dequantise layers `first_layer ..` of `g` only (the layers an adapter trains).
    pub fn top_layers(g: &GgufFile, max_positions: usize, first_layer: usize) -> Result<Self> {
        let _span = tracing::info_span!("dense_load", first_layer).entered();
        let cfg = g.llama_config()?;
        if first_layer >= cfg.n_layer {
            return Err(LlmError::Invalid(format!("layer {first_layer}: the model has {} layers", cfg.n_layer)));
        }
        let mut layers = Vec::with_capacity(cfg.n_layer - first_layer);
        for l in first_layer..cfg.n_layer {
            let w = Target::ALL.map(|t| f32_of(g, &t.gguf_name(l)));
            let [q, k, v, o, gate, up, down] = w;
            layers.push(DenseLayer {
                attn_norm: f32_of(g, &format!("blk.{l}.attn_norm.weight"))?,
                ffn_norm: f32_of(g, &format!("blk.{l}.ffn_norm.weight"))?,
                w: [q?, k?, v?, o?, gate?, up?, down?],
            });
        }
        let embed = f32_of(g, "token_embd.weight")?;
        let head = if g.content().tensor_infos.contains_key("output.weight") {
            f32_of(g, "output.weight")?
        } else {
            embed.clone()
        };
        let hd = cfg.head_dim();
        let positions = max_positions.min(cfg.context).max(1);
        let (mut cos, mut sin) = (Vec::with_capacity(positions * hd), Vec::with_capacity(positions * hd));
        for p in 0..positions {
            for i in (0..hd).step_by(2) {
                // As the decoders compute the angles (f32), so all three rotate alike.
                let a = p as f32 * (1.0 / cfg.rope_theta.powf(i as f32 / hd as f32));
                cos.extend([a.cos(), a.cos()]);
                sin.extend([-a.sin(), a.sin()]);
            }
        }
        let mut swap = vec![0f32; hd * hd];
        for i in (0..hd).step_by(2) {
            // (x·P)[2i] = x[2i+1], (x·P)[2i+1] = x[2i]; the signs live in `sin`.
            swap[(i + 1) * hd + i] = 1.0;
            swap[i * hd + i + 1] = 1.0;
        }
        Ok(DenseLlama {
            out_norm: f32_of(g, "output_norm.weight")?,
            embed,
            head,
            first_layer,
            layers,
            cos: Tensor::from_vec(cos, (positions, hd), &Device::Cpu)?,
            sin: Tensor::from_vec(sin, (positions, hd), &Device::Cpu)?,
            swap: Tensor::from_vec(swap, (hd, hd), &Device::Cpu)?,
            cfg,
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Longest sequence [`DenseLlama::hidden`] accepts.
    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// The first layer held ([`DenseLlama::top_layers`]).
    pub fn first_layer(&self) -> usize {
        self.first_layer
    }

    /// Add `adapter`'s updates into the weights (the merged model; for tests and for scoring
    /// without the adapter's extra products).
    pub fn merge(&mut self, adapter: &Adapter) -> Result<()> {
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let l = self.first_layer + i;
            for (i, t) in Target::ALL.into_iter().enumerate() {
                if let Some(d) = adapter.delta(l, t)? {
                    layer.w[i] = (&layer.w[i] + d)?;
                }
            }
        }
        Ok(())
    }

    fn rms(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        Ok(x.broadcast_div(&(ms + self.cfg.rms_eps as f64)?.sqrt()?)?.broadcast_mul(w)?)
    }

    /// `x` (`T × d`) rotated by the angles of positions `0..T`, per head (`heads × T × hd`).
    fn rope(&self, x: &Tensor, t: usize) -> Result<Tensor> {
        let (cos, sin) = (self.cos.narrow(0, 0, t)?, self.sin.narrow(0, 0, t)?);
        Ok((x.broadcast_mul(&cos)? + x.broadcast_matmul(&self.swap)?.broadcast_mul(&sin)?)?)
    }

    /// The final hidden states (`T × d`, after the output norm) of `tokens` from position 0,
    /// with `adapter` applied beside the weights when given (and its dropout when `dropout`).
    pub fn hidden(&self, tokens: &[u32], adapter: Option<&Adapter>, dropout: Option<&mut SplitMix>) -> Result<Tensor> {
        if self.first_layer != 0 {
            return Err(LlmError::Invalid(format!(
                "this model holds layers {}.. only: start from their input (hidden_from)",
                self.first_layer
            )));
        }
        let ids = Tensor::from_vec(tokens.to_vec(), tokens.len(), &Device::Cpu)?;
        self.hidden_from(self.embed.index_select(&ids, 0)?, adapter, dropout)
    }

    /// The final hidden states (`T × d`) from `x`, the residual stream (`T × d`, positions
    /// `0..T`) entering layer [`DenseLlama::first_layer`].
    pub fn hidden_from(
        &self,
        mut x: Tensor,
        adapter: Option<&Adapter>,
        mut dropout: Option<&mut SplitMix>,
    ) -> Result<Tensor> {
        let c = &self.cfg;
        let t_n = x.dims2()?.0;
        if t_n == 0 || t_n > self.max_positions() {
            return Err(LlmError::Invalid(format!(
                "a sequence of {t_n} tokens: the model takes 1 to {} here",
                self.max_positions()
            )));
        }
        let (hd, nh, nkv) = (c.head_dim(), c.n_head, c.n_kv_head);
        // Causal mask: a large negative number (not −∞, whose gradient would be NaN).
        let mask: Vec<f32> = (0..t_n * t_n).map(|i| if i % t_n > i / t_n { -1e9 } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, (t_n, t_n), &Device::Cpu)?;
        let p = adapter.map_or(0.0, |a| a.config().dropout);
        for (i, layer) in self.layers.iter().enumerate() {
            let l = self.first_layer + i;
            let mut proj = |t: Target, h: &Tensor| -> Result<Tensor> {
                let base = h.matmul(&layer.w[t as usize].t()?)?;
                match adapter {
                    Some(a) => {
                        let drop = dropout.as_deref_mut().map(|r| (p, r));
                        Ok(match a.apply(l, t, h, drop)? {
                            Some(d) => (base + d)?,
                            None => base,
                        })
                    }
                    None => Ok(base),
                }
            };
            let h = self.rms(&x, &layer.attn_norm)?;
            let heads = |y: Tensor, n: usize| y.reshape((t_n, n, hd))?.transpose(0, 1)?.contiguous();
            let q = self.rope(&heads(proj(Target::Q, &h)?, nh)?, t_n)?;
            let k = self.rope(&heads(proj(Target::K, &h)?, nkv)?, t_n)?;
            let v = heads(proj(Target::V, &h)?, nkv)?;
            // Grouped-query attention: each key/value head serves `nh / nkv` query heads.
            let rep = |y: Tensor| -> Result<Tensor> {
                Ok(y.unsqueeze(1)?.expand((nkv, nh / nkv, t_n, hd))?.reshape((nh, t_n, hd))?)
            };
            let (k, v) = (rep(k)?, rep(v)?);
            let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.broadcast_add(&mask)?;
            let m = scores.max_keepdim(D::Minus1)?.detach();
            let e = scores.broadcast_sub(&m)?.exp()?;
            let att = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?.matmul(&v)?;
            let att = att.transpose(0, 1)?.reshape((t_n, nh * hd))?;
            x = (x + proj(Target::O, &att)?)?;
            let h = self.rms(&x, &layer.ffn_norm)?;
            let a = (proj(Target::Gate, &h)?.silu()? * proj(Target::Up, &h)?)?;
            x = (x + proj(Target::Down, &a)?)?;
        }
        self.rms(&x, &self.out_norm)
    }

    /// Logits (`n × vocab`) of the hidden states at `positions`.
    pub fn logits_at(&self, hidden: &Tensor, positions: &[u32]) -> Result<Tensor> {
        let idx = Tensor::from_vec(positions.to_vec(), positions.len(), &Device::Cpu)?;
        Ok(hidden.index_select(&idx, 0)?.matmul(&self.head.t()?)?)
    }

    /// Mean cross-entropy of predicting `tokens[from..]`, each from the tokens before it (the
    /// loss of a sequence whose first `from` tokens are the prompt). A scalar tensor.
    pub fn target_loss(
        &self,
        tokens: &[u32],
        from: usize,
        adapter: Option<&Adapter>,
        dropout: Option<&mut SplitMix>,
    ) -> Result<Tensor> {
        check_target(tokens, from)?;
        let hidden = self.hidden(&tokens[..tokens.len() - 1], adapter, dropout)?;
        self.loss_of(&hidden, tokens, from, LossTerms::default())
    }

    /// [`DenseLlama::target_loss`] from `residual`, the residual stream (`(T − 1) × d`) of all
    /// tokens but the last as it enters [`DenseLlama::first_layer`], with the training terms of
    /// `terms` ([`LossTerms`]; the default is the plain mean cross-entropy).
    pub fn target_loss_from(
        &self,
        residual: Tensor,
        tokens: &[u32],
        from: usize,
        adapter: Option<&Adapter>,
        dropout: Option<&mut SplitMix>,
        terms: LossTerms<'_>,
    ) -> Result<Tensor> {
        check_target(tokens, from)?;
        if residual.dims2()? != (tokens.len() - 1, self.cfg.d_model) {
            return Err(LlmError::Invalid(format!(
                "residual of shape {:?} for {} tokens: expected [{}, {}]",
                residual.dims(),
                tokens.len(),
                tokens.len() - 1,
                self.cfg.d_model
            )));
        }
        let hidden = self.hidden_from(residual, adapter, dropout)?;
        self.loss_of(&hidden, tokens, from, terms)
    }

    fn loss_of(&self, hidden: &Tensor, tokens: &[u32], from: usize, terms: LossTerms<'_>) -> Result<Tensor> {
        let positions: Vec<u32> = (from as u32 - 1..tokens.len() as u32 - 1).collect();
        let logits = self.logits_at(hidden, &positions)?;
        let target = &tokens[from..];
        let targets = Tensor::from_vec(target.to_vec(), target.len(), &Device::Cpu)?;
        let logp = log_softmax(&logits)?;
        let nll = logp.gather(&targets.unsqueeze(1)?, 1)?.neg()?;
        let mle = match terms.weights {
            None => nll.mean_all()?,
            Some(w) if w.len() == target.len() => {
                let w = Tensor::from_vec(w.to_vec(), (target.len(), 1), &Device::Cpu)?;
                (nll * w)?.mean_all()?
            }
            Some(w) => {
                return Err(LlmError::Invalid(format!(
                    "{} token weights for a target of {} tokens",
                    w.len(),
                    target.len()
                )));
            }
        };
        let unlikelihood = terms.unlikelihood;
        if unlikelihood == 0.0 {
            return Ok(mle);
        }
        let vocab = logits.dim(1)?;
        if target.len().saturating_mul(vocab) > u32::MAX as usize {
            return Err(LlmError::Invalid(format!("a target of {} tokens is too long to score", target.len())));
        }
        let flat = repeat_candidates(target, vocab);
        if flat.is_empty() {
            return Ok(mle);
        }
        let n = flat.len();
        let idx = Tensor::from_vec(flat, n, &Device::Cpu)?;
        let p = logp.flatten_all()?.index_select(&idx, 0)?.exp()?;
        // −log(1 − p), with 1 − p kept away from 0 so that a certain repeat costs a finite amount.
        let ul = (p.neg()? + 1.0)?.clamp(1e-6f32, 1.0f32)?.log()?.sum_all()?.neg()?;
        Ok((mle + (ul * (unlikelihood / target.len() as f64))?)?)
    }
}

/// What the training loss of [`DenseLlama::target_loss_from`] adds to the mean cross-entropy of
/// the target tokens. The default adds nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct LossTerms<'a> {
    /// Each target token's weight in the cross-entropy, in order (`None`: 1 each), e.g. the
    /// inverse token frequency weights of Nakamura et al. (2019), which make the common words
    /// of the training targets cost less to miss and the rare ones more.
    pub weights: Option<&'a [f32]>,
    /// Weight of the token-level unlikelihood loss of Welleck et al. (2019): at each target
    /// position, `−log(1 − p(c))` summed over the tokens `c` earlier in the target but the one
    /// due there ([`repeat_candidates`]), averaged over the positions. It teaches the model not
    /// to say again what it already said; 0 leaves the cross-entropy alone.
    pub unlikelihood: f64,
}

/// The inverse token frequency (ITF) weights of Nakamura et al. (2019) for `targets`: a token
/// that occurs `c` times over all the targets weighs `c^−λ`, scaled so that the weights of all
/// target tokens average 1 (the loss keeps its scale). `λ = 0` gives 1 everywhere.
pub fn itf_weights(targets: &[&[u32]], lambda: f64) -> Vec<Vec<f32>> {
    let mut counts: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    for &t in targets.iter().flat_map(|t| t.iter()) {
        *counts.entry(t).or_default() += 1;
    }
    let raw = |t: &u32| (counts[t] as f64).powf(-lambda);
    let n: usize = targets.iter().map(|t| t.len()).sum();
    let mean = targets.iter().flat_map(|t| t.iter()).map(raw).sum::<f64>() / n.max(1) as f64;
    targets.iter().map(|t| t.iter().map(|x| (raw(x) / mean) as f32).collect()).collect()
}

/// The (position, token) pairs the unlikelihood loss pushes down for `target`, as flat indices
/// `t · vocab + c` into the target's `len × vocab` logits: at each position `t`, every distinct
/// token of `target[..t]` but `target[t]` (Welleck et al.'s "previous context" candidates,
/// restricted to the target: the prompt's words are the model's to repeat).
pub fn repeat_candidates(target: &[u32], vocab: usize) -> Vec<u32> {
    let mut seen: Vec<u32> = Vec::new();
    let mut out = Vec::new();
    for (t, &y) in target.iter().enumerate() {
        out.extend(seen.iter().filter(|&&c| c != y && (c as usize) < vocab).map(|&c| (t * vocab) as u32 + c));
        if !seen.contains(&y) {
            seen.push(y);
        }
    }
    out
}

fn check_target(tokens: &[u32], from: usize) -> Result<()> {
    if from == 0 || from >= tokens.len() {
        return Err(LlmError::Invalid(format!(
            "the target starts at token {from} of {}: a sample needs a prompt and a target",
            tokens.len()
        )));
    }
    Ok(())
}

/// Row-wise log-softmax from differentiable operations.
fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let z = x.broadcast_sub(&m)?;
    Ok(z.broadcast_sub(&z.exp()?.sum_keepdim(D::Minus1)?.log()?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlikelihood_candidates_are_the_earlier_target_tokens_but_the_due_one() {
        // Target "a b a c" over a vocabulary of 10: nothing before position 0; at 1, a; at 2 (a
        // is due), b only; at 3, a and b.
        assert_eq!(repeat_candidates(&[1, 2, 1, 3], 10), vec![10 + 1, 20 + 2, 30 + 1, 30 + 2]);
        assert_eq!(repeat_candidates(&[4, 4, 4], 10), Vec::<u32>::new(), "a token due again is not pushed down");
        assert_eq!(repeat_candidates(&[], 10), Vec::<u32>::new());
    }

    #[test]
    fn itf_weights_lower_the_common_tokens_and_average_one() {
        // Token 7 occurs 4 times, 1 and 2 once each: at λ = 1 the raw weights are 1/4 and 1, their
        // mean over the 6 tokens (4·0.25 + 2·1) / 6 = 0.5, so 7 weighs 0.5 and 1, 2 weigh 2.
        let (a, b) = ([7u32, 1, 7], [7u32, 7, 2]);
        let w = itf_weights(&[&a, &b], 1.0);
        assert_eq!(w, vec![vec![0.5, 2.0, 0.5], vec![0.5, 0.5, 2.0]]);
        let mean = w.iter().flatten().sum::<f32>() / 6.0;
        assert!((mean - 1.0).abs() < 1e-6);
        assert!(itf_weights(&[&a, &b], 0.0).iter().flatten().all(|&x| x == 1.0), "λ = 0 is plain cross-entropy");
        assert!(itf_weights(&[], 0.4).is_empty());
    }
}
