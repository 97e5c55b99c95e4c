//! [`PipelineError`]: everything the main job can fail on, each naming what went wrong.

use std::path::PathBuf;

use thiserror::Error;

/// Why a pipeline stage failed.
#[derive(Debug, Error)]
pub enum PipelineError {
    #[error(transparent)]
    Graph(#[from] qat_graph::GraphError),
    #[error(transparent)]
    Data(#[from] qat_data::DataError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Runtime(#[from] qat_runtime::RuntimeError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("plot {path}: {msg}")]
    Plot { path: PathBuf, msg: String },
    #[error("{0}")]
    Invalid(String),
}

/// The pipeline's result type.
pub type Result<T> = std::result::Result<T, PipelineError>;

/// Attach a path to an I/O error.
pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> PipelineError {
    let path = path.into();
    move |source| PipelineError::Io { path, source }
}
