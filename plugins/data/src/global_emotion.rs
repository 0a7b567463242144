//! The `global_emotion` stage (ECR_REFERENCE.md §1.6): for every context
//! entity of the turn (`local_emotions`), the entities that co-occurred with
//! it under a shared emotion in the training dialogues, with the row-normalised
//! weights of ECR's co-occurrence matrix C ([`crate::cooccur`]).
//!
//! C is built by [`crate::prepare`] from the training split, with the emotions
//! of the tagger's labels file, exactly as the offline instance builder builds
//! it ([`TrainingData`], shared by every stage of an engine that asks for it).

use crate::cooccur::CoOccurrence;
use crate::emotion_source::EmotionFile;
use crate::paths::data_dir;
use crate::prepare::{PrepareOptions, Prepared, Resources, prepare};
use ecr_engine::{BoxError, BuildContext, ConfigIssue, Field, GlobalEntity, Stage, StageFactory, StageIo, Turn};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The prepared splits and co-occurrence statistics for one labels file and
/// threshold, with the resources they came from: built once per engine.
pub struct TrainingData {
    /// Catalogue, KG and linker.
    pub resources: Arc<Resources>,
    /// Train/valid/test dialogues, instances and the co-occurrence matrix.
    pub prepared: Prepared,
    /// The labels file the emotions came from.
    pub labels_file: PathBuf,
}

impl TrainingData {
    /// Load the data in `dir` and prepare it with the emotions of the tagger's
    /// `labels_file` for every split (evaluation never sees annotations).
    pub fn load(dir: &Path, labels_file: &Path, threshold: f32) -> Result<Self, BoxError> {
        if !labels_file.is_file() {
            return Err(format!(
                "emotion labels file {} does not exist: train the emotion tagger first (ecr train -r RECIPE --stage emotion)",
                labels_file.display()
            )
            .into());
        }
        let resources = Arc::new(Resources::load(dir, &Default::default())?);
        let emotions = EmotionFile::load(labels_file)?;
        let opts = PrepareOptions { emotion_threshold: threshold, ..Default::default() };
        let prepared = prepare(&resources, &emotions, &opts)?;
        Ok(TrainingData { resources, prepared, labels_file: labels_file.to_path_buf() })
    }

    /// The engine-wide shared instance for these settings.
    pub fn shared(ctx: &BuildContext, dir: &Path, labels_file: &Path, threshold: f32) -> Result<Arc<Self>, BoxError> {
        let key = format!("ecr-data/training:{}:{}:{threshold}", dir.display(), labels_file.display());
        ctx.shared(&key, || Self::load(dir, labels_file, threshold))
    }
}

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

/// Configuration of `global_emotion` (`[stages.<id>.with]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalEmotionConfig {
    /// The data directory; default `$ECR_DATA_DIR` or `shared/data` beside the project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// The emotion tagger's labels of every ReDial seeker message (its `labels_file`).
    pub labels_file: String,
    /// Labels with `p > threshold` count (ECR: 0.1).
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Related entities kept per context entity (largest weights; ECR keeps the whole row).
    #[serde(default = "default_top_k")]
    pub top_k: usize,
}

fn default_threshold() -> f64 {
    crate::instances::EMOTION_THRESHOLD as f64
}

fn default_top_k() -> usize {
    32
}

impl GlobalEmotionConfig {
    fn dir(&self, ctx: &BuildContext) -> Result<PathBuf, String> {
        match &self.data_dir {
            Some(d) => Ok(ctx.resolve(d)),
            None => data_dir().map_err(|e| e.to_string()),
        }
    }
}

/// The running `global_emotion` stage.
pub struct GlobalEmotionStage {
    data: Arc<TrainingData>,
    top_k: usize,
}

impl GlobalEmotionStage {
    /// A stage over prepared data.
    pub fn new(data: Arc<TrainingData>, top_k: usize) -> Self {
        GlobalEmotionStage { data, top_k }
    }

    /// Write `turn.global_entities` from `turn.local_emotions`.
    pub fn apply(&self, turn: &mut Turn) {
        let sources = turn.local_emotions.iter().map(|e| e.entity);
        turn.global_entities = related(&self.data.prepared.cooccurrence, sources, self.top_k);
    }
}

impl Stage for GlobalEmotionStage {
    fn run(&self, turn: &mut Turn) -> Result<(), BoxError> {
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

    fn check(&self, config: &Self::Config, ctx: &BuildContext) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if let Err(e) = config.dir(ctx) {
            issues.push(ConfigIssue::new("data_dir", e));
        }
        if !(0.0..1.0).contains(&config.threshold) {
            issues.push(ConfigIssue::new("threshold", "must be in [0, 1)"));
        }
        if config.top_k == 0 {
            issues.push(ConfigIssue::new("top_k", "must be at least 1"));
        }
        issues
    }

    fn build(&self, config: Self::Config, ctx: &BuildContext) -> Result<Box<dyn Stage>, BoxError> {
        let dir = config.dir(ctx)?;
        let labels = ctx.resolve(&config.labels_file);
        let data = TrainingData::shared(ctx, &dir, &labels, config.threshold as f32)?;
        Ok(Box::new(GlobalEmotionStage::new(data, config.top_k)))
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
        // top_k keeps the largest weights.
        let one = related(&c, [0u32], 1);
        let best = c.row(0).map(|x| x.1).fold(0f32, f32::max);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].weight, best);
    }
}
