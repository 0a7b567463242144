//! `ecr`: empathetic conversational recommendation as an embeddable engine.
//!
//! This facade is the one crate a host application depends on. It re-exports
//! the engine ([`ecr_engine`]) and the built-in stages, and its [`Engine`]
//! knows every built-in stage:
//!
//! ```no_run
//! let engine = ecr::Engine::from_recipe("recipes/ecr.toml")?; // builds every stage once; Send + Sync
//! let mut session = engine.session();                        // one dialogue; cheap
//! let out = session.turn("I loved Inception but the ending of Titanic made me sad")?;
//! println!("{:?} {:?}", out.turn.user.entities, out.turn.user.emotions);
//! # Ok::<(), ecr::EngineError>(())
//! ```

pub mod bench;
pub mod compare;

pub use ecr_data as data;
pub use ecr_engine::*;
pub use ecr_llm as llm;
pub use ecr_neural as neural;
pub use ecr_plugins::respond;
pub use ecr_plugins::{register_builtins, registry};

use std::path::Path;

/// An [`ecr_engine::Engine`] built with every built-in stage registered.
///
/// Dereferences to the engine, so `session()`, `run()`, `recipe()` and
/// `stages()` work as documented there.
#[derive(Clone, Debug)]
pub struct Engine(ecr_engine::Engine);

impl Engine {
    /// Load, validate and build a recipe with the engine's stages (`lua`,
    /// `dylib`) and every built-in ECR stage.
    pub fn from_recipe(path: impl AsRef<Path>) -> Result<Engine, EngineError> {
        Self::from_recipe_with(path, &registry())
    }

    /// Load, validate and build a recipe with the factories of `registry`
    /// (start from [`registry()`] to add your own stages to the built-ins).
    pub fn from_recipe_with(path: impl AsRef<Path>, registry: &Registry) -> Result<Engine, EngineError> {
        ecr_engine::Engine::from_recipe_with(path, registry).map(Engine)
    }

    /// The inner engine.
    pub fn into_inner(self) -> ecr_engine::Engine {
        self.0
    }
}

impl std::ops::Deref for Engine {
    type Target = ecr_engine::Engine;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}
