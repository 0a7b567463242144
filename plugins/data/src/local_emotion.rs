//! ECR's local emotion rule (ECR_REFERENCE.md §1.2-4) and the `local_emotion`
//! stage that applies it to a [`Turn`].
//!
//! The rule: a seeker turn's emotion labels go to its own entities; a
//! recommender turn's entities get the labels of the seeker's next turn (its
//! reaction), or none. [`propagate`] is the only implementation: the offline
//! instance builder ([`crate::instances::entity_occurrences`]) and the stage
//! both call it, so training data and inference cannot drift apart.
//!
//! The stage also writes `feedback`: every movie mentioned in the dialogue
//! with the feedback its latest emotions express ([`feedback_of`]); entries
//! already in the turn (a questionnaire's answers, given by the caller) are kept.

use crate::instances::ContextEntity;
use ecr_engine::{
    BoxError, BuildContext, ConfigIssue, Emotion, EntityEmotion, EntityKind, Feedback, Field, ItemFeedback, Role,
    Stage, StageFactory, StageIo, Turn, TurnContext, Utterance,
};
use serde::{Deserialize, Serialize};

/// One turn as the rule sees it: who spoke, its KG entities in order, its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnView<'a> {
    /// Who spoke.
    pub role: Role,
    /// KG entity id and display name of each entity occurrence, in ECR's order.
    pub entities: Vec<(u32, &'a str, bool)>,
    /// The turn's emotion labels (empty for recommender turns).
    pub labels: Vec<(Emotion, f32)>,
}

/// Every entity occurrence of `turns` in order, with the labels ECR's rule gives it.
pub fn propagate(turns: &[TurnView<'_>]) -> Vec<ContextEntity> {
    let mut out = Vec::new();
    for (t, turn) in turns.iter().enumerate() {
        let labels = match turn.role {
            Role::Seeker => turn.labels.clone(),
            Role::Recommender => {
                turns.get(t + 1).filter(|n| n.role == Role::Seeker).map(|n| n.labels.clone()).unwrap_or_default()
            }
        };
        for &(e, name, _) in &turn.entities {
            out.push(ContextEntity { entity: e, name: name.to_string(), turn: t, emotions: labels.clone() });
        }
    }
    out
}

/// The rule's view of an engine utterance: its KG entities in ECR's order
/// (movies first, then other entities, each in order of appearance) and, for a
/// seeker utterance with emotions, the labels with `p > threshold` (most probable first).
pub fn view_of(u: &Utterance, threshold: f32) -> TurnView<'_> {
    let mut entities: Vec<(u32, &str, bool)> =
        u.entities.iter().filter_map(|m| m.entity.map(|e| (e, m.name.as_str(), m.kind == EntityKind::Movie))).collect();
    entities.sort_by_key(|e| !e.2);
    let labels = match (u.role, &u.emotions) {
        (Role::Seeker, Some(d)) => d.above(threshold),
        _ => Vec::new(),
    };
    TurnView { role: u.role, entities, labels }
}

/// [`view_of`] with ECR's co-occurrence fallback: a seeker utterance with KG
/// entities and no label above the threshold contributes its most probable label.
pub fn view_with_fallback(u: &Utterance, threshold: f32) -> TurnView<'_> {
    let mut v = view_of(u, threshold);
    if v.role == Role::Seeker
        && v.labels.is_empty()
        && !v.entities.is_empty()
        && let Some(d) = &u.emotions
        && d.0.iter().any(|&p| p > 0.0)
    {
        v.labels.push(d.ranked()[0]);
    }
    v
}

/// The feedback a movie's labels express: the first label `negative` →
/// disliked; `like`, `happy`, `grateful` or `nostalgia` → liked; otherwise not said.
pub fn feedback_of(labels: &[(Emotion, f32)]) -> Feedback {
    match labels.first().map(|l| l.0) {
        Some(Emotion::Negative) => Feedback::Disliked,
        Some(Emotion::Like | Emotion::Happy | Emotion::Grateful | Emotion::Nostalgia) => Feedback::Liked,
        _ => Feedback::NotSaid,
    }
}

/// Configuration of `local_emotion` (`[stages.<id>.with]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalEmotionConfig {
    /// Labels with `p > threshold` are kept (ECR: 0.1).
    pub threshold: f64,
    /// Labels kept per entity occurrence: the last ones (ECR: 3).
    pub max_labels: usize,
    /// Write `feedback` for the movies of the dialogue (see [`feedback_of`]).
    pub feedback: bool,
    /// Labels left out of the entities' emotions (before the last `max_labels` are kept), e.g.
    /// `["neutral"]`, the label most entities carry; `feedback` still reads every label. Empty
    /// (ECR) is left out of the settings' serialisation, so trained stages downstream keep their
    /// fingerprint.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<Emotion>,
}

