//! The engine (a built pipeline), sessions (one dialogue each) and the turn runner.
//!
//! ```no_run
//! use ecr_engine::{Engine, Event, Registry, TurnOptions};
//! let engine = Engine::from_recipe_with("recipes/lua-chat.toml", &Registry::new())?;
//! let mut session = engine.session();
//! let out = session.turn("I loved Inception")?;
//! for t in &out.trace {
//!     println!("{}: {:?}", t.stage, t.duration);
//! }
//! // Streaming: events arrive while the turn runs; a CancelToken (in the
//! // options, cancelled from another thread) or a deadline stops it.
//! let out = session.turn_with("Something scary?", &TurnOptions::default(), |e| {
//!     if let Event::Token { text } = &e.event {
//!         print!("{text}");
//!     }
//! })?;
//! # Ok::<(), ecr_engine::EngineError>(())
//! ```

use crate::recipe::{Recipe, RecipeError};
use crate::registry::Registry;
use crate::stage::{BoxError, CancelToken, Interrupted, Stage, StageIo, TurnContext, TurnEvent};
use crate::turn::{Role, Turn, Utterance};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::info_span;

/// The longest user utterance a turn accepts, in bytes.
pub const MAX_UTTERANCE_BYTES: usize = 16 * 1024;

/// A stage that failed to build.
#[derive(Debug)]
pub struct BuildFailure {
    /// Stage id.
    pub stage: String,
    /// Factory name.
    pub use_name: String,
    /// Why.
    pub source: BoxError,
}

/// Error of building an engine or of running one turn.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The recipe is invalid (every problem, with locations).
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// One or more stages failed to build.
    #[error("{}", .0.iter().map(|f| format!("stage {:?} (use {:?}) failed to build: {}", f.stage, f.use_name, f.source)).collect::<Vec<_>>().join("\n"))]
    Build(Vec<BuildFailure>),
    /// A stage failed during a turn; the session's history is unchanged.
    #[error("{}", stage_message(stage, source))]
    Stage {
        /// Stage id.
        stage: String,
        /// Why.
        source: BoxError,
    },
    /// The caller cancelled the turn or its deadline passed, in or before
    /// `stage`; the session's history is unchanged.
    #[error("{why} (in stage {stage:?}); the dialogue is unchanged")]
    Interrupted {
        /// The stage that was running or about to run.
        stage: String,
        /// Cancelled or past the deadline.
        why: Interrupted,
    },
    /// Training or evaluating a stage failed.
    #[error("{}", train_message(stage, source))]
    Train {
        /// Stage id.
        stage: String,
        /// Why.
        source: BoxError,
    },
    /// The user input cannot be processed.
    #[error("bad input: {0}")]
    Input(String),
}

fn train_message(stage: &str, source: &BoxError) -> String {
    let why = source.to_string();
    if why.starts_with(&format!("stage {stage:?}")) { why } else { format!("stage {stage:?}: {why}") }
}

/// "stage "x" failed: why", without naming the stage twice when the source
/// already does (Lua and dylib errors name their stage themselves).
fn stage_message(stage: &str, source: &BoxError) -> String {
    let why = source.to_string();
    if why.starts_with(&format!("stage {stage:?}")) { why } else { format!("stage {stage:?} failed: {why}") }
}

/// How long one stage took in one turn.
#[derive(Debug, Clone, PartialEq)]
pub struct StageTiming {
    /// Stage id.
    pub stage: String,
    /// Wall time of the stage's `run`.
    pub duration: Duration,
}

/// The result of one turn.
#[derive(Debug, Clone)]
pub struct TurnOutput {
    /// The turn record after the pipeline ran.
    pub turn: Turn,
    /// Per-stage timings, in pipeline order (enabled stages only).
    pub trace: Vec<StageTiming>,
}

impl TurnOutput {
    /// The system's response, if a stage wrote one.
    pub fn response(&self) -> Option<&str> {
        self.turn.response.as_deref()
    }

    /// Total time of all stages.
    pub fn total(&self) -> Duration {
        self.trace.iter().map(|t| t.duration).sum()
    }
}

struct BuiltStage {
    id: String,
    use_name: String,
    io: StageIo,
    stage: Box<dyn Stage>,
}

struct Inner {
    recipe: Recipe,
    stages: Vec<BuiltStage>,
}

