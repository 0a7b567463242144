//! The engine (a built pipeline), sessions (one dialogue each) and the turn runner.
//!
//! ```no_run
//! use ecr_engine::{Engine, Registry};
//! let engine = Engine::from_recipe_with("recipes/lua-only.toml", &Registry::new())?;
//! let mut session = engine.session();
//! let out = session.turn("I loved Inception")?;
//! for t in &out.trace {
//!     println!("{}: {:?}", t.stage, t.duration);
//! }
//! # Ok::<(), ecr_engine::EngineError>(())
//! ```

use crate::recipe::{Recipe, RecipeError};
use crate::registry::Registry;
use crate::stage::{BoxError, Stage, StageIo};
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
    /// The user input cannot be processed.
    #[error("bad input: {0}")]
    Input(String),
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
        let mut stages = Vec::new();
        let mut failures = Vec::new();
        for s in recipe.stages().iter().filter(|s| s.enabled) {
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
        let mut trace = Vec::with_capacity(self.inner.stages.len());
        for s in &self.inner.stages {
            let span = info_span!("stage", stage = %s.id, use_name = %s.use_name);
            let _enter = span.enter();
            let start = Instant::now();
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| s.stage.run(turn)));
            let duration = start.elapsed();
            tracing::debug!(duration_us = duration.as_micros() as u64, "stage done");
            match result {
                Ok(Ok(())) => trace.push(StageTiming { stage: s.id.clone(), duration }),
                Ok(Err(source)) => return Err(EngineError::Stage { stage: s.id.clone(), source }),
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    return Err(EngineError::Stage {
                        stage: s.id.clone(),
                        source: format!("the stage panicked: {what} (a bug in the stage: please report it)").into(),
                    });
                }
            }
        }
        Ok(trace)
    }
}

/// One dialogue with the engine: keeps the history of utterances.
pub struct Session {
    engine: Engine,
    history: Vec<Utterance>,
}

impl Session {
    /// Run one user turn. On success the history becomes the turn's (as
    /// stages that write `history` left it), then the user utterance (with the
    /// entities and emotions the stages found) and the response, if any, join it; on failure the history is unchanged and the session stays usable.
    pub fn turn(&mut self, text: &str) -> Result<TurnOutput, EngineError> {
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
        let trace = self.engine.run(&mut turn)?;
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
