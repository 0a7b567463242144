//! Checkpoints of [`VarMap`] models: the variables in safetensors
//! (`model.safetensors`) and what they were trained for in a metadata JSON
//! (`meta.json`): the model kind, a hash of the configuration that shapes
//! the model, hashes of its vocabularies (entity ids, item set, labels), the
//! identity of the encoder that produced its inputs, and anything else that
//! must match. [`load`] refuses a checkpoint whose metadata or variables do
//! not match what the caller expects, with an error naming the mismatch.

use crate::error::{NeuralError, Result};
use crate::fit::named_vars;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The weights file inside a checkpoint directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The metadata file inside a checkpoint directory.
pub const META_FILE: &str = "meta.json";

/// What a checkpoint was trained for. Every field except `info` must match
/// on load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// The model kind (e.g. `recommender`).
    pub kind: String,
    /// Hex sha256 of the configuration that shapes the model ([`hash_json`]).
    pub config_hash: String,
    /// Vocabulary name → hash ([`hash_json`] of the vocabulary), e.g. `entities`, `items`.
    #[serde(default)]
    pub vocabularies: BTreeMap<String, String>,
    /// The encoder whose outputs the model reads (its id), if any.
    #[serde(default)]
    pub encoder: Option<String>,
    /// Other facts that must match (e.g. the branches the model has).
    #[serde(default)]
    pub requires: BTreeMap<String, serde_json::Value>,
    /// Facts recorded for people (the configuration, training figures); not compared.
    #[serde(default)]
    pub info: serde_json::Value,
}

impl CheckpointMeta {
    /// Metadata of a model `kind` whose shaping configuration is `config`.
    pub fn new(kind: &str, config: &impl Serialize) -> Result<Self> {
        Ok(CheckpointMeta {
            kind: kind.to_string(),
            config_hash: hash_json(config)?,
            vocabularies: BTreeMap::new(),
            encoder: None,
            requires: BTreeMap::new(),
            info: serde_json::Value::Null,
        })
    }

    /// Add a vocabulary (its hash is stored).
    pub fn vocabulary(mut self, name: &str, vocab: &impl Serialize) -> Result<Self> {
        self.vocabularies.insert(name.to_string(), hash_json(vocab)?);
        Ok(self)
    }

    /// Set the encoder identity.
    pub fn encoder(mut self, id: Option<&str>) -> Self {
        self.encoder = id.map(str::to_string);
        self
    }

    /// Add a fact that must match.
    pub fn require(mut self, key: &str, value: impl Serialize) -> Result<Self> {
        let v = serde_json::to_value(value).map_err(|e| NeuralError::Invalid(format!("checkpoint fact {key}: {e}")))?;
        self.requires.insert(key.to_string(), v);
        Ok(self)
    }

    /// The first difference between this (found) and `expected`, as
    /// `(what, found, expected)`; `None` when they match.
    pub fn mismatch(&self, expected: &CheckpointMeta) -> Option<(String, String, String)> {
        let s = |v: &dyn std::fmt::Debug| format!("{v:?}");
        if self.kind != expected.kind {
            return Some(("model kind".into(), s(&self.kind), s(&expected.kind)));
        }
        if self.config_hash != expected.config_hash {
            return Some(("model configuration (hash)".into(), s(&self.config_hash), s(&expected.config_hash)));
        }
        for (k, v) in &expected.vocabularies {
            let found = self.vocabularies.get(k);
            if found != Some(v) {
                return Some((format!("vocabulary {k} (hash)"), s(&found), s(v)));
            }
        }
        if self.encoder != expected.encoder {
            return Some(("encoder".into(), s(&self.encoder), s(&expected.encoder)));
        }
        for (k, v) in &expected.requires {
            let found = self.requires.get(k);
            if found != Some(v) {
                return Some((k.clone(), found.map_or("nothing".into(), |f| f.to_string()), v.to_string()));
            }
        }
        None
    }
}

/// Hex sha256 of the canonical JSON of `value` (struct fields in declaration
/// order, map keys sorted when the map is ordered).
pub fn hash_json(value: &impl Serialize) -> Result<String> {
    let bytes = serde_json::to_vec(value).map_err(|e| NeuralError::Invalid(format!("cannot hash a value: {e}")))?;
    Ok(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
}

/// Save the variables of `varmap` and `meta` into the directory `dir` (created).
pub fn save(dir: &Path, varmap: &VarMap, meta: &CheckpointMeta) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| NeuralError::io(dir, e))?;
    let weights = dir.join(WEIGHTS_FILE);
    let tensors: HashMap<String, Tensor> =
        named_vars(varmap).into_iter().map(|(k, v)| (k, v.as_tensor().clone())).collect();
    candle_core::safetensors::save(&tensors, &weights)
        .map_err(|e| NeuralError::bad_file(&weights, format!("cannot write the checkpoint: {e}")))?;
    let meta_path = dir.join(META_FILE);
    let text = serde_json::to_string_pretty(meta).map_err(|e| NeuralError::Invalid(e.to_string()))?;
    std::fs::write(&meta_path, text).map_err(|e| NeuralError::io(&meta_path, e))
}

