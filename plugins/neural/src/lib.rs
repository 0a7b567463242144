//! `ecr-neural`: the MiniLM sentence encoder and the emotion tagger, in candle.
//!
//! * [`text`]: the MiniLM sentence encoder; [`cache`]: its on-disk embedding cache.
//! * [`tagger`]: the emotion tagger (frozen MiniLM features + a trained MLP head),
//!   its checkpoints; [`train`]: its training; [`metrics`] and [`baselines`]: its evaluation.

pub mod baselines;
pub mod bert;
pub mod cache;
pub mod checkpoint;
pub mod error;
pub mod evaluate;
pub mod fit;
pub mod label;
pub mod metrics;
pub mod recommend;
pub mod rng;
pub mod stage;
pub mod tagger;
pub mod text;
pub mod train;

pub use cache::{EmbeddingCache, embed_cached};
pub use error::{NeuralError, Result};
pub use stage::{EmotionTaggerConfig, EmotionTaggerFactory};
pub use tagger::{EmotionTagger, TaggerInput};
pub use text::{EncoderOptions, TextEncoder};
