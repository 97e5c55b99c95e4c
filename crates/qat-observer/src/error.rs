use thiserror::Error;

/// Why an observer refused.
#[derive(Debug, Error)]
pub enum ObserverError {
    #[error("{observer}: the observed tensor has {count} non-finite values (NaN or Inf); state left unchanged")]
    NonFinite {
        observer: &'static str,
        count: usize,
    },
    #[error("{observer}: cannot observe an empty tensor")]
    Empty { observer: &'static str },
    #[error("{observer}: channel axis {axis} out of range for a tensor of rank {rank}")]
    BadAxis {
        observer: &'static str,
        axis: usize,
        rank: usize,
    },
    #[error("{observer}: {msg}")]
    Invalid { observer: &'static str, msg: String },
    #[error(transparent)]
    Quant(#[from] qat_core::QuantError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// qat-observer's result type.
pub type Result<T> = std::result::Result<T, ObserverError>;
