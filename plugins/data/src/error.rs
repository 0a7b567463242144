//! The error type of the data layer: every variant names the file (and the
//! line or key when there is one) and says what was expected.

use std::path::PathBuf;

/// An error while finding, reading or interpreting the data files.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The data directory could not be found.
    #[error("{0}")]
    NoDataDir(String),
    /// A file could not be read.
    #[error("cannot read {}: {source} (is the data directory complete? see shared/data/README.md)", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A line of a JSON Lines / CSV file is malformed.
    #[error("{}:{line}: {message}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was wrong and what was expected.
        message: String,
    },
    /// A whole-file JSON document (or one of its keys) is malformed.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong and what was expected (naming the key when there is one).
        message: String,
    },
    /// A configuration value is invalid.
    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io { path: path.into(), source }
    }

    /// A problem at `line` (1-based) of `path`.
    pub fn line(path: impl Into<PathBuf>, line: usize, message: impl Into<String>) -> Self {
        DataError::Line { path: path.into(), line, message: message.into() }
    }

    /// A problem with the file `path` as a whole or one of its keys.
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::File { path: path.into(), message: message.into() }
    }
}