/// A built pipeline: every enabled stage of a recipe, built once.
///
/// Cheap to clone, `Send + Sync`: share one engine between threads and
/// give each dialogue its own [`Session`].
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("recipe", &self.inner.recipe.path()).finish_non_exhaustive()
    }
}

impl Engine {
    /// Load, validate and build a recipe with the engine's own stages only
    /// (`lua`, `dylib`). Hosts that want the built-in ECR stages use
    /// [`Engine::from_recipe_with`] and their registry (the `ecr` crate does).
    pub fn from_recipe(path: impl AsRef<Path>) -> Result<Engine, EngineError> {
        Self::from_recipe_with(path, &Registry::new())
    }

    /// Load, validate and build a recipe with the factories of `registry`.
    pub fn from_recipe_with(path: impl AsRef<Path>, registry: &Registry) -> Result<Engine, EngineError> {
        let recipe = Recipe::load(path, registry)?;
        Self::build(recipe)
    }

    /// Build every enabled stage of a validated recipe. All build failures are reported together.
    pub fn build(recipe: Recipe) -> Result<Engine, EngineError> {
        let n = recipe.stages().len();
        Self::build_stages(recipe, n)
    }

    /// An engine of the enabled stages before position `end` of the recipe's
    /// pipeline: what a trainable stage at `end` replays to get its inputs.
    pub fn build_prefix(recipe: &Recipe, end: usize) -> Result<Engine, EngineError> {
        Self::build_stages(recipe.clone(), end)
    }

    fn build_stages(recipe: Recipe, end: usize) -> Result<Engine, EngineError> {
        let mut stages = Vec::new();
        let mut failures = Vec::new();
        for s in recipe.stages().iter().take(end).filter(|s| s.enabled) {
            let _span = info_span!("build", stage = %s.id, use_name = %s.use_name).entered();
            let start = Instant::now();
            match s.prepared().build(s.context()) {
                Ok(stage) => {
                    tracing::debug!(elapsed_ms = start.elapsed().as_millis() as u64, "built");
                    stages.push(BuiltStage { id: s.id.clone(), use_name: s.use_name.clone(), io: s.io.clone(), stage })
                }
                Err(source) => {
                    failures.push(BuildFailure { stage: s.id.clone(), use_name: s.use_name.clone(), source })
                }
            }
        }
        if !failures.is_empty() {
            return Err(EngineError::Build(failures));
        }
        Ok(Engine { inner: Arc::new(Inner { recipe, stages }) })
    }

    /// The recipe this engine was built from.
    pub fn recipe(&self) -> &Recipe {
        &self.inner.recipe
    }

    /// The enabled stages: id, factory name and declared reads/writes.
    pub fn stages(&self) -> impl Iterator<Item = (&str, &str, &StageIo)> {
        self.inner.stages.iter().map(|s| (s.id.as_str(), s.use_name.as_str(), &s.io))
    }

    /// A new dialogue.
    pub fn session(&self) -> Session {
        Session { engine: self.clone(), history: Vec::new() }
    }

    /// Run the pipeline over `turn` (no session state involved). A stage
    /// that fails or panics fails the turn; the engine stays usable.
    pub fn run(&self, turn: &mut Turn) -> Result<Vec<StageTiming>, EngineError> {
        self.run_with(turn, &TurnOptions::default(), &mut |_| {})
    }

