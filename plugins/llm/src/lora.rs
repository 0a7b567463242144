//! LoRA adapters (Hu et al., 2021) for the Llama projections: `W' = W + (alpha / rank) · B·A`
//! with `A: rank × in` and `B: out × rank`.
//!
//! An [`Adapter`] holds the pairs of the configured [`Target`]s in every layer. It is trained
//! through [`crate::dense::DenseLlama`] (applied beside the frozen weights, with dropout on its
//! input) and, for generation, merged into the quantized weights when the fast decoder loads
//! ([`crate::Llm::load_with_adapter`]), so that decoding with an adapter costs what decoding
//! without one does. Its file is safetensors whose metadata names the base model (a hash of the
//! GGUF file and its hyper-parameters) and the adapter's shape; [`Adapter::load`] refuses a file
//! made for another base model, rank or set of targets.

use crate::gguf::{GgufFile, LlamaConfig};
use crate::{LlmError, Result};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A projection an adapter can target, named as Hugging Face PEFT names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Target {
    /// Attention query (`attn_q` in GGUF).
    #[serde(rename = "q_proj")]
    Q,
    /// Attention key (`attn_k`).
    #[serde(rename = "k_proj")]
    K,
    /// Attention value (`attn_v`).
    #[serde(rename = "v_proj")]
    V,
    /// Attention output (`attn_output`).
    #[serde(rename = "o_proj")]
    O,
    /// MLP gate (`ffn_gate`).
    #[serde(rename = "gate_proj")]
    Gate,
    /// MLP up (`ffn_up`).
    #[serde(rename = "up_proj")]
    Up,
    /// MLP down (`ffn_down`).
    #[serde(rename = "down_proj")]
    Down,
}

impl Target {
    /// Every target, in layer order.
    pub const ALL: [Target; 7] = [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];

    /// The PEFT name (`q_proj`).
    pub fn name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// The GGUF tensor of layer `l` (`blk.3.attn_q.weight`).
    pub fn gguf_name(self, l: usize) -> String {
        let t = match self {
            Target::Q => "attn_q",
            Target::K => "attn_k",
            Target::V => "attn_v",
            Target::O => "attn_output",
            Target::Gate => "ffn_gate",
            Target::Up => "ffn_up",
            Target::Down => "ffn_down",
        };
        format!("blk.{l}.{t}.weight")
    }

    /// `(out, in)` of the projection in a model of `c`.
    pub fn shape(self, c: &LlamaConfig) -> (usize, usize) {
        let kv = c.n_kv_head * c.head_dim();
        match self {
            Target::Q | Target::O => (c.d_model, c.d_model),
            Target::K | Target::V => (kv, c.d_model),
            Target::Gate | Target::Up => (c.d_ff, c.d_model),
            Target::Down => (c.d_model, c.d_ff),
        }
    }
}

/// The shape of an adapter (`[stages.<id>.with.finetune.lora]` in a recipe).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    /// Rank `r` of `B·A`.
    pub rank: usize,
    /// Scale numerator: the update is `alpha / rank · B·A`.
    pub alpha: f64,
    /// Dropout on the adapter's input while training (0 ≤ p < 1).
    pub dropout: f64,
    /// The projections adapted in every adapted layer.
    pub targets: Vec<Target>,
    /// Adapt the top `layers` layers only (0: all). Training then runs the layers below once per
    /// sample, frozen, in the fast decoder, and backpropagates through the top ones only: the
    /// cost of a training step falls in proportion.
    pub layers: usize,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig { rank: 8, alpha: 16.0, dropout: 0.05, targets: Target::ALL.to_vec(), layers: 0 }
    }
}

