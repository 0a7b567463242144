//! `ecr-llm`: a Llama-architecture language model loaded from a GGUF file.
//!
//! It knows nothing of ECR or of the engine, so it can be tested, benchmarked and reused alone:
//!
//! - [`gguf`]: open a GGUF file, read the model's [`LlamaConfig`] and its tensors;
//! - [`tokenizer`]: the gpt2-style byte-level BPE tokenizer built from the GGUF metadata, and
//!   [`tokenizer::TextStream`], which turns token bytes into valid UTF-8 pieces;
//! - [`sampling`]: greedy and seeded temperature/top-p sampling, no-repeat-n-gram;
//! - [`Llm`]: the loaded model (weights shared, `Send + Sync`) with two decoders behind one API,
//!   our own [`fast`] decoder (quantized AVX-512 VNNI / AVX2 kernels, a persistent thread pool) and
//!   candle's `quantized_llama` as the reference ([`DecoderKind`]);
//! - [`Session`]: one generation's state (the KV cache) and [`Llm::generate`] with a per-piece
//!   callback that can stop it;
//! - [`lora`]: LoRA adapters (training-time application, merging, their safetensors files) and
//!   [`dense`]: the model in f32 on differentiable candle operations, to train them on;
//! - [`bench`]: prompt and generation throughput of both decoders side by side.
//!
//! ```no_run
//! use ecr_llm::{GenerateParams, Llm, LoadOptions};
//! let llm = Llm::load("models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf", &LoadOptions::default())?;
//! let prompt = "<|im_start|>user\nRecommend a movie.<|im_end|>\n<|im_start|>assistant\n";
//! let out = llm.generate(prompt, &GenerateParams::default(), |piece| {
//!     print!("{piece}");
//!     std::ops::ControlFlow::Continue(())
//! })?;
//! println!("\n{} tokens, stopped by {:?}", out.tokens.len(), out.stop);
//! # Ok::<(), ecr_llm::LlmError>(())
//! ```

pub mod bench;
mod candle_ref;
pub mod dense;
pub mod fast;
mod generate;
pub mod gguf;
pub mod lora;
pub mod sampling;
pub mod tokenizer;

pub use generate::{DecoderKind, GenerateParams, Generation, Llm, LoadOptions, Session, StopReason, Timings};
pub use gguf::LlamaConfig;
pub use sampling::{SamplingParams, Spared};
pub use tokenizer::LlmTokenizer;

use std::path::PathBuf;

/// Everything that can go wrong loading or running a model; each error says what to check.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// A file could not be read.
    #[error("{}: {source} (run models/fetch.sh to download the model)", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The GGUF file lacks something the decoder needs, or has it in an unsupported form.
    #[error("{}: {msg}", path.display())]
    Model {
        /// The model file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// Building or running the tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// candle reported an error (reference decoder, tensor loading).
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// The caller asked for something impossible (e.g. an empty prompt, a prompt past the context).
    #[error("{0}")]
    Invalid(String),
}

/// Result alias of this crate.
pub type Result<T, E = LlmError> = std::result::Result<T, E>;

// The model is shared by sessions on any thread; a session may move to another thread.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    const fn movable<T: Send>() {}
    shared::<Llm>();
    movable::<Session<'static>>();
};
