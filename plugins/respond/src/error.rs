//! The error type of the response-knowledge crate: every variant names the
//! file, key or stage it is about and says what to do.

use std::path::PathBuf;

/// An error while building, loading or using the review database, the
/// retriever, the prompt builder or the metrics.
#[derive(Debug, thiserror::Error)]
pub enum RespondError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its content is not what was expected.
    #[error("{}: {message}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What was wrong and what to do.
        message: String,
    },
    /// The data layer failed.
    #[error(transparent)]
    Data(#[from] ecr_data::DataError),
    /// The text encoder failed.
    #[error(transparent)]
    Neural(#[from] ecr_neural::NeuralError),
    /// A value is invalid (a configuration key, a budget too small for the template).
    #[error("{0}")]
    Invalid(String),
}

impl RespondError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RespondError::Io { path: path.into(), source }
    }

    /// A problem with the content of `path`.
    pub fn bad_file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        RespondError::BadFile { path: path.into(), message: message.into() }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, RespondError>;
