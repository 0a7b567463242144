//! Stages that learn: the [`Trainable`] contract and the runner that trains and
//! evaluates a recipe's trainable stages in pipeline order.
//!
//! A factory returns a trainer from [`StageFactory::trainer`](crate::StageFactory::trainer),
//! built from the same configuration as the stage itself, so the model that
//! is trained is the model that `build` loads. A trainer says whether it is
//! up to date ([`Trainable::status`]), trains, and evaluates. Its training
//! data for a downstream stage comes from the recipe itself: the
//! [`TrainContext::upstream`] engine holds every enabled stage before it, and
//! [`Engine::replay`] runs them over whole dialogues, the same code path as a
//! live session.
//!
//! ```no_run
//! use ecr_engine::{Recipe, Registry, train::{TrainOptions, train_recipe}};
//! let recipe = Recipe::load("recipes/ecr.toml", &Registry::new())?;
//! for outcome in train_recipe(&recipe, &TrainOptions::default())? {
//!     println!("{outcome}");
//! }
//! # Ok::<(), ecr_engine::EngineError>(())
//! ```

use crate::engine::{Engine, EngineError};
use crate::fingerprint::Fingerprint;
use crate::recipe::Recipe;
use crate::stage::{BoxError, BuildContext};
use crate::turn::Field;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Whether a stage's trained artefacts match what it would be trained from now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrainStatus {
    /// Trained from the current configuration, data and upstream stages.
    UpToDate(String),
    /// Never trained (no artefacts).
    Missing(String),
    /// Trained, but something it depends on changed: says what.
    Stale(String),
}

impl TrainStatus {
    /// Whether training is needed.
    pub fn needs_training(&self) -> bool {
        !matches!(self, TrainStatus::UpToDate(_))
    }
}

impl fmt::Display for TrainStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrainStatus::UpToDate(d) => write!(f, "up to date ({d})"),
            TrainStatus::Missing(d) => write!(f, "not trained ({d})"),
            TrainStatus::Stale(d) => write!(f, "out of date: {d}"),
        }
    }
}

/// What training produced.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    /// One line for people ("4 epochs, best 3, held-out Recall@2 0.93").
    pub summary: String,
    /// Figures as JSON (written beside the checkpoint by the trainer).
    pub metrics: serde_json::Value,
}

/// What an evaluation measured.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    /// A table or a few lines for people.
    pub text: String,
    /// The same figures as one JSON object (`ecr eval --json`).
    pub metrics: serde_json::Value,
}

/// Options of a training or evaluation job that some stages use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobOptions {
    /// Override the configured seed.
    pub seed: Option<u64>,
    /// Evaluate on this annotation file instead of the stage's default test set.
    pub annotations: Option<PathBuf>,
    /// Number of turns to generate responses for (response evaluation).
    pub responses: Option<usize>,
    /// The dialogues an evaluation runs on: the test split, or the validation split carved from
    /// the training dialogues, for choosing settings without looking at the test split.
    pub split: EvalSplit,
    /// Show progress bars.
    pub progress: bool,
}

/// The ReDial dialogues an evaluation runs on ([`JobOptions::split`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EvalSplit {
    /// The test dialogues (`test.jsonl`): the figures to report.
    #[default]
    Test,
    /// The validation dialogues carved from `train.jsonl`: the figures to choose settings on.
    Valid,
}

impl EvalSplit {
    /// The split's name as `--split` takes it.
    pub fn name(self) -> &'static str {
        match self {
            EvalSplit::Test => "test",
            EvalSplit::Valid => "valid",
        }
    }

    /// `stem.ext` for the test split (the files reports name), `stem_valid.ext` for validation, so
    /// that an evaluation on one split never overwrites the other's outputs.
    pub fn file_name(self, stem: &str, ext: &str) -> String {
        match self {
            EvalSplit::Test => format!("{stem}.{ext}"),
            other => format!("{stem}_{}.{ext}", other.name()),
        }
    }
}

impl std::str::FromStr for EvalSplit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "test" => Ok(EvalSplit::Test),
            "valid" => Ok(EvalSplit::Valid),
            other => Err(format!("unknown split {other:?}: expected \"test\" or \"valid\"")),
        }
    }
}

/// What a trainer gets when it trains or evaluates.
pub struct TrainContext<'a> {
    /// The stage's build context (run dir, data dir, resources, provided fields).
    pub build: &'a BuildContext,
    /// Every enabled stage before this one, built: replay it over dialogues
    /// ([`Engine::replay`]) to get this stage's inputs.
    pub upstream: &'a Engine,
    /// Identity of the upstream stages (their configs and trained artefacts):
    /// record it with the artefacts and compare it in [`Trainable::status`].
    pub upstream_fingerprint: &'a str,
    /// The fingerprint after each stage of `upstream`, in order.
    pub stage_fingerprints: &'a [String],
    /// Job options.
    pub options: &'a JobOptions,
}

