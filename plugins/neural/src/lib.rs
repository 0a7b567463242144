//! `ecr-neural`: the MiniLM sentence encoder and the emotion tagger, in candle.
//!
//! * [`device`]: the candle device of a build context ([`device_of`]).
//! * [`text`]: the MiniLM sentence encoder; [`cache`]: its on-disk embedding cache.
//! * [`tagger`]: the emotion tagger (MiniLM, fine-tuned or frozen, + a trained MLP head),
//!   its checkpoints; [`train`]: its training; [`trainer`]: its side of the
//!   engine's training contract; [`metrics`] and [`baselines`]: its evaluation.

pub mod baselines;
pub mod bert;
pub mod cache;
pub mod checkpoint;
pub mod device;
pub mod error;
pub mod evaluate;
pub mod fit;
pub mod metrics;
pub mod recommend;
pub mod rng;
pub mod stage;
pub mod tagger;
pub mod text;
pub mod train;
pub mod trainer;

pub use cache::{EmbeddingCache, embed_cached};
pub use device::device_of;
pub use error::{NeuralError, Result};
pub use stage::{EmotionTaggerConfig, EmotionTaggerFactory};
pub use tagger::{EmotionTagger, TaggerInput};
pub use text::{EncoderOptions, TextEncoder, TextEncoderKey};
pub use trainer::TaggerTrainer;
