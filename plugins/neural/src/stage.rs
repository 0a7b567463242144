//! The `emotion_tagger` stage: reads the user's text (and the last two
//! history utterances as context), writes `user.emotions`. It is trainable:
//! [`crate::trainer::TaggerTrainer`] trains the checkpoint it loads.

use crate::cache::EmbeddingCache;
use crate::error::NeuralError;
use crate::tagger::{EmotionTagger, TaggerInput};
use crate::text::{MINILM_DIR, TextEncoderKey};
use crate::train::TrainConfig;
use ecr_data::keys::{MovieTitles, MovieTitlesKey};
use ecr_engine::{
    BoxError, BuildContext, ConfigIssue, EmotionDist, Field, Role, Stage, StageFactory, StageIo, Trainable, Turn,
    TurnContext, Utterance,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Configuration of the emotion tagger (`[stages.<id>.with]`). Relative paths
/// resolve against the recipe file that wrote them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmotionTaggerConfig {
    /// The MiniLM directory written by `models/fetch.sh`.
    pub model_dir: String,
    /// The trained tagger's checkpoint directory (written by `ecr train`);
    /// default `runs/<recipe>/<stage id>/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// Labels with probability <= threshold are set to 0 in what the stage
    /// writes (ECR keeps p > 0.1 and does not renormalise); 0 keeps the whole
    /// distribution.
    pub threshold: f64,
    /// The on-disk cache of MiniLM embeddings used by training and evaluation.
    pub cache_dir: String,
    /// Training hyper-parameters.
    pub train: TrainConfig,
}

impl Default for EmotionTaggerConfig {
    fn default() -> Self {
        EmotionTaggerConfig {
            model_dir: format!("../models/{MINILM_DIR}"),
            checkpoint: None,
            threshold: 0.1,
            cache_dir: "../.cache/embeddings".into(),
            train: TrainConfig::default(),
        }
    }
}

impl EmotionTaggerConfig {
    /// The checkpoint directory in `ctx`.
    pub fn checkpoint_dir(&self, ctx: &BuildContext) -> PathBuf {
        ctx.resolve_or_stage_dir(self.checkpoint.as_deref(), "")
    }
}

/// `dist` with the labels at or below `threshold` set to 0 (not renormalised).
pub fn apply_threshold(mut dist: EmotionDist, threshold: f32) -> EmotionDist {
    if threshold > 0.0 {
        dist.0.iter_mut().filter(|p| **p <= threshold).for_each(|p| *p = 0.0);
    }
    dist
}

/// A line of context as the annotation files write it: `SEEKER: text`.
pub fn speaker_line(role: Role, text: &str) -> String {
    let who = match role {
        Role::Seeker => "SEEKER",
        Role::Recommender => "RECOMMENDER",
    };
    format!("{who}: {text}")
}

/// What the tagger reads for the user's turn after `history`: the utterance
/// and the last two history utterances, prefixed by role like the annotation
/// files, with movies written `@<id>` replaced by their titles. The live stage
/// and every replay over ReDial use this one function.
pub fn tagger_input(history: &[Utterance], text: &str, titles: &MovieTitles) -> TaggerInput {
    let start = history.len().saturating_sub(2);
    let context = history[start..].iter().map(|u| speaker_line(u.role, &titles.write_out(&u.text))).collect();
    TaggerInput { utterance: titles.write_out(text), context }
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
        // An unknown or unavailable device is refused here, naming ECR_DEVICE; the
        // encoder resource loads on it and the tagger's tensors follow the encoder.
        crate::device_of(ctx)?;
        let encoder = ctx.resources().get(&TextEncoderKey(ctx.resolve(&config.model_dir)))?;
        let checkpoint = config.checkpoint_dir(ctx);
        crate::trainer::refuse_other_config(&checkpoint, &config.train, ctx.stage_id())?;
        let tagger = EmotionTagger::load(&checkpoint, encoder).map_err(|e| {
            format!("{e} (stage {:?}: `ecr train -r {}` trains it)", ctx.stage_id(), ctx.recipe_path().display())
        })?;
        let titles = ctx.resources().get(&MovieTitlesKey(ctx.data_dir()?))?;
        Ok(Box::new(EmotionTaggerStage {
            tagger,
            titles,
            threshold: config.threshold as f32,
            cache_dir: ctx.resolve(&config.cache_dir),
            batch_cache: Mutex::new(None),
        }))
    }

    fn trainer(&self, config: Self::Config, ctx: &BuildContext) -> Result<Option<Box<dyn Trainable>>, BoxError> {
        Ok(Some(Box::new(crate::trainer::TaggerTrainer::new(config, ctx))))
    }
}

/// The running stage.
pub struct EmotionTaggerStage {
    tagger: EmotionTagger,
    titles: Arc<MovieTitles>,
    threshold: f32,
    cache_dir: PathBuf,
    /// The on-disk embedding cache, opened on the first batch: used for
    /// replays of a dataset, not for live turns (users' texts are not stored).
    batch_cache: Mutex<Option<EmbeddingCache>>,
}

impl EmotionTaggerStage {
    fn tag(&self, turns: &mut [Turn], cache: Option<&mut EmbeddingCache>) -> Result<(), BoxError> {
        let inputs: Vec<TaggerInput> =
            turns.iter().map(|t| tagger_input(&t.history, &t.user.text, &self.titles)).collect();
        let dists = self.tagger.predict(&inputs, cache)?;
        if dists.len() != turns.len() {
            return Err(NeuralError::Invalid("the tagger returned the wrong number of distributions".into()).into());
        }
        for (t, d) in turns.iter_mut().zip(dists) {
            t.user.emotions = Some(apply_threshold(d, self.threshold));
        }
        Ok(())
    }
}

impl Stage for EmotionTaggerStage {
    fn run(&self, turn: &mut Turn, _cx: &mut TurnContext<'_>) -> Result<(), BoxError> {
        let _span = tracing::debug_span!("emotion_tagger").entered();
        self.tag(std::slice::from_mut(turn), None)
    }

    /// Many turns at once: one batched encoder pass per 64 turns.
    fn run_batch(&self, turns: &mut [Turn], cx: &mut TurnContext<'_>) -> Result<(), BoxError> {
        let mut guard = self.batch_cache.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(EmbeddingCache::for_encoder(&self.cache_dir, self.tagger.encoder())?);
        }
        for chunk in turns.chunks_mut(64) {
            cx.check_cancelled()?;
            self.tag(chunk, guard.as_mut())?;
        }
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
    fn input_is_the_turn_and_the_last_two_utterances_with_roles_and_titles() {
        let titles = MovieTitles([(7, "Alien (1979)".to_string())].into_iter().collect());
        let h = vec![
            Utterance::new(Role::Seeker, "a"),
            Utterance::new(Role::Recommender, "try @7"),
            Utterance::new(Role::Seeker, "c"),
        ];
        let i = tagger_input(&h, "I loved @7  so much", &titles);
        assert_eq!(i.context, vec!["RECOMMENDER: try Alien (1979)".to_string(), "SEEKER: c".to_string()]);
        assert_eq!(i.utterance, "I loved Alien (1979) so much");
        assert!(tagger_input(&[], "x", &titles).context.is_empty());
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
