//! The `global_emotion` stage (ECR_REFERENCE.md §1.6): for every context
//! entity of the turn (`local_emotions`), the entities that co-occurred with
//! it under a shared emotion in the training dialogues, with the row-normalised
//! weights of ECR's co-occurrence matrix C ([`crate::cooccur`]).
//!
//! The stage is trainable: its statistics are counted from the recipe's own
//! upstream stages (linker, emotion tagger, ...) replayed over the training
//! dialogues ([`ecr_engine::TrainContext::replay`]), with the same counting
//! rule as the offline builder ([`crate::cooccur::count_occurrence_pairs`]).
//! `ecr train` writes them to `runs/<recipe>/<stage id>/cooccurrence.json`.

use crate::cooccur::{CoOccurrence, count_occurrence_pairs};
use crate::keys::KgKey;
use crate::local_emotion::{propagate, view_with_fallback};
use crate::replay::{RedialSplits, script};
use ecr_engine::{
    BoxError, BuildContext, ConfigIssue, EvalReport, Field, Fingerprint, GlobalEntity, Stage, StageFactory, StageIo,
    TrainContext, TrainReport, TrainStatus, Trainable, Turn, TurnContext, Utterance,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// The statistics file in the stage directory.
pub const STATISTICS_FILE: &str = "cooccurrence.json";
/// What the statistics were counted from.
pub const TRAINED_FROM_FILE: &str = "trained_from.json";

/// The related entities of `sources` (distinct, in order of first mention):
/// each source's row of `c`, its `top_k` largest weights (ties: lower id first).
pub fn related(c: &CoOccurrence, sources: impl IntoIterator<Item = u32>, top_k: usize) -> Vec<GlobalEntity> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for s in sources {
        if !seen.insert(s) {
            continue;
        }
        let mut row: Vec<(u32, f32)> = c.row(s).collect();
        row.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        row.truncate(top_k);
        out.extend(row.into_iter().map(|(e, w)| GlobalEntity { entity: e, source: s, weight: w }));
    }
    out
}

/// The co-occurrence matrix over `n` entities counted from whole replayed
/// dialogues (each the utterances of a dialogue, as the stages left them),
/// with labels `p > threshold` and ECR's seeker fallback.
pub fn count_dialogues(n: usize, dialogues: &[Vec<Utterance>], threshold: f32) -> CoOccurrence {
    let occurrences = dialogues.iter().map(|utts| {
        let views: Vec<_> = utts.iter().map(|u| view_with_fallback(u, threshold)).collect();
        propagate(&views)
    });
    CoOccurrence::from_counts(n, &count_occurrence_pairs(occurrences))
}

/// Configuration of `global_emotion` (`[stages.<id>.with]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GlobalEmotionConfig {
    /// Labels with `p > threshold` count (ECR: 0.1).
    pub threshold: f64,
    /// Related entities kept per context entity (largest weights; ECR keeps the whole row).
    pub top_k: usize,
    /// The statistics file; default `runs/<recipe>/<stage id>/cooccurrence.json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statistics: Option<String>,
}

impl Default for GlobalEmotionConfig {
    fn default() -> Self {
        GlobalEmotionConfig { threshold: crate::instances::EMOTION_THRESHOLD as f64, top_k: 32, statistics: None }
    }
}

impl GlobalEmotionConfig {
    fn file(&self, ctx: &BuildContext) -> PathBuf {
        ctx.resolve_or_stage_dir(self.statistics.as_deref(), STATISTICS_FILE)
    }
}

/// The running `global_emotion` stage.
pub struct GlobalEmotionStage {
    c: Arc<CoOccurrence>,
    top_k: usize,
}

impl GlobalEmotionStage {
    /// A stage over counted statistics.
    pub fn new(c: Arc<CoOccurrence>, top_k: usize) -> Self {
        GlobalEmotionStage { c, top_k }
    }

    /// Write `turn.global_entities` from `turn.local_emotions`.
    pub fn apply(&self, turn: &mut Turn) {
        let sources = turn.local_emotions.iter().map(|e| e.entity);
        turn.global_entities = related(&self.c, sources, self.top_k);
    }
}

impl Stage for GlobalEmotionStage {
    fn run(&self, turn: &mut Turn, _cx: &mut TurnContext<'_>) -> Result<(), BoxError> {
        self.apply(turn);
        Ok(())
    }
}