impl Default for LocalEmotionConfig {
    fn default() -> Self {
        LocalEmotionConfig {
            threshold: crate::instances::EMOTION_THRESHOLD as f64,
            max_labels: 3,
            feedback: true,
            ignore: Vec::new(),
        }
    }
}

/// The running `local_emotion` stage; [`LocalEmotionStage::apply`] is what `run` does.
#[derive(Debug, Clone)]
pub struct LocalEmotionStage {
    config: LocalEmotionConfig,
}

impl LocalEmotionStage {
    /// A stage with `config`.
    pub fn new(config: LocalEmotionConfig) -> Self {
        LocalEmotionStage { config }
    }

    /// Write `turn.local_emotions` (one entry per entity occurrence of the
    /// history and the user utterance, in order) and, if configured, `turn.feedback`.
    pub fn apply(&self, turn: &mut Turn) {
        let th = self.config.threshold as f32;
        let views: Vec<TurnView<'_>> =
            turn.history.iter().chain(std::iter::once(&turn.user)).map(|u| view_of(u, th)).collect();
        let movie: std::collections::HashSet<u32> =
            views.iter().flat_map(|v| v.entities.iter().filter(|e| e.2).map(|e| e.0)).collect();
        let occ = propagate(&views);
        let k = self.config.max_labels;
        turn.local_emotions = occ
            .iter()
            .map(|c| {
                let mut kept: Vec<(Emotion, f32)> =
                    c.emotions.iter().copied().filter(|(e, _)| !self.config.ignore.contains(e)).collect();
                kept.drain(..kept.len().saturating_sub(k));
                EntityEmotion { entity: c.entity, name: c.name.clone(), emotions: kept }
            })
            .collect();
        if self.config.feedback {
            for c in occ.iter().rev().filter(|c| movie.contains(&c.entity)) {
                if !turn.feedback.iter().any(|f| f.item == c.entity) {
                    turn.feedback.push(ItemFeedback {
                        item: c.entity,
                        feedback: feedback_of(&c.emotions),
                        weight: None,
                    });
                }
            }
        }
    }
}

impl Stage for LocalEmotionStage {
    fn run(&self, turn: &mut Turn, _cx: &mut TurnContext<'_>) -> Result<(), BoxError> {
        self.apply(turn);
        Ok(())
    }
}

/// The factory of `local_emotion`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalEmotionFactory;

impl StageFactory for LocalEmotionFactory {
    type Config = LocalEmotionConfig;