impl TrainContext<'_> {
    /// Replay the upstream stages over `scripts` (whole dialogues), as
    /// sessions would, with the dialogue-shaping stages' turns cached under
    /// `<runs root>/.replay` ([`crate::replay`]); `data` fingerprints the
    /// dialogues' source. `progress(done, total)` reports turns.
    pub fn replay(
        &self,
        scripts: &[Vec<crate::turn::Utterance>],
        data: &str,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Vec<crate::turn::Turn>>, EngineError> {
        let key = crate::replay::ReplayKey { stage_fingerprints: self.stage_fingerprints, data };
        crate::replay::replay_cached(self.upstream, scripts, &key, &self.replay_dir(), progress)
    }

    /// Only the dialogue-shaping upstream stages (cached), for a trainer that
    /// adds what only training knows (the gold items' feedback) before
    /// [`TrainContext::run_rest`] runs the other upstream stages.
    pub fn replay_shaping(
        &self,
        scripts: &[Vec<crate::turn::Utterance>],
        data: &str,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Vec<crate::turn::Turn>>, EngineError> {
        let key = crate::replay::ReplayKey { stage_fingerprints: self.stage_fingerprints, data };
        crate::replay::replay_shaping(self.upstream, scripts, &key, &self.replay_dir(), progress)
    }

    /// The upstream stages after the dialogue-shaping ones, over independent turns.
    pub fn run_rest(&self, turns: &mut [crate::turn::Turn]) -> Result<(), EngineError> {
        crate::replay::run_rest(self.upstream, turns)
    }

    fn replay_dir(&self) -> std::path::PathBuf {
        crate::replay::cache_dir(&self.build.run_dir())
    }
}

/// A stage kind that learns from data.
pub trait Trainable: Send + Sync {
    /// Whether the artefacts on disk match the configuration, the data and
    /// (for stages trained on upstream outputs) `upstream_fingerprint`.
    fn status(&self, upstream_fingerprint: &str) -> Result<TrainStatus, BoxError>;

    /// Identity of the trained artefacts (e.g. a hash of the checkpoint's
    /// metadata); `None` when untrained. Downstream stages depend on it.
    fn fingerprint(&self) -> Option<String>;

    /// Train and write the artefacts where `build` loads them from.
    fn train(&self, cx: &TrainContext<'_>) -> Result<TrainReport, BoxError>;

    /// Evaluate the trained stage on its test data.
    fn evaluate(&self, cx: &TrainContext<'_>) -> Result<EvalReport, BoxError>;

    /// The Turn fields whose upstream writers this stage's training depends on, when that is
    /// narrower than the whole upstream. With `Some(fields)` the upstream fingerprint given to
    /// [`Trainable::status`] and [`TrainContext`] covers only the enabled upstream stages that
    /// write one of `fields` (each by its id, kind, configuration and trained artefact), so that
    /// recipes differing elsewhere upstream share the artefact (the generator's adapter depends
    /// on the prompt builder, not on the recommender). `None` (the default): every upstream stage.
    fn trained_on(&self) -> Option<Vec<Field>> {
        None
    }
}

/// Options of [`train_recipe`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainOptions {
    /// Retrain stages that are up to date.
    pub force: bool,
    /// Train only this stage (by its recipe id).
    pub stage: Option<String>,
    /// Train the stages up to and including this one (what it depends on), not the ones after
    /// it: `ecr compare` of the recommender does not train the generator's adapter.
    pub through: Option<String>,
    /// Options passed to the trainers.
    pub job: JobOptions,
}

/// What happened to one trainable stage.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainOutcome {
    /// Skipped: already up to date.
    UpToDate {
        /// Stage id.
        stage: String,
        /// The status detail.
        detail: String,
    },
    /// Trained.
    Trained {
        /// Stage id.
        stage: String,
        /// Why it was trained (missing, out of date, forced).
        why: String,
        /// The trainer's report.
        report: TrainReport,
        /// Wall time.
        elapsed: Duration,
    },
}

impl fmt::Display for TrainOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrainOutcome::UpToDate { stage, detail } => {
                write!(f, "stage {stage:?}: up to date ({detail}); `--force` retrains it")
            }
            TrainOutcome::Trained { stage, why, report, elapsed } => {
                write!(f, "stage {stage:?}: trained in {:.1} s ({why}): {}", elapsed.as_secs_f64(), report.summary)
            }
        }
    }
}

/// One trainable stage of a recipe, with its position.
struct Job {
    index: usize,
    id: String,
    trainer: Box<dyn Trainable>,
}

