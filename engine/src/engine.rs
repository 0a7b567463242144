//! The engine, sessions and the pipeline runner. PLACEHOLDER.

use crate::turn::Turn;
use std::time::Duration;

/// Error of one turn or of building an engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The recipe is invalid.
    #[error("{0}")]
    Recipe(#[from] crate::recipe::RecipeError),
}

/// How long one stage took.
#[derive(Debug, Clone)]
pub struct StageTiming {
    /// Stage id.
    pub stage: String,
    /// Wall time.
    pub duration: Duration,
}

/// The result of one turn.
#[derive(Debug, Clone)]
pub struct TurnOutput {
    /// The turn record after the pipeline.
    pub turn: Turn,
    /// Per-stage timings.
    pub trace: Vec<StageTiming>,
}

/// A built pipeline. PLACEHOLDER.
#[derive(Clone)]
pub struct Engine;

/// One dialogue. PLACEHOLDER.
pub struct Session;