    /// Run the pipeline over `turn`, delivering the stages' events to `sink`
    /// as they happen, stopping when `options` cancel it.
    pub fn run_with(
        &self,
        turn: &mut Turn,
        options: &TurnOptions,
        sink: &mut dyn FnMut(TurnEvent),
    ) -> Result<Vec<StageTiming>, EngineError> {
        let deadline = options.deadline.map(|d| Instant::now() + d);
        let mut trace = Vec::with_capacity(self.inner.stages.len());
        for s in &self.inner.stages {
            let span = info_span!("stage", stage = %s.id, use_name = %s.use_name);
            let _enter = span.enter();
            let mut cx = TurnContext::new(&s.id, Some(&mut *sink), options.cancel.as_ref(), deadline);
            if let Some(why) = cx.interrupted() {
                return Err(EngineError::Interrupted { stage: s.id.clone(), why });
            }
            let start = Instant::now();
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| s.stage.run(turn, &mut cx)));
            let duration = start.elapsed();
            tracing::debug!(duration_us = duration.as_micros() as u64, "stage done");
            let interrupted = cx.interrupted();
            match result {
                Ok(Ok(())) => trace.push(StageTiming { stage: s.id.clone(), duration }),
                Ok(Err(source)) => return Err(stage_error(&s.id, source, interrupted)),
                Err(panic) => return Err(panic_error(&s.id, panic.as_ref())),
            }
            if let Some(why) = interrupted {
                return Err(EngineError::Interrupted { stage: s.id.clone(), why });
            }
        }
        Ok(trace)
    }

    /// Run only the enabled stage `id` over `turn` (e.g. a trainer rendering its samples through
    /// the recipe's own prompt stage). A stage that fails or panics fails the call.
    pub fn run_stage(&self, id: &str, turn: &mut Turn) -> Result<(), EngineError> {
        let Some(s) = self.inner.stages.iter().find(|s| s.id == id) else {
            return Err(EngineError::Input(format!("no enabled stage {id:?} in this engine")));
        };
        let mut cx = TurnContext::detached(&s.id);
        match std::panic::catch_unwind(AssertUnwindSafe(|| s.stage.run(turn, &mut cx))) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(stage_error(&s.id, source, None)),
            Err(panic) => Err(panic_error(&s.id, panic.as_ref())),
        }
    }

    /// Run the pipeline over independent turns (of different dialogues),
    /// stage by stage, so that stages that batch ([`Stage::run_batch`]) do.
    pub fn run_batch(&self, turns: &mut [Turn]) -> Result<(), EngineError> {
        self.run_batch_range(turns, 0..self.inner.stages.len())
    }

    /// [`Engine::run_batch`] with the stages at positions `range` only.
    pub(crate) fn run_batch_range(&self, turns: &mut [Turn], range: std::ops::Range<usize>) -> Result<(), EngineError> {
        for s in &self.inner.stages[range] {
            let _span = info_span!("stage_batch", stage = %s.id, turns = turns.len()).entered();
            let mut cx = TurnContext::detached(&s.id);
            match std::panic::catch_unwind(AssertUnwindSafe(|| s.stage.run_batch(turns, &mut cx))) {
                Ok(Ok(())) => {}
                Ok(Err(source)) => return Err(stage_error(&s.id, source, None)),
                Err(panic) => return Err(panic_error(&s.id, panic.as_ref())),
            }
        }
        Ok(())
    }

    /// Replay whole dialogues through the pipeline as sessions would: each
    /// seeker utterance of a script is a turn (its history is everything said
    /// before, as the stages left it); other utterances join the history as
    /// they are. Dialogues advance in lockstep, `batch` turns at a time, so
    /// batching stages see many turns at once. Returns, per script, the
    /// pipeline's turn for each seeker utterance (in order); `progress` gets
    /// the number of turns done so far.
    pub fn replay(
        &self,
        scripts: &[Vec<Utterance>],
        batch: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<Vec<Turn>>, EngineError> {
        self.replay_range(scripts, batch, 0..self.inner.stages.len(), progress)
    }

    /// [`Engine::replay`] through the stages at positions `range` only.
    pub(crate) fn replay_range(
        &self,
        scripts: &[Vec<Utterance>],
        batch: usize,
        range: std::ops::Range<usize>,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<Vec<Turn>>, EngineError> {
        let batch = batch.max(1);
        let mut histories: Vec<Vec<Utterance>> = vec![Vec::new(); scripts.len()];
        let mut cursors = vec![0usize; scripts.len()];
        let mut out: Vec<Vec<Turn>> = vec![Vec::new(); scripts.len()];
        let mut done = 0;
        loop {
            // Next seeker utterance of every unfinished dialogue.
            let mut pending: Vec<(usize, Turn)> = Vec::new();
            for (d, script) in scripts.iter().enumerate() {
                while let Some(u) = script.get(cursors[d]) {
                    cursors[d] += 1;
                    if u.role == Role::Seeker {
                        let mut turn = Turn::new(histories[d].clone(), u.text.clone());
                        turn.user = u.clone();
                        pending.push((d, turn));
                        break;
                    }
                    histories[d].push(u.clone());
                }
            }
            if pending.is_empty() {
                return Ok(out);
            }
            for chunk in pending.chunks_mut(batch) {
                let mut turns: Vec<Turn> = chunk.iter_mut().map(|(_, t)| std::mem::take(t)).collect();
                self.run_batch_range(&mut turns, range.clone())?;
                for ((d, _), turn) in chunk.iter().zip(turns) {
                    histories[*d].clone_from(&turn.history);
                    histories[*d].push(turn.user.clone());
                    out[*d].push(turn);
                }
                done += chunk.len();
                progress(done);
                // Long replays stay visible in logs (progress bars are hidden when stderr is no terminal).
                if done / 2000 != (done - chunk.len()) / 2000 {
                    tracing::info!(turns = done, "replay");
                }
            }
        }
    }
}

/// The error of a stage that returned `source`; an [`Interrupted`] error (or
/// any error while the turn was interrupted) is reported as the interruption.
fn stage_error(stage: &str, source: BoxError, interrupted: Option<Interrupted>) -> EngineError {
    let why = source.downcast_ref::<Interrupted>().copied().or(interrupted);
    match why {
        Some(why) => EngineError::Interrupted { stage: stage.to_string(), why },
        None => EngineError::Stage { stage: stage.to_string(), source },
    }
}

fn panic_error(stage: &str, panic: &(dyn std::any::Any + Send)) -> EngineError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    EngineError::Stage {
        stage: stage.to_string(),
        source: format!("the stage panicked: {what} (a bug in the stage: please report it)").into(),
    }
}

