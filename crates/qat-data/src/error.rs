use std::path::PathBuf;

use thiserror::Error;

/// Why a dataset could not be loaded.
#[derive(Debug, Error)]
pub enum DataError {
    #[error("dataset {name:?} not found; looked in: {searched}.\n{how_to_get}")]
    NotFound {
        name: String,
        searched: String,
        how_to_get: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not an IDX file: {reason}")]
    BadIdx { path: PathBuf, reason: String },
    #[error("{path}: checksum mismatch (sha256 of the decoded content {got}, expected {expected}); the file is corrupt or not the official one")]
    Checksum {
        path: PathBuf,
        got: String,
        expected: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// qat-data's result type.
pub type Result<T> = std::result::Result<T, DataError>;
