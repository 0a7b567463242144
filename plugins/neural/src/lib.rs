//! `ecr-neural`: the MiniLM sentence encoder and the emotion tagger, in candle.

pub mod cache;
pub mod error;
pub mod text;

pub use cache::{EmbeddingCache, embed_cached};
pub use error::{NeuralError, Result};
pub use text::{EncoderOptions, TextEncoder};