/// How one turn may be stopped early.
#[derive(Debug, Clone, Default)]
pub struct TurnOptions {
    /// Cancelled from another thread, it stops the turn (the running stage
    /// sees it at its next check; no later stage runs).
    pub cancel: Option<CancelToken>,
    /// The longest the turn may take.
    pub deadline: Option<Duration>,
}

/// One dialogue with the engine: keeps the history of utterances.
pub struct Session {
    engine: Engine,
    history: Vec<Utterance>,
}

impl Session {
    /// Run one user turn. On success the history becomes the turn's (as
    /// stages that write `history` left it), then the user utterance (with the
    /// entities and emotions the stages found) and the response, if any, join
    /// it; on failure the history is unchanged and the session stays usable.
    pub fn turn(&mut self, text: &str) -> Result<TurnOutput, EngineError> {
        self.turn_with(text, &TurnOptions::default(), |_| {})
    }

    /// Run one user turn, delivering every event the stages emit (generated
    /// tokens, notes, partial results) to `on_event` while it runs. A
    /// cancelled, late or failed turn leaves the history unchanged.
    pub fn turn_with(
        &mut self,
        text: &str,
        options: &TurnOptions,
        mut on_event: impl FnMut(TurnEvent),
    ) -> Result<TurnOutput, EngineError> {
        if text.trim().is_empty() {
            return Err(EngineError::Input("the utterance is empty: say something".into()));
        }
        if text.len() > MAX_UTTERANCE_BYTES {
            return Err(EngineError::Input(format!(
                "the utterance has {} bytes; the limit is {MAX_UTTERANCE_BYTES}: split it into shorter turns",
                text.len()
            )));
        }
        let mut turn = Turn::new(self.history.clone(), text);
        let trace = self.engine.run_with(&mut turn, options, &mut on_event)?;
        // Stages that declare `history` as a write may enrich it (e.g. link the
        // entities of earlier system responses once); keep what they wrote.
        self.history.clone_from(&turn.history);
        self.history.push(turn.user.clone());
        if let Some(r) = &turn.response {
            self.history.push(Utterance::new(Role::Recommender, r.clone()));
        }
        Ok(TurnOutput { turn, trace })
    }

    /// Add an utterance to the history without running the pipeline (e.g. to
    /// replay a recorded dialogue, or a response produced elsewhere).
    pub fn push(&mut self, utterance: Utterance) {
        self.history.push(utterance);
    }

    /// The dialogue so far, oldest first.
    pub fn history(&self) -> &[Utterance] {
        &self.history
    }

    /// The engine this session runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn engine_and_session_can_cross_threads() {
        assert_send_sync::<Engine>();
        fn send<T: Send>() {}
        send::<Session>();
    }
}
