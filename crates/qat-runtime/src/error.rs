//! The crate's one error type: building, loading and running a model report what went wrong
//! and where (the op's name), never panic.

use thiserror::Error;

/// Everything the runtime can refuse.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// An op (named) has inconsistent parameters: shapes, channels, qparams, names.
    #[error("op `{op}`: {msg}")]
    Op { op: String, msg: String },
    /// A kernel refused the op's parameters when packing.
    #[error("op `{op}`: {source}")]
    Kernel {
        op: String,
        #[source]
        source: qat_kernels::KernelError,
    },
    /// The model as a whole is unusable (no input, no output, unknown output name, ...).
    #[error("model: {0}")]
    Model(String),
    /// The arguments of a `run` call do not fit the model.
    #[error("run: {0}")]
    Input(String),
    /// A model file that is not a valid candle-qat int8 model.
    #[error("model file: {0}")]
    Format(String),
    /// Reading or writing the file failed.
    #[error("model file I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, RuntimeError>;

/// Shorthand for [`RuntimeError::Op`].
pub(crate) fn op_err(op: &str, msg: impl Into<String>) -> RuntimeError {
    RuntimeError::Op {
        op: op.to_string(),
        msg: msg.into(),
    }
}

/// Tag a kernel error with the op it came from.
pub(crate) fn kernel_err(op: &str) -> impl FnOnce(qat_kernels::KernelError) -> RuntimeError + '_ {
    move |source| RuntimeError::Kernel {
        op: op.to_string(),
        source,
    }
}
