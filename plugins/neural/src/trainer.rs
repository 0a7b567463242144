//! The emotion tagger's side of the engine's training contract
//! ([`ecr_engine::Trainable`]): whether its checkpoint is up to date, training
//! it from the recipe's configuration, and evaluating it.
//!
//! Beside the checkpoint, `trained_from.json` records what it was trained
//! from: the training configuration, a fingerprint of the annotation file, and
//! the encoder. [`TaggerTrainer::status`] compares them with the recipe and
//! names what changed; [`refuse_other_config`] keeps the stage from loading a
//! checkpoint trained with another configuration.

use crate::cache::EmbeddingCache;
use crate::evaluate::evaluate_file;
use crate::stage::EmotionTaggerConfig;
use crate::tagger::{EmotionTagger, META_FILE, WEIGHTS_FILE};
use crate::text::TextEncoderKey;
use crate::train::{TrainConfig, train_tagger};
use ecr_data::{Annotation, load_annotations, paths::require_file};
use ecr_engine::{BoxError, BuildContext, EvalReport, Fingerprint, TrainContext, TrainReport, TrainStatus, Trainable};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file beside a checkpoint that says what it was trained from.
pub const TRAINED_FROM_FILE: &str = "trained_from.json";

/// What a checkpoint was trained from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainedFrom {
    /// The training configuration (`[stages.<id>.with.train]`, seed included).
    pub config: serde_json::Value,
    /// The annotation file trained on.
    pub annotations: String,
    /// Fingerprint of its content.
    pub annotations_fingerprint: String,
    /// The base encoder's directory and weights size.
    pub encoder: String,
}

impl TrainedFrom {
    fn read(dir: &Path) -> Option<TrainedFrom> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(TRAINED_FROM_FILE)).ok()?).ok()
    }
}

/// The keys whose values differ between two JSON objects, as `train.key` (a → b).
fn differing_keys(was: &serde_json::Value, now: &serde_json::Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (a, b) = (was.as_object().unwrap_or(&empty), now.as_object().unwrap_or(&empty));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let show = |v: Option<&serde_json::Value>| v.map_or("(unset)".to_string(), |v| v.to_string());
            format!("train.{k} ({} → {})", show(a.get(k)), show(b.get(k)))
        })
        .collect()
}

/// Refuse a checkpoint in `dir` trained with another configuration than
/// `config`, naming the keys that differ; a checkpoint without the record
/// (older) is accepted.
pub fn refuse_other_config(dir: &Path, config: &TrainConfig, stage: &str) -> Result<(), BoxError> {
    let Some(was) = TrainedFrom::read(dir) else { return Ok(()) };
    let now = serde_json::to_value(config)?;
    let diff = differing_keys(&was.config, &now);
    if diff.is_empty() {
        return Ok(());
    }
    Err(format!(
        "stage {stage:?}: the checkpoint in {} was trained with another configuration: {}; retrain it \
         (`ecr train -r RECIPE --stage {stage}`) or restore the recipe's values",
        dir.display(),
        diff.join(", ")
    )
    .into())
}

/// Trains and evaluates the emotion tagger of one recipe stage.
pub struct TaggerTrainer {
    config: EmotionTaggerConfig,
    ctx: BuildContext,
}

impl TaggerTrainer {
    /// The trainer of the stage configured by `config` in `ctx`.
    pub fn new(config: EmotionTaggerConfig, ctx: &BuildContext) -> Self {
        TaggerTrainer { config, ctx: ctx.clone() }
    }

    fn checkpoint(&self) -> PathBuf {
        self.config.checkpoint_dir(&self.ctx)
    }

    fn annotations_path(&self) -> Result<PathBuf, BoxError> {
        Ok(match &self.config.train.annotations {
            Some(p) => self.ctx.resolve(p),
            None => require_file(&self.ctx.data_dir()?, "emotion/annotations_train.jsonl")?,
        })
    }

    fn test_path(&self, cx: &TrainContext<'_>) -> Result<PathBuf, BoxError> {
        Ok(match (&cx.options.annotations, cx.options.split) {
            (Some(p), _) => p.clone(),
            (None, ecr_engine::EvalSplit::Test) => {
                require_file(&self.ctx.data_dir()?, "emotion/annotations_test.jsonl")?
            }
            (None, split) => {
                return Err(format!(
                    "the emotion tagger is evaluated on annotation files, not ReDial splits: --split {} needs \
                     --annotations <file>, or --stage <a recommender or generator stage>",
                    split.name()
                )
                .into());
            }
        })
    }

    fn encoder_identity(&self) -> String {
        // Canonical: the same encoder reached through another relative path is the same encoder.
        let dir = self.ctx.resolve(&self.config.model_dir);
        let dir = dir.canonicalize().unwrap_or(dir);
        let size = std::fs::metadata(dir.join("model.safetensors")).map_or(0, |m| m.len());
        format!("{}:{size}", dir.display())
    }

    /// What training now would be trained from.
    fn current(&self, config: &TrainConfig) -> Result<TrainedFrom, BoxError> {
        let annotations = self.annotations_path()?;
        let annotations = annotations.canonicalize().unwrap_or(annotations);
        Ok(TrainedFrom {
            config: serde_json::to_value(config)?,
            annotations_fingerprint: Fingerprint::new().file(&annotations)?.hex(),
            annotations: annotations.display().to_string(),
            encoder: self.encoder_identity(),
        })
    }

