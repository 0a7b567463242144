//! The `emotion_tagger` stage: reads the user's text (and the last message of
//! the history as context), writes `user.emotions`.

use crate::error::NeuralError;
use crate::tagger::{EmotionTagger, TaggerInput};
use crate::text::{MINILM_DIR, TextEncoder};
use crate::train::TrainConfig;
use ecr_engine::{
    BoxError, BuildContext, ConfigIssue, EmotionDist, Field, Role, Stage, StageFactory, StageIo, Turn, Utterance,
};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// Configuration of the emotion tagger (`[stages.<id>.with]`). Relative paths
/// resolve against the recipe's directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmotionTaggerConfig {
    /// The MiniLM directory written by `models/fetch.sh`.
    pub model_dir: String,
    /// The trained tagger's checkpoint directory (written by `ecr train -r RECIPE --stage emotion`).
    pub checkpoint: String,
    /// Labels with probability <= threshold are set to 0 in what the stage
    /// writes and in the labels file (ECR keeps p > 0.1 and does not
    /// renormalise); 0 keeps the whole distribution.
    pub threshold: f64,
    /// The on-disk cache of MiniLM embeddings used by training, evaluation and labelling.
    pub cache_dir: String,
    /// Where `ecr train --stage emotion` writes the emotions of every seeker
    /// message of ReDial (`{"id", "emotions"}` per line), for the data layer.
    pub labels_file: String,
    /// Training hyper-parameters.
    pub train: TrainConfig,
}

impl Default for EmotionTaggerConfig {
    fn default() -> Self {
        EmotionTaggerConfig {
            model_dir: format!("../models/{MINILM_DIR}"),
            checkpoint: "../runs/ecr/emotion_tagger".into(),
            threshold: 0.1,
            cache_dir: "../.cache/embeddings".into(),
            labels_file: "../runs/ecr/emotions.jsonl".into(),
            train: TrainConfig::default(),
        }
    }
}

/// `dist` with the labels at or below `threshold` set to 0 (not renormalised).
pub fn apply_threshold(mut dist: EmotionDist, threshold: f32) -> EmotionDist {
    if threshold > 0.0 {
        dist.0.iter_mut().filter(|p| **p <= threshold).for_each(|p| *p = 0.0);
    }
    dist
}

/// The tagger's context for a turn: the last two history utterances, prefixed
/// by role like the annotation files.
pub fn context_of(history: &[Utterance]) -> Vec<String> {
    let start = history.len().saturating_sub(2);
    history[start..]
        .iter()
        .map(|u| {
            let who = match u.role {
                Role::Seeker => "SEEKER",
                Role::Recommender => "RECOMMENDER",
            };
            format!("{who}: {}", u.text)
        })
        .collect()
}

/// The MiniLM encoder in `dir`, shared by all stages of one engine.
pub fn shared_encoder(ctx: &BuildContext, dir: &Path) -> Result<Arc<TextEncoder>, BoxError> {
    let key = format!("text_encoder:{}", dir.display());
    let enc = ctx.shared(&key, || TextEncoder::load(dir).map(Arc::new).map_err(BoxError::from))?;
    Ok(Arc::clone(&enc))
}

/// The factory of the `emotion_tagger` stage.
pub struct EmotionTaggerFactory;

impl StageFactory for EmotionTaggerFactory {
    type Config = EmotionTaggerConfig;

    fn name(&self) -> &'static str {
        "emotion_tagger"
    }

    fn description(&self) -> &'static str {
        "the user's emotions: a distribution over ECR's nine labels (MiniLM + a trained head)"
    }

    fn io(&self, _config: &Self::Config) -> StageIo {
        StageIo::new([Field::UserText, Field::History], [Field::UserEmotions])
    }

    fn check(&self, config: &Self::Config, ctx: &BuildContext) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let dir = ctx.resolve(&config.model_dir);
        for f in ["config.json", "tokenizer.json", "model.safetensors"] {
            if !dir.join(f).is_file() {
                issues.push(ConfigIssue::new(
                    "model_dir",
                    format!("{} has no {f}: run models/fetch.sh, or fix the path", dir.display()),
                ));
                break;
            }
        }
        if !(0.0..1.0).contains(&config.threshold) {
            issues.push(ConfigIssue::new("threshold", format!("{} is not in [0, 1)", config.threshold)));
        }
        if let Err((key, message)) = config.train.validate() {
            issues.push(ConfigIssue::new(key, message));
        }
        issues
    }

    fn build(&self, config: Self::Config, ctx: &BuildContext) -> Result<Box<dyn Stage>, BoxError> {
        let encoder = shared_encoder(ctx, &ctx.resolve(&config.model_dir))?;
        let tagger = EmotionTagger::load(&ctx.resolve(&config.checkpoint), encoder)?;
        Ok(Box::new(EmotionTaggerStage { tagger, threshold: config.threshold as f32 }))
    }
}

/// The running stage.
pub struct EmotionTaggerStage {
    tagger: EmotionTagger,
    threshold: f32,
}

impl EmotionTaggerStage {
    /// A stage around a loaded tagger.
    pub fn new(tagger: EmotionTagger, threshold: f32) -> Self {
        EmotionTaggerStage { tagger, threshold }
    }
}

impl Stage for EmotionTaggerStage {
    fn run(&self, turn: &mut Turn) -> Result<(), BoxError> {
        let _span = tracing::debug_span!("emotion_tagger").entered();
        let input = TaggerInput { utterance: turn.user.text.clone(), context: context_of(&turn.history) };
        let dist = self
            .tagger
            .predict(&[input], None)?
            .pop()
            .ok_or_else(|| NeuralError::Invalid("the tagger returned no distribution".into()))?;
        turn.user.emotions = Some(apply_threshold(dist, self.threshold));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecr_engine::Emotion;

    #[test]
    fn threshold_drops_small_labels_without_renormalising() {
        let mut d = EmotionDist::default();
        d.set(Emotion::Like, 0.85);
        d.set(Emotion::Happy, 0.1);
        d.set(Emotion::Neutral, 0.05);
        let t = apply_threshold(d, 0.1);
        assert_eq!(t.get(Emotion::Like), 0.85);
        assert_eq!(t.get(Emotion::Happy), 0.0);
        assert_eq!(apply_threshold(d, 0.0), d);
    }

    #[test]
    fn context_is_the_last_two_utterances_with_roles() {
        let h = vec![
            Utterance::new(Role::Seeker, "a"),
            Utterance::new(Role::Recommender, "b"),
            Utterance::new(Role::Seeker, "c"),
        ];
        assert_eq!(context_of(&h), vec!["RECOMMENDER: b".to_string(), "SEEKER: c".to_string()]);
        assert!(context_of(&[]).is_empty());
    }

    #[test]
    fn config_rejects_unknown_keys_and_fills_defaults() {
        let c: EmotionTaggerConfig = toml::from_str("threshold = 0.2\n[train]\nepochs = 3").unwrap();
        assert_eq!(c.threshold, 0.2);
        assert_eq!(c.train.epochs, Some(3));
        assert_eq!(c.train.hidden, TrainConfig::default().hidden);
        assert!(toml::from_str::<EmotionTaggerConfig>("treshold = 0.2").is_err());
    }
}
