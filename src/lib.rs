//! `ecr`: empathetic conversational recommendation as an embeddable engine.
//!
//! This facade re-exports the engine and the built-in stages so that a host
//! application depends on one crate.

pub use ecr_data as data;
pub use ecr_engine::*;
pub use ecr_neural as neural;
pub use ecr_plugins::{register_builtins, registry};