impl LoraConfig {
    /// Check value ranges; the error names the key under `prefix` (e.g. `finetune.lora.`).
    pub fn validate(&self, prefix: &str) -> std::result::Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((format!("{prefix}{k}"), m.to_string()));
        if self.rank == 0 {
            return bad("rank", "must be at least 1");
        }
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            return bad("alpha", "must be a positive number");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout", "must be in [0, 1)");
        }
        if self.targets.is_empty() {
            return bad(
                "targets",
                "name at least one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj",
            );
        }
        let mut seen = self.targets.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != self.targets.len() {
            return bad("targets", "names a projection twice");
        }
        Ok(())
    }

    /// The first adapted layer of a model of `n_layer` layers.
    pub fn first_layer(&self, n_layer: usize) -> usize {
        if self.layers == 0 { 0 } else { n_layer.saturating_sub(self.layers) }
    }

    /// The update's scale, `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// What an adapter is trained on top of: a hash of the GGUF file and its hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseModel {
    /// Hex sha256 of the whole GGUF file.
    pub sha256: String,
    /// The file's name (for messages).
    pub file: String,
    /// Layers, widths and heads: an adapter's tensors only fit this shape.
    pub config: LlamaConfigKey,
}

/// The shape-defining hyper-parameters of a model (what an adapter's tensors depend on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlamaConfigKey {
    /// Transformer blocks.
    pub n_layer: usize,
    /// Hidden size.
    pub d_model: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_kv_head: usize,
    /// Feed-forward width.
    pub d_ff: usize,
}

impl BaseModel {
    /// The identity of the opened file (hashes its bytes: ~0.3 s for 100 MB).
    pub fn of(g: &GgufFile) -> Result<Self> {
        let c = g.llama_config()?;
        Ok(BaseModel {
            sha256: format!("{:x}", Sha256::digest(g.bytes())),
            file: g.path().file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
            config: LlamaConfigKey {
                n_layer: c.n_layer,
                d_model: c.d_model,
                n_head: c.n_head,
                n_kv_head: c.n_kv_head,
                d_ff: c.d_ff,
            },
        })
    }
}

/// The metadata keys of an adapter file.
const META_BASE: &str = "ecr.base_model";
const META_LORA: &str = "ecr.lora";
const META_INFO: &str = "ecr.info";

/// One adapted projection: `A: rank × in`, `B: out × rank`.
#[derive(Debug, Clone)]
pub struct Pair {
    /// Down-projection (Kaiming-uniform at initialisation).
    pub a: Tensor,
    /// Up-projection (zero at initialisation, so a fresh adapter changes nothing).
    pub b: Tensor,
}

/// A LoRA adapter: pairs for the configured targets of every layer.
#[derive(Debug, Clone)]
pub struct Adapter {
    config: LoraConfig,
    base: BaseModel,
    /// Per layer, per target.
    pairs: Vec<BTreeMap<Target, Pair>>,
}

/// The tensor name of a pair's half in the file (`blk.3.q_proj.lora_a`).
fn tensor_name(l: usize, t: Target, half: &str) -> String {
    format!("blk.{l}.{}.lora_{half}", t.name())
}

/// SplitMix64: the seeded stream of adapter initialisation and training dropout.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A stream seeded by `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