    fn name(&self) -> &'static str {
        "local_emotion"
    }

    fn description(&self) -> &'static str {
        "ECR's local emotions: each context entity gets the seeker's emotions towards it (own turn, or the reply to a recommender turn)"
    }

    fn io(&self, config: &Self::Config) -> StageIo {
        let mut writes = vec![Field::LocalEmotions];
        if config.feedback {
            writes.push(Field::Feedback);
        }
        StageIo::new([Field::History, Field::UserEntities, Field::UserEmotions], writes)
    }

    fn check(&self, config: &Self::Config, _ctx: &BuildContext) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if !(0.0..1.0).contains(&config.threshold) {
            issues.push(ConfigIssue::new("threshold", "must be in [0, 1)"));
        }
        if config.max_labels == 0 {
            issues.push(ConfigIssue::new("max_labels", "must be at least 1"));
        }
        issues
    }

    fn build(&self, config: Self::Config, _ctx: &BuildContext) -> Result<Box<dyn Stage>, BoxError> {
        Ok(Box::new(LocalEmotionStage::new(config)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instances::tests_support::{conversation, emotions};
    use crate::instances::{EMOTION_THRESHOLD, entity_occurrences, segment};
    use crate::linker::{Linker, LinkerOptions, tests::world};
    use Emotion::*;

    #[test]
    fn the_stage_gives_each_entity_the_emotions_the_offline_builder_gives() {
        let (cat, kg) = world();
        let l = Linker::new(&cat, &kg, &LinkerOptions::default());
        let d = segment(&conversation(), "train", "train", &l, &emotions(), EMOTION_THRESHOLD);
        let offline = entity_occurrences(&d, false);
        let stage = LocalEmotionStage::new(LocalEmotionConfig { max_labels: 10, ..Default::default() });
        // Before the recommender turns 1 and 3 (what the recommender sees), and the whole dialogue.
        for t in [1, 3] {
            let mut turn = d.turn_before(t);
            stage.apply(&mut turn);
            let want: Vec<(u32, Vec<(Emotion, f32)>)> =
                offline.iter().filter(|c| c.turn < t).map(|c| (c.entity, c.emotions.clone())).collect();
            let got: Vec<(u32, Vec<(Emotion, f32)>)> =
                turn.local_emotions.iter().map(|e| (e.entity, e.emotions.clone())).collect();
            assert_eq!(got.len(), want.len());
            // Turn 0 has two messages whose labels ECR concatenates, while a Turn holds their mean
            // distribution: the same entities there; exactly the same labels for single-message turns.
            let first = offline.iter().filter(|c| c.turn == 0).count();
            assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), want.iter().map(|w| w.0).collect::<Vec<_>>());
            assert_eq!(got[first..], want[first..]);
        }
        let mut turn = d.turn_before(3);
        stage.apply(&mut turn);
        // Turn 1 (recommender: Reloaded ×2, Keanu Reeves) gets turn 2's "negative"; turn 2's own Reloaded too.
        let names: Vec<(&str, Vec<Emotion>)> =
            turn.local_emotions.iter().map(|e| (e.name.as_str(), e.emotions.iter().map(|x| x.0).collect())).collect();
        assert_eq!(
            names[2..],
            [
                ("The Matrix Reloaded (2003)", vec![Negative]),
                ("The Matrix Reloaded (2003)", vec![Negative]),
                ("Keanu Reeves", vec![Negative]),
                ("The Matrix Reloaded (2003)", vec![Negative]),
            ]
        );
        // The Matrix, mentioned in turn 0 with "like", is liked; Reloaded disliked.
        let fb: Vec<(u32, Feedback)> = turn.feedback.iter().map(|f| (f.item, f.feedback)).collect();
        assert_eq!(fb, vec![(1, Feedback::Disliked), (0, Feedback::Liked)]);
    }

    #[test]
    fn ignored_labels_leave_the_entities_emotions_but_not_the_feedback() {
        let (cat, kg) = world();
        let l = Linker::new(&cat, &kg, &LinkerOptions::default());
        let d = segment(&conversation(), "train", "train", &l, &emotions(), EMOTION_THRESHOLD);
        let all = LocalEmotionStage::new(LocalEmotionConfig::default());
        let no_negative = LocalEmotionStage::new(LocalEmotionConfig { ignore: vec![Negative], ..Default::default() });
        let (mut a, mut b) = (d.turn_before(3), d.turn_before(3));
        all.apply(&mut a);
        no_negative.apply(&mut b);
        assert_eq!(a.local_emotions.len(), b.local_emotions.len());
        for (x, y) in a.local_emotions.iter().zip(&b.local_emotions) {
            let want: Vec<(Emotion, f32)> = x.emotions.iter().copied().filter(|e| e.0 != Negative).collect();
            assert_eq!((x.entity, want), (y.entity, y.emotions.clone()));
        }
        assert!(a.local_emotions.iter().any(|x| x.emotions.iter().any(|e| e.0 == Negative)));
        assert_eq!(a.feedback, b.feedback, "feedback reads every label");
        assert!(serde_json::from_str::<LocalEmotionConfig>(r#"{"ignore": ["sadness"]}"#).is_err());
    }

    #[test]
    fn one_rule_for_both_paths_with_single_message_turns() {
        let v = |role, entities: Vec<(u32, &'static str, bool)>, labels: Vec<(Emotion, f32)>| TurnView {
            role,
            entities,
            labels,
        };
        let turns = vec![
            v(Role::Seeker, vec![(10, "a", false)], vec![(Like, 0.9), (Happy, 0.2)]),
            v(Role::Recommender, vec![(11, "b", true), (12, "c", false)], vec![]),
            v(Role::Seeker, vec![], vec![(Curious, 0.8)]),
            v(Role::Recommender, vec![(13, "d", true)], vec![]),
        ];
        let occ = propagate(&turns);
        let got: Vec<(u32, Vec<(Emotion, f32)>)> = occ.iter().map(|c| (c.entity, c.emotions.clone())).collect();
        assert_eq!(
            got,
            vec![
                (10, vec![(Like, 0.9), (Happy, 0.2)]),
                (11, vec![(Curious, 0.8)]),
                (12, vec![(Curious, 0.8)]),
                (13, vec![]),
            ]
        );
        // The stage keeps the last `max_labels` labels, and a given questionnaire answer wins.
        let mut t = Turn::new(vec![], "");
        let mut u = Utterance::new(Role::Seeker, "x");
        u.entities.push(ecr_engine::EntityMention {
            name: "m".into(),
            kind: EntityKind::Movie,
            entity: Some(5),
            movie: Some(1),
            span: None,
        });
        let mut d = ecr_engine::EmotionDist::default();
        d.set(Negative, 0.5);
        d.set(Like, 0.3);
        d.set(Curious, 0.2);
        u.emotions = Some(d);
        t.user = u;
        t.feedback.push(ItemFeedback { item: 5, feedback: Feedback::Liked, weight: None });
        LocalEmotionStage::new(LocalEmotionConfig { max_labels: 2, ..Default::default() }).apply(&mut t);
        assert_eq!(t.local_emotions[0].emotions, vec![(Like, 0.3), (Curious, 0.2)]);
        assert_eq!(t.feedback.len(), 1);
        assert_eq!(t.feedback[0].feedback, Feedback::Liked);
        assert_eq!(feedback_of(&[(Negative, 0.5)]), Feedback::Disliked);
    }
}