/// The factory of `global_emotion`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GlobalEmotionFactory;

impl StageFactory for GlobalEmotionFactory {
    type Config = GlobalEmotionConfig;

    fn name(&self) -> &'static str {
        "global_emotion"
    }

    fn description(&self) -> &'static str {
        "ECR's global emotions: entities that co-occurred with the context entities under a shared emotion in training dialogues"
    }

    fn io(&self, _config: &Self::Config) -> StageIo {
        StageIo::new([Field::LocalEmotions], [Field::GlobalEntities])
    }

    fn check(&self, config: &Self::Config, _ctx: &BuildContext) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if !(0.0..1.0).contains(&config.threshold) {
            issues.push(ConfigIssue::new("threshold", "must be in [0, 1)"));
        }
        if config.top_k == 0 {
            issues.push(ConfigIssue::new("top_k", "must be at least 1"));
        }
        issues
    }

    fn build(&self, config: Self::Config, ctx: &BuildContext) -> Result<Box<dyn Stage>, BoxError> {
        let file = config.file(ctx);
        let text = std::fs::read_to_string(&file).map_err(|e| {
            format!(
                "stage {:?}: cannot read its statistics {} ({e}): train them with `ecr train -r {}`",
                ctx.stage_id(),
                file.display(),
                ctx.recipe_path().display()
            )
        })?;
        let c: CoOccurrence = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not co-occurrence statistics ({e}); retrain with `ecr train`", file.display()))?;
        Ok(Box::new(GlobalEmotionStage::new(Arc::new(c), config.top_k)))
    }

    fn trainer(&self, config: Self::Config, ctx: &BuildContext) -> Result<Option<Box<dyn Trainable>>, BoxError> {
        Ok(Some(Box::new(GlobalTrainer { config, ctx: ctx.clone() })))
    }
}

/// What the statistics were counted from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TrainedFrom {
    threshold: f64,
    upstream: String,
    data: String,
}

/// Counts the statistics of a `global_emotion` stage.
struct GlobalTrainer {
    config: GlobalEmotionConfig,
    ctx: BuildContext,
}

impl GlobalTrainer {
    fn record(&self) -> PathBuf {
        self.config.file(&self.ctx).with_file_name(TRAINED_FROM_FILE)
    }

    fn data_fingerprint(&self) -> Result<String, BoxError> {
        Ok(RedialSplits::fingerprint(&self.ctx.data_dir()?, self.ctx.data_sample())?)
    }
}

impl Trainable for GlobalTrainer {
    fn status(&self, upstream: &str) -> Result<TrainStatus, BoxError> {
        let file = self.config.file(&self.ctx);
        if !file.is_file() {
            return Ok(TrainStatus::Missing(format!("no {}", file.display())));
        }
        let Some(was) =
            std::fs::read_to_string(self.record()).ok().and_then(|t| serde_json::from_str::<TrainedFrom>(&t).ok())
        else {
            return Ok(TrainStatus::Stale(format!("{} is missing", self.record().display())));
        };
        let mut why = Vec::new();
        if was.threshold != self.config.threshold {
            why.push(format!("threshold {} → {}", was.threshold, self.config.threshold));
        }
        if was.upstream != upstream {
            why.push("an upstream stage (linker, tagger, local emotion) changed or was retrained".to_string());
        }
        if was.data != self.data_fingerprint()? {
            why.push("redial/train.jsonl or test.jsonl (or recipe.data_sample) changed".to_string());
        }
        Ok(if why.is_empty() {
            TrainStatus::UpToDate(format!("statistics {}", file.display()))
        } else {
            TrainStatus::Stale(why.join("; "))
        })
    }

    fn fingerprint(&self) -> Option<String> {
        let record = std::fs::read_to_string(self.record()).ok()?;
        Some(Fingerprint::new().str(&record).hex())
    }