/// The recipe's trainable enabled stages, in pipeline order.
fn trainers(recipe: &Recipe) -> Result<Vec<Job>, EngineError> {
    let mut jobs = Vec::new();
    for (index, s) in recipe.stages().iter().enumerate().filter(|(_, s)| s.enabled) {
        let trainer =
            s.prepared().trainer(s.context()).map_err(|source| EngineError::Train { stage: s.id.clone(), source })?;
        if let Some(trainer) = trainer {
            jobs.push(Job { index, id: s.id.clone(), trainer });
        }
    }
    Ok(jobs)
}

/// The stage `id` among `jobs`, or an error naming the trainable ones.
fn pick<'j>(recipe: &Recipe, jobs: &'j [Job], id: &str) -> Result<&'j Job, EngineError> {
    if let Some(j) = jobs.iter().find(|j| j.id == id) {
        return Ok(j);
    }
    let names: Vec<String> = jobs.iter().map(|j| format!("{:?}", j.id)).collect();
    let list = if names.is_empty() { "none".to_string() } else { names.join(", ") };
    let why = match recipe.stage(id) {
        Some(s) if !s.enabled => format!("stage {id:?} is disabled in {}", recipe.path().display()),
        Some(s) => format!("stage {id:?} (use {:?}) has nothing to train", s.use_name),
        None => format!("{} has no stage {id:?}", recipe.path().display()),
    };
    Err(EngineError::Input(format!("{why}; trainable stages of recipe {:?}: {list}", recipe.name())))
}

/// The fingerprint after each enabled stage before position `index` (their
/// ids, kinds, resolved configurations and trained artefacts, cumulatively);
/// the last one identifies the whole upstream (empty upstream: the empty fingerprint).
fn stage_fingerprints(recipe: &Recipe, jobs: &[Job], index: usize) -> Vec<String> {
    let mut fp = Fingerprint::new();
    let mut out = Vec::new();
    for (i, s) in recipe.stages().iter().enumerate().take(index).filter(|(_, s)| s.enabled) {
        fp = with_stage(fp, s, jobs, i);
        out.push(fp.hex());
    }
    out
}

/// `fp` extended by the stage `s` at position `i`: its id, kind, resolved configuration and
/// (trainable stages) trained artefact.
fn with_stage(fp: Fingerprint, s: &crate::recipe::RecipeStage, jobs: &[Job], i: usize) -> Fingerprint {
    let fp = fp.str(&s.id).str(&s.use_name).str(&s.config().to_string());
    match jobs.iter().find(|j| j.index == i) {
        Some(j) => fp.str(&j.trainer.fingerprint().unwrap_or_default()),
        None => fp,
    }
}

/// The identity of every enabled stage before position `index`.
fn whole_upstream(recipe: &Recipe, jobs: &[Job], index: usize) -> String {
    stage_fingerprints(recipe, jobs, index).pop().unwrap_or_else(|| Fingerprint::new().hex())
}

/// The upstream fingerprint a trainer at `index` is trained from: the whole upstream, or only
/// the writers of its [`Trainable::trained_on`] fields.
fn upstream_fingerprint(recipe: &Recipe, jobs: &[Job], index: usize) -> String {
    let narrow = jobs.iter().find(|j| j.index == index).and_then(|j| j.trainer.trained_on());
    let Some(fields) = narrow else {
        return whole_upstream(recipe, jobs, index);
    };
    let mut fp = Fingerprint::new().str("trained_on");
    for (i, s) in recipe.stages().iter().enumerate().take(index).filter(|(_, s)| s.enabled) {
        if s.io.writes.iter().any(|w| fields.contains(w)) {
            fp = with_stage(fp, s, jobs, i);
        }
    }
    fp.hex()
}

