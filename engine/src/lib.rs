//! `ecr-engine`: the core of ecr, an engine for empathetic conversational
//! recommendation.
//!
//! A **recipe** (TOML) declares a turn pipeline of **stages**; the engine
//! validates it, builds every stage once, and runs the pipeline once per user
//! turn over a typed [`Turn`] record. Stages are built-in Rust types
//! registered in a [`Registry`], Lua scripts ([`lua`]) or dynamic libraries
//! ([`dylib`]). This crate has no ML dependencies.

pub mod dylib;
pub mod emotion;
pub mod engine;
pub mod lua;
pub mod recipe;
pub mod registry;
pub mod stage;
pub mod turn;

pub use emotion::{Emotion, EmotionDist};
pub use engine::{Engine, EngineError, Session, StageTiming, TurnOutput};
pub use recipe::{Diagnostic, Recipe, RecipeError, RecipeStage};
pub use registry::Registry;
pub use stage::{BoxError, BuildContext, ConfigIssue, Stage, StageFactory, StageIo};
pub use turn::{
    Candidate, EntityEmotion, EntityKind, EntityMention, Fact, Feedback, Field, GlobalEntity, ItemFeedback, Passage,
    Role, Turn, Utterance,
};
