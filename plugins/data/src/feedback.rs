//! The built-in `feedback_mapping` stage: ECR's feedback-aware item
//! reweighting m(f) (ECR_REFERENCE.md §3.7) as a table. It sets the weight of
//! every entry of `turn.feedback`; the recommender's training multiplies each
//! instance's loss by the weight of its gold item. A Lua script with
//! `weight(item, feedback, emotions)` (hook `"weight"`) can replace it.

use ecr_engine::{
    BoxError, BuildContext, ConfigIssue, Feedback, Field, Stage, StageFactory, StageIo, Turn, TurnContext,
};
use serde::{Deserialize, Serialize};

/// Configuration of `feedback_mapping`: the weight of each feedback.
/// Defaults: the ECR authors' README run (liked 2.0, disliked 1.0, not said 0.5).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedbackMappingConfig {
    /// m(liked).
    pub liked: f64,
    /// m(disliked).
    pub disliked: f64,
    /// m(not said).
    pub not_said: f64,
}

impl Default for FeedbackMappingConfig {
    fn default() -> Self {
        FeedbackMappingConfig { liked: 2.0, disliked: 1.0, not_said: 0.5 }
    }
}

impl FeedbackMappingConfig {
    /// m(f).
    pub fn weight(&self, f: Feedback) -> f32 {
        (match f {
            Feedback::Liked => self.liked,
            Feedback::Disliked => self.disliked,
            Feedback::NotSaid => self.not_said,
        }) as f32
    }
}

/// The running `feedback_mapping` stage.
#[derive(Debug, Clone, Copy)]
pub struct FeedbackMappingStage(pub FeedbackMappingConfig);

impl Stage for FeedbackMappingStage {
    fn run(&self, turn: &mut Turn, _cx: &mut TurnContext<'_>) -> Result<(), BoxError> {
        for f in &mut turn.feedback {
            f.weight = Some(self.0.weight(f.feedback));
        }
        Ok(())
    }
}

/// The factory of `feedback_mapping`.
#[derive(Debug, Clone, Copy, Default)]
pub struct FeedbackMappingFactory;

impl StageFactory for FeedbackMappingFactory {
    type Config = FeedbackMappingConfig;

    fn name(&self) -> &'static str {
        "feedback_mapping"
    }

    fn description(&self) -> &'static str {
        "ECR's m(f): a weight per item from the user's feedback (liked / disliked / not said), for the recommender's loss"
    }

    fn io(&self, _config: &Self::Config) -> StageIo {
        StageIo::new([Field::Feedback], [Field::Feedback])
    }

    fn check(&self, config: &Self::Config, _ctx: &BuildContext) -> Vec<ConfigIssue> {
        [("liked", config.liked), ("disliked", config.disliked), ("not_said", config.not_said)]
            .into_iter()
            .filter(|(_, v)| !(v.is_finite() && *v >= 0.0))
            .map(|(k, _)| ConfigIssue::new(k, "must be a finite number >= 0"))
            .collect()
    }

    fn build(&self, config: Self::Config, _ctx: &BuildContext) -> Result<Box<dyn Stage>, BoxError> {
        Ok(Box::new(FeedbackMappingStage(config)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecr_engine::ItemFeedback;

    #[test]
    fn weights_follow_the_table() {
        let mut t = Turn::default();
        for (i, f) in [Feedback::Liked, Feedback::Disliked, Feedback::NotSaid].into_iter().enumerate() {
            t.feedback.push(ItemFeedback { item: i as u32, feedback: f, weight: None });
        }
        FeedbackMappingStage(FeedbackMappingConfig::default()).run_detached(&mut t).unwrap();
        let w: Vec<Option<f32>> = t.feedback.iter().map(|f| f.weight).collect();
        assert_eq!(w, vec![Some(2.0), Some(1.0), Some(0.5)]);
        let bad = FeedbackMappingConfig { disliked: -1.0, ..Default::default() };
        let issues = FeedbackMappingFactory.check(&bad, &BuildContext::new("r.toml", "r", "feedback"));
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].key, "disliked");
    }
}
