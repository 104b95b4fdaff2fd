//! Library error type.

use std::path::PathBuf;

/// Errors of the fabric-inspect library, grouped by theme.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An image could not be decoded or is not usable.
    #[error("image {path}: {msg}")]
    Image { path: PathBuf, msg: String },
    /// A model folder or its metadata is missing or not understood.
    #[error("model {path}: {msg}")]
    Model { path: PathBuf, msg: String },
    /// A dataset folder does not have the expected layout.
    #[error("dataset {path}: {msg}")]
    Dataset { path: PathBuf, msg: String },
    /// Inputs to a computation do not fit together (shapes, sizes, counts).
    #[error("{op}: expected {expected}, got {got}")]
    Shape {
        op: &'static str,
        expected: String,
        got: String,
    },
    /// A metric cannot be computed from the given labels or scores.
    #[error("metric {metric}: {msg}")]
    Metric { metric: &'static str, msg: String },
    /// Anything else, with a message that names what failed.
    #[error("{0}")]
    Other(String),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the operation and the path it concerned.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