    fn train(&self, cx: &TrainContext<'_>) -> Result<TrainReport, BoxError> {
        let dir = self.ctx.data_dir()?;
        let splits = RedialSplits::load(&dir, self.ctx.data_sample())?;
        let kg = self.ctx.resources().get(&KgKey(dir))?;
        // Every split is replayed (the cache of the dialogue-shaping stages is then the one the
        // recommender's trainer reads too); only the training dialogues are counted.
        let all = splits.train.iter().chain(&splits.valid).chain(&splits.test);
        let scripts: Vec<Vec<Utterance>> = all.map(|c| script(c).0).collect();
        let bar = crate::progress::bar(cx.options.progress, "global emotion: replaying training dialogues");
        let turns = cx.replay(&scripts, &splits.fingerprint, &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })?;
        bar.finish_and_clear();
        let dialogues: Vec<Vec<Utterance>> = turns[..splits.train.len()]
            .iter()
            .filter_map(|d| d.last())
            .map(|last| last.history.iter().chain(std::iter::once(&last.user)).cloned().collect())
            .collect();
        let c = count_dialogues(kg.len(), &dialogues, self.config.threshold as f32);
        let file = self.config.file(&self.ctx);
        if let Some(d) = file.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        std::fs::write(&file, serde_json::to_string(&c)?).map_err(|e| format!("{}: {e}", file.display()))?;
        let record = TrainedFrom {
            threshold: self.config.threshold,
            upstream: cx.upstream_fingerprint.to_string(),
            data: splits.fingerprint.clone(),
        };
        std::fs::write(self.record(), serde_json::to_string_pretty(&record)?)?;
        let metrics = serde_json::json!({
            "dialogues": dialogues.len(), "nnz": c.nnz(), "rows": c.nonempty_rows(),
        });
        Ok(TrainReport {
            summary: format!(
                "co-occurrence of {} training dialogues: {} non-zeros in {} rows -> {}",
                dialogues.len(),
                c.nnz(),
                c.nonempty_rows(),
                file.display()
            ),
            metrics,
        })
    }

    fn evaluate(&self, _cx: &TrainContext<'_>) -> Result<EvalReport, BoxError> {
        let file = self.config.file(&self.ctx);
        let c: CoOccurrence = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
        let metrics = serde_json::json!({ "nnz": c.nnz(), "rows": c.nonempty_rows(), "n": c.n });
        Ok(EvalReport {
            text: format!("{}: {} non-zeros in {} of {} rows", file.display(), c.nnz(), c.nonempty_rows(), c.n),
            metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cooccur::count_pairs;
    use crate::instances::tests_support::{conversation, emotions};
    use crate::instances::{EMOTION_THRESHOLD, segment};
    use crate::linker::{Linker, LinkerOptions, tests::world};
    use crate::local_emotion::{LocalEmotionConfig, LocalEmotionStage};

    #[test]
    fn related_entities_are_the_rows_of_the_offline_matrix() {
        let (cat, kg) = world();
        let l = Linker::new(&cat, &kg, &LinkerOptions::default());
        let d = segment(&conversation(), "train", "train", &l, &emotions(), EMOTION_THRESHOLD);
        let c = CoOccurrence::build(kg.len(), [&d]);
        assert_eq!(c, CoOccurrence::from_counts(kg.len(), &count_pairs([&d])));
        let mut turn = d.turn_before(3);
        LocalEmotionStage::new(LocalEmotionConfig::default()).apply(&mut turn);
        let g = related(&c, turn.local_emotions.iter().map(|e| e.entity), 32);
        // Every context entity's whole row comes back, once per distinct entity, with C's weights.
        let mut sources: Vec<u32> = turn.local_emotions.iter().map(|e| e.entity).collect();
        sources.dedup();
        for s in [0u32, 7, 1, 3] {
            let want: Vec<(u32, f32)> = c.row(s).collect();
            let mut got: Vec<(u32, f32)> = g.iter().filter(|x| x.source == s).map(|x| (x.entity, x.weight)).collect();
            got.sort_by_key(|x| x.0);
            assert_eq!(got, want, "row {s}");
        }
        // The Matrix (0) and Science fiction (7) share "like" in turn 0: 0 → 7 comes back.
        assert!(g.iter().any(|x| x.source == 0 && x.entity == 7));
        // Counting whole engine dialogues (what the trainer does after a replay) gives the same matrix.
        let utts: Vec<Utterance> = d.turns.iter().map(|t| t.utterance()).collect();
        assert_eq!(count_dialogues(kg.len(), &[utts], EMOTION_THRESHOLD), c);
        // top_k keeps the largest weights.
        let one = related(&c, [0u32], 1);
        let best = c.row(0).map(|x| x.1).fold(0f32, f32::max);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].weight, best);
    }
}