/// Read the metadata of the checkpoint in `dir`.
pub fn read_meta(dir: &Path) -> Result<CheckpointMeta> {
    let path = dir.join(META_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| NeuralError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| NeuralError::bad_file(&path, format!("not checkpoint metadata: {e}")))
}

/// Whether `dir` holds a checkpoint (both files).
pub fn exists(dir: &Path) -> bool {
    dir.join(WEIGHTS_FILE).is_file() && dir.join(META_FILE).is_file()
}

/// Why the checkpoint in `dir` cannot be used for `expected`, or `None` if it can
/// (missing files count as a reason).
pub fn stale_reason(dir: &Path, expected: &CheckpointMeta) -> Option<String> {
    if !exists(dir) {
        return Some(format!("no checkpoint in {}", dir.display()));
    }
    match read_meta(dir) {
        Err(e) => Some(e.to_string()),
        Ok(found) => found.mismatch(expected).map(|(what, f, e)| format!("{what} is {f}, the recipe gives {e}")),
    }
}

/// Load the checkpoint in `dir` into the (already created) variables of
/// `varmap`, after checking its metadata against `expected`. Every variable
/// must be in the file with the same shape, and the file must hold nothing
/// else. Returns the checkpoint's metadata (with its `info`).
pub fn load(dir: &Path, varmap: &VarMap, expected: &CheckpointMeta, device: &Device) -> Result<CheckpointMeta> {
    let refuse = |m: String| NeuralError::bad_file(dir, format!("{m}: retrain it (ecr train -r RECIPE)"));
    if !exists(dir) {
        return Err(refuse(format!("no checkpoint here ({WEIGHTS_FILE} and {META_FILE} expected)")));
    }
    let found = read_meta(dir)?;
    if let Some((what, f, e)) = found.mismatch(expected) {
        return Err(refuse(format!(
            "this checkpoint does not match the recipe: its {what} is {f}, the recipe gives {e}"
        )));
    }
    let weights: PathBuf = dir.join(WEIGHTS_FILE);
    let mut tensors = candle_core::safetensors::load(&weights, device)
        .map_err(|e| NeuralError::bad_file(&weights, format!("not a safetensors checkpoint: {e}")))?;
    for (name, var) in named_vars(varmap) {
        let t = tensors.remove(&name).ok_or_else(|| refuse(format!("variable {name} is missing")))?;
        if t.dims() != var.dims() {
            return Err(refuse(format!("variable {name} has shape {:?}, the model needs {:?}", t.dims(), var.dims())));
        }
        var.set(&t.to_dtype(DType::F32)?)?;
    }
    if let Some(extra) = tensors.keys().min() {
        return Err(refuse(format!("variable {extra} is not part of this model")));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fit::Params;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ecr-ckpt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn model(seed: u64, cols: usize) -> (VarMap, Tensor) {
        let vm = VarMap::new();
        let t = Params::new(&vm, &Device::Cpu, seed).uniform("enc.w", &[2, cols], 1.0).unwrap();
        (vm, t)
    }

    #[test]
    fn round_trip_and_refusals_name_the_mismatch() {
        let dir = tmp("rt");
        let meta = CheckpointMeta::new("rec", &serde_json::json!({"dim": 3}))
            .unwrap()
            .vocabulary("items", &vec![1u32, 2, 3])
            .unwrap()
            .encoder(Some("minilm@abc"))
            .require("global", true)
            .unwrap();
        let (vm, t) = model(1, 3);
        save(&dir, &vm, &meta).unwrap();
        let (vm2, t2) = model(2, 3);
        assert_ne!(t.to_vec2::<f32>().unwrap(), t2.to_vec2::<f32>().unwrap());
        load(&dir, &vm2, &meta, &Device::Cpu).unwrap();
        assert_eq!(t.to_vec2::<f32>().unwrap(), vm2.all_vars()[0].as_tensor().to_vec2::<f32>().unwrap());
        assert!(stale_reason(&dir, &meta).is_none());

        let other = meta.clone().require("global", false).unwrap();
        let e = load(&dir, &vm2, &other, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("global is true, the recipe gives false") && e.contains("retrain"), "{e}");
        let items = meta.clone().vocabulary("items", &vec![1u32]).unwrap();
        assert!(load(&dir, &vm2, &items, &Device::Cpu).unwrap_err().to_string().contains("vocabulary items"));
        let enc = meta.clone().encoder(None);
        assert!(stale_reason(&dir, &enc).unwrap().contains("encoder"));
        let (vm3, _) = model(1, 4);
        let e = load(&dir, &vm3, &meta, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("enc.w has shape [2, 3]"), "{e}");
        assert!(stale_reason(&tmp("none"), &meta).unwrap().contains("no checkpoint"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
