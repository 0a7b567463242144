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
pub mod fingerprint;
pub mod lua;
pub mod paths;
pub mod recipe;
pub mod registry;
pub mod replay;
pub mod resources;
pub mod stage;
pub mod train;
pub mod turn;

pub use emotion::{Emotion, EmotionDist};
pub use engine::{Engine, EngineError, Session, StageTiming, TurnOptions, TurnOutput};
pub use fingerprint::Fingerprint;
pub use recipe::{Diagnostic, Recipe, RecipeError, RecipeStage};
pub use registry::Registry;
pub use resources::{ResourceKey, Resources};
pub use stage::{
    BoxError, BuildContext, CancelToken, ConfigIssue, Event, Interrupted, Stage, StageFactory, StageIo, TurnContext,
    TurnEvent,
};
pub use train::{EvalReport, EvalSplit, JobOptions, TrainContext, TrainReport, TrainStatus, Trainable};
pub use turn::{
    Candidate, EntityEmotion, EntityKind, EntityMention, Fact, Feedback, Field, GlobalEntity, ItemFeedback, Passage,
    Role, Turn, Utterance,
};
