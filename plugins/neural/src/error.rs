//! The error type of the neural stages: every variant names the file or the
//! setting it is about and says what to do.

use std::path::PathBuf;

/// An error while loading, running, training or saving a neural model.
#[derive(Debug, thiserror::Error)]
pub enum NeuralError {
    /// Pretrained weights are missing.
    #[error("model file {} is missing: run models/fetch.sh to download and verify the pretrained weights", path.display())]
    MissingModel {
        /// The file that should exist.
        path: PathBuf,
    },
    /// A file could not be read or written.
    #[error("cannot access {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its content is not what it should be (a corrupted
    /// checkpoint or cache, a config that does not parse).
    #[error("{}: {message}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A tensor operation failed.
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// The data layer failed (annotations, dialogues).
    #[error(transparent)]
    Data(#[from] ecr_data::DataError),
    /// A configuration value or an argument is invalid.
    #[error("{0}")]
    Invalid(String),
}

impl NeuralError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        NeuralError::Io { path: path.into(), source }
    }

    /// A problem with the content of `path`.
    pub fn bad_file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        NeuralError::BadFile { path: path.into(), message: message.into() }
    }
}

/// Result with [`NeuralError`].
pub type Result<T, E = NeuralError> = std::result::Result<T, E>;