impl Adapter {
    /// A fresh adapter for `base`: `A` Kaiming-uniform (bound `1/√in`, as PEFT), `B` zero, drawn
    /// from `seed`. Returns the trainable variables too, named as in the file.
    pub fn init(config: &LoraConfig, base: &BaseModel, seed: u64) -> Result<(Adapter, Vec<(String, Var)>)> {
        config.validate("lora.").map_err(|(k, m)| LlmError::Invalid(format!("{k}: {m}")))?;
        let c = lcfg(base.config);
        if config.layers > c.n_layer {
            return Err(LlmError::Invalid(format!(
                "lora.layers: {} layers asked, the model has {}: use at most {} (0 means all)",
                config.layers, c.n_layer, c.n_layer
            )));
        }
        let mut rng = SplitMix::new(seed);
        let mut vars = Vec::new();
        let first = config.first_layer(c.n_layer);
        let mut pairs = vec![BTreeMap::new(); first];
        for l in first..c.n_layer {
            let mut layer = BTreeMap::new();
            for &t in &config.targets {
                let (out, inp) = t.shape(&c);
                let bound = 1.0 / (inp as f32).sqrt();
                let a: Vec<f32> = (0..config.rank * inp).map(|_| (rng.next_f32() * 2.0 - 1.0) * bound).collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (config.rank, inp), &Device::Cpu)?)?;
                let b = Var::zeros((out, config.rank), DType::F32, &Device::Cpu)?;
                layer.insert(t, Pair { a: a.as_tensor().clone(), b: b.as_tensor().clone() });
                vars.push((tensor_name(l, t, "a"), a));
                vars.push((tensor_name(l, t, "b"), b));
            }
            pairs.push(layer);
        }
        Ok((Adapter { config: config.clone(), base: base.clone(), pairs }, vars))
    }

    /// The adapter's shape.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// The base model it was made for.
    pub fn base(&self) -> &BaseModel {
        &self.base
    }

    /// Trainable parameters.
    pub fn params(&self) -> usize {
        self.pairs.iter().flat_map(BTreeMap::values).map(|p| p.a.elem_count() + p.b.elem_count()).sum()
    }

    /// The pair of `target` in layer `l`, if adapted.
    pub fn pair(&self, l: usize, target: Target) -> Option<&Pair> {
        self.pairs.get(l).and_then(|m| m.get(&target))
    }

    /// The update `alpha / rank · B·A` (`out × in`) of `target` in layer `l`, if adapted.
    pub fn delta(&self, l: usize, target: Target) -> Result<Option<Tensor>> {
        let Some(p) = self.pair(l, target) else { return Ok(None) };
        Ok(Some((p.b.matmul(&p.a)? * self.config.scale())?))
    }

    /// `x · (alpha / rank · B·A)ᵀ` for rows `x` (`… × in`), the adapter's share of the projection's
    /// output; `dropout` (probability and a mask stream) drops input features while training.
    pub fn apply(
        &self,
        l: usize,
        target: Target,
        x: &Tensor,
        dropout: Option<(f64, &mut SplitMix)>,
    ) -> Result<Option<Tensor>> {
        let Some(p) = self.pair(l, target) else { return Ok(None) };
        let x = match dropout {
            Some((prob, rng)) if prob > 0.0 => {
                let keep = 1.0 / (1.0 - prob) as f32;
                let mask: Vec<f32> =
                    (0..x.elem_count()).map(|_| if rng.next_f32() < prob as f32 { 0.0 } else { keep }).collect();
                (x * Tensor::from_vec(mask, x.shape(), x.device())?)?
            }
            _ => x.clone(),
        };
        let h = x.broadcast_matmul(&p.a.t()?)?;
        Ok(Some((h.broadcast_matmul(&p.b.t()?)? * self.config.scale())?))
    }

    /// Write the adapter to `path` (safetensors; metadata: base model, shape, and `info` for
    /// people, e.g. training figures). Written to a temporary file first, then renamed.
    pub fn save(&self, path: &Path, info: &serde_json::Value) -> Result<()> {
        let io = |e: std::io::Error| LlmError::Io { path: path.to_path_buf(), source: e };
        let mut tensors: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
        for (l, layer) in self.pairs.iter().enumerate() {
            for (&t, p) in layer {
                for (half, x) in [("a", &p.a), ("b", &p.b)] {
                    let v: Vec<f32> = x.flatten_all()?.to_vec1()?;
                    tensors.push((
                        tensor_name(l, t, half),
                        v.iter().flat_map(|f| f.to_le_bytes()).collect(),
                        x.dims().to_vec(),
                    ));
                }
            }
        }
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(n, b, s)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| LlmError::Invalid(format!("adapter tensor {n}: {e}")))
            })
            .collect::<Result<_>>()?;
        let meta = HashMap::from([
            (META_BASE.to_string(), to_json(&self.base)?),
            (META_LORA.to_string(), to_json(&self.config)?),
            (META_INFO.to_string(), info.to_string()),
        ]);
        let bytes = safetensors::serialize(views, Some(meta))
            .map_err(|e| LlmError::Invalid(format!("{}: cannot serialise the adapter: {e}", path.display())))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("safetensors.tmp");
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Read an adapter file made for `base`, with the shape `expected` when given (a recipe's
    /// configuration; dropout is a training setting and not compared). The error says what
    /// differs and what to do.
    pub fn load(path: &Path, base: &BaseModel, expected: Option<&LoraConfig>) -> Result<Adapter> {
        let bytes = std::fs::read(path).map_err(|e| LlmError::Io { path: path.to_path_buf(), source: e })?;
        let bad = |msg: String| LlmError::Model { path: path.to_path_buf(), msg };
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a safetensors adapter: {e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |k: &str| meta.get(k).ok_or_else(|| bad(format!("metadata `{k}` is missing: not an ecr adapter")));
        let found_base: BaseModel =
            serde_json::from_str(field(META_BASE)?).map_err(|e| bad(format!("metadata `{META_BASE}`: {e}")))?;
        let config: LoraConfig =
            serde_json::from_str(field(META_LORA)?).map_err(|e| bad(format!("metadata `{META_LORA}`: {e}")))?;
        let retrain = "retrain it (`ecr train -r RECIPE --stage generate`) or point the recipe at the right files";
        if found_base.config != base.config {
            return Err(bad(format!(
                "this adapter was trained for another model shape ({:?}, file {}), not {:?} ({}): {retrain}",
                found_base.config, found_base.file, base.config, base.file
            )));
        }
        if found_base.sha256 != base.sha256 {
            return Err(bad(format!(
                "this adapter was trained on another base model ({}, sha256 {}…), not {} (sha256 {}…): {retrain}",
                found_base.file,
                &found_base.sha256[..12.min(found_base.sha256.len())],
                base.file,
                &base.sha256[..12.min(base.sha256.len())]
            )));
        }
        if let Some(want) = expected {
            let (mut a, mut b) = (config.targets.clone(), want.targets.clone());
            a.sort();
            b.sort();
            if config.rank != want.rank || config.alpha != want.alpha || a != b || config.layers != want.layers {
                return Err(bad(format!(
                    "this adapter has rank {}, alpha {}, targets {:?}, layers {}; the recipe asks for rank {}, alpha {}, targets {:?}, layers {}: {retrain}",
                    config.rank,
                    config.alpha,
                    config.targets,
                    config.layers,
                    want.rank,
                    want.alpha,
                    want.targets,
                    want.layers
                )));
            }
        }
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("{e}")))?;
        let c = lcfg(base.config);
        let first = config.first_layer(c.n_layer);
        let mut pairs = vec![BTreeMap::new(); first];
        for l in first..c.n_layer {
            let mut layer = BTreeMap::new();
            for &t in &config.targets {
                let (out, inp) = t.shape(&c);
                let read = |half: &str, shape: (usize, usize)| -> Result<Tensor> {
                    let name = tensor_name(l, t, half);
                    let v = st.tensor(&name).map_err(|_| bad(format!("tensor `{name}` is missing")))?;
                    if v.dtype() != safetensors::Dtype::F32 || v.shape() != [shape.0, shape.1] {
                        return Err(bad(format!(
                            "tensor `{name}` is {:?} {:?}, expected F32 [{}, {}]",
                            v.dtype(),
                            v.shape(),
                            shape.0,
                            shape.1
                        )));
                    }
                    let f: Vec<f32> =
                        v.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                    Ok(Tensor::from_vec(f, shape, &Device::Cpu)?)
                };
                layer.insert(t, Pair { a: read("a", (config.rank, inp))?, b: read("b", (out, config.rank))? });
            }
            pairs.push(layer);
        }
        Ok(Adapter { config, base: found_base, pairs })
    }

    /// The `info` object stored in an adapter file (training figures), without loading its tensors.
    pub fn read_info(path: &Path) -> Option<serde_json::Value> {
        let bytes = std::fs::read(path).ok()?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
        serde_json::from_str(header.metadata().as_ref()?.get(META_INFO)?).ok()
    }
}

/// A config with the shape of `k` (the other fields are not used by adapters).
fn lcfg(k: LlamaConfigKey) -> LlamaConfig {
    LlamaConfig {
        n_layer: k.n_layer,
        d_model: k.d_model,
        n_head: k.n_head,
        n_kv_head: k.n_kv_head,
        d_ff: k.d_ff,
        vocab: 0,
        context: 0,
        rope_theta: 0.0,
        rms_eps: 0.0,
    }
}

/// `v` as a JSON string for the adapter's metadata.
fn to_json(v: &impl Serialize) -> Result<String> {
    serde_json::to_string(v).map_err(|e| LlmError::Invalid(format!("adapter metadata: {e}")))
}