    fn load(path: &Path) -> Result<Vec<Annotation>, BoxError> {
        Ok(load_annotations(path).map_err(|e| format!("loading annotations {}: {e}", path.display()))?)
    }

    fn write_json(path: &Path, value: &impl Serialize) -> Result<(), BoxError> {
        std::fs::write(path, serde_json::to_string_pretty(value)?)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(())
    }

    /// Evaluate the checkpoint on the test annotations (or `cx`'s file), next to the baselines.
    fn eval(&self, cx: &TrainContext<'_>, tagger: &EmotionTagger) -> Result<EvalReport, BoxError> {
        let encoder = self.ctx.resources().get(&TextEncoderKey(self.ctx.resolve(&self.config.model_dir)))?;
        let test_path = self.test_path(cx)?;
        let test = Self::load(&test_path)?;
        let train = Self::load(&self.annotations_path()?)?;
        let cache_dir = self.ctx.resolve(&self.config.cache_dir);
        let mut eval = evaluate_file(
            tagger,
            &encoder,
            Some(&cache_dir),
            &train,
            &test,
            self.config.threshold as f32,
            cx.options.progress,
        )?;
        eval.file = test_path.display().to_string();
        let stem = test_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
        Self::write_json(&self.checkpoint().join(format!("eval_{stem}.json")), &eval)?;
        Ok(EvalReport { text: eval.table(), metrics: serde_json::to_value(&eval)? })
    }
}

impl Trainable for TaggerTrainer {
    fn status(&self, _upstream: &str) -> Result<TrainStatus, BoxError> {
        // The tagger learns from the annotation files, not from upstream stages.
        let dir = self.checkpoint();
        if !dir.join(META_FILE).is_file() || !dir.join(WEIGHTS_FILE).is_file() {
            return Ok(TrainStatus::Missing(format!("no checkpoint in {}", dir.display())));
        }
        let Some(was) = TrainedFrom::read(&dir) else {
            return Ok(TrainStatus::Stale(format!("{} has no {TRAINED_FROM_FILE}", dir.display())));
        };
        let now = self.current(&self.config.train)?;
        let mut changed = differing_keys(&was.config, &now.config);
        if was.annotations_fingerprint != now.annotations_fingerprint || was.annotations != now.annotations {
            changed.push(format!("the annotations {} changed", now.annotations));
        }
        if was.encoder != now.encoder {
            changed.push(format!("the encoder changed ({} → {})", was.encoder, now.encoder));
        }
        Ok(if changed.is_empty() {
            TrainStatus::UpToDate(format!("checkpoint {}", dir.display()))
        } else {
            TrainStatus::Stale(changed.join("; "))
        })
    }

    fn fingerprint(&self) -> Option<String> {
        let dir = self.checkpoint();
        let meta = std::fs::read_to_string(dir.join(META_FILE)).ok()?;
        let from = std::fs::read_to_string(dir.join(TRAINED_FROM_FILE)).unwrap_or_default();
        Some(Fingerprint::new().str(&meta).str(&from).hex())
    }

    fn train(&self, cx: &TrainContext<'_>) -> Result<TrainReport, BoxError> {
        let mut config = self.config.train.clone();
        if let Some(seed) = cx.options.seed {
            config.seed = seed;
        }
        crate::device_of(&self.ctx)?;
        let encoder = self.ctx.resources().get(&TextEncoderKey(self.ctx.resolve(&self.config.model_dir)))?;
        let mut cache = EmbeddingCache::for_encoder(&self.ctx.resolve(&self.config.cache_dir), &encoder)?;
        let train_path = self.annotations_path()?;
        let annotations = Self::load(&train_path)?;
        let checkpoint = self.checkpoint();
        let (tagger, report) =
            train_tagger(encoder, Some(&mut cache), &annotations, &config, &checkpoint, cx.options.progress)?;
        Self::write_json(&checkpoint.join("train_report.json"), &report)?;
        let eval = self.eval(cx, &tagger)?;
        // Written last: a checkpoint whose record is missing is never taken as up to date.
        Self::write_json(&checkpoint.join(TRAINED_FROM_FILE), &self.current(&config)?)?;
        let holdout = report.holdout.as_ref().map_or(0.0, |m| m.recall_2);
        let test = eval.metrics.get("recall@2").and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN);
        Ok(TrainReport {
            summary: format!(
                "emotion tagger on {} annotations ({} held out), best epoch {}: held-out Recall@2 {holdout:.4}, \
                 test Recall@2 {test:.4}; checkpoint {}",
                report.n_train,
                report.n_holdout,
                report.best_epoch,
                checkpoint.display()
            ),
            metrics: serde_json::json!({ "train": report, "test": eval.metrics }),
        })
    }

    fn evaluate(&self, cx: &TrainContext<'_>) -> Result<EvalReport, BoxError> {
        let encoder = self.ctx.resources().get(&TextEncoderKey(self.ctx.resolve(&self.config.model_dir)))?;
        let tagger = EmotionTagger::load(&self.checkpoint(), encoder)?;
        self.eval(cx, &tagger)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_keys_name_old_and_new_values() {
        let a = serde_json::json!({ "hidden": 512, "lr": 0.001, "seed": 1 });
        let b = serde_json::json!({ "hidden": 256, "lr": 0.001 });
        assert_eq!(differing_keys(&a, &b), ["train.hidden (512 → 256)", "train.seed (1 → (unset))"]);
        assert!(differing_keys(&a, &a).is_empty());
    }
}