/// Train every trainable enabled stage of `recipe` in pipeline order (or only
/// `options.stage`, or those up to `options.through`), skipping those that are up to date
/// unless `force`.
pub fn train_recipe(recipe: &Recipe, options: &TrainOptions) -> Result<Vec<TrainOutcome>, EngineError> {
    let jobs = trainers(recipe)?;
    let last = match &options.through {
        Some(id) => pick(recipe, &jobs, id)?.index,
        None => usize::MAX,
    };
    let selected: Vec<&Job> = match &options.stage {
        Some(id) => vec![pick(recipe, &jobs, id)?],
        None => jobs.iter().filter(|j| j.index <= last).collect(),
    };
    let mut outcomes = Vec::new();
    for job in selected {
        let stage = &recipe.stages()[job.index];
        let _span = tracing::info_span!("train", stage = %job.id).entered();
        // Computed now: the upstream stages may have just been retrained.
        let fps = stage_fingerprints(recipe, &jobs, job.index);
        let upstream_fp = upstream_fingerprint(recipe, &jobs, job.index);
        let status =
            job.trainer.status(&upstream_fp).map_err(|source| EngineError::Train { stage: job.id.clone(), source })?;
        if !status.needs_training() && !options.force {
            let detail = match status {
                TrainStatus::UpToDate(d) => d,
                other => other.to_string(),
            };
            outcomes.push(TrainOutcome::UpToDate { stage: job.id.clone(), detail });
            continue;
        }
        let why = if status.needs_training() { status.to_string() } else { "forced".into() };
        tracing::info!(%why, "training");
        let upstream = Engine::build_prefix(recipe, job.index)?;
        let cx = TrainContext {
            build: stage.context(),
            upstream: &upstream,
            upstream_fingerprint: &upstream_fp,
            stage_fingerprints: &fps,
            options: &options.job,
        };
        let start = Instant::now();
        let report = job.trainer.train(&cx).map_err(|source| EngineError::Train { stage: job.id.clone(), source })?;
        outcomes.push(TrainOutcome::Trained { stage: job.id.clone(), why, report, elapsed: start.elapsed() });
    }
    Ok(outcomes)
}

/// The fingerprint of the trainable stage `id` of `recipe` and of everything
/// before it: the ids, kinds, resolved configurations and trained artefacts of
/// the enabled stages up to and including it. It changes whenever an edit or a
/// retraining changes what the stage computes, so results derived from the
/// stage (`ecr compare`'s per-seed metrics) can be cached under it.
pub fn stage_fingerprint(recipe: &Recipe, id: &str) -> Result<String, EngineError> {
    let jobs = trainers(recipe)?;
    let job = pick(recipe, &jobs, id)?;
    let s = &recipe.stages()[job.index];
    // The whole upstream even for a narrowed trainer: what the stage computes at inference
    // depends on every stage before it.
    Ok(Fingerprint::new()
        .str(&whole_upstream(recipe, &jobs, job.index))
        .str(&s.id)
        .str(&s.use_name)
        .str(&s.config().to_string())
        .str(&job.trainer.fingerprint().unwrap_or_default())
        .hex())
}

/// The training status of every trainable enabled stage, in pipeline order.
pub fn recipe_status(recipe: &Recipe) -> Result<Vec<(String, TrainStatus)>, EngineError> {
    let jobs = trainers(recipe)?;
    jobs.iter()
        .map(|j| {
            let fp = upstream_fingerprint(recipe, &jobs, j.index);
            j.trainer
                .status(&fp)
                .map(|s| (j.id.clone(), s))
                .map_err(|source| EngineError::Train { stage: j.id.clone(), source })
        })
        .collect()
}

/// Evaluate the trainable enabled stages of `recipe` (or only `stage`).
pub fn evaluate_recipe(
    recipe: &Recipe,
    stage: Option<&str>,
    options: &JobOptions,
) -> Result<Vec<(String, EvalReport)>, EngineError> {
    let jobs = trainers(recipe)?;
    let selected: Vec<&Job> = match stage {
        Some(id) => vec![pick(recipe, &jobs, id)?],
        None => jobs.iter().collect(),
    };
    let mut out = Vec::new();
    for job in selected {
        let _span = tracing::info_span!("evaluate", stage = %job.id).entered();
        let fps = stage_fingerprints(recipe, &jobs, job.index);
        let upstream_fp = upstream_fingerprint(recipe, &jobs, job.index);
        let upstream = Engine::build_prefix(recipe, job.index)?;
        let cx = TrainContext {
            build: recipe.stages()[job.index].context(),
            upstream: &upstream,
            upstream_fingerprint: &upstream_fp,
            stage_fingerprints: &fps,
            options,
        };
        let report =
            job.trainer.evaluate(&cx).map_err(|source| EngineError::Train { stage: job.id.clone(), source })?;
        out.push((job.id.clone(), report));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::EvalSplit;

    #[test]
    fn splits_parse_by_name_and_keep_their_outputs_apart() {
        for split in [EvalSplit::Test, EvalSplit::Valid] {
            assert_eq!(split.name().parse::<EvalSplit>(), Ok(split));
        }
        assert_eq!(EvalSplit::default(), EvalSplit::Test, "reports are on the test split unless asked");
        let e = "validation".parse::<EvalSplit>().unwrap_err();
        assert!(e.contains("\"validation\"") && e.contains("\"valid\""), "{e}");
        // The test split's file keeps the name reports cite; validation's never overwrites it.
        assert_eq!(EvalSplit::Test.file_name("responses", "jsonl"), "responses.jsonl");
        assert_eq!(EvalSplit::Valid.file_name("responses", "jsonl"), "responses_valid.jsonl");
    }
}
