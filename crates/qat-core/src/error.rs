use thiserror::Error;

/// Everything qat-core can refuse.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum QuantError {
    #[error("invalid quantized range [{quant_min}, {quant_max}]: {reason}")]
    InvalidRange {
        quant_min: i32,
        quant_max: i32,
        reason: &'static str,
    },
    #[error("invalid bit width {0}: supported widths are 2..=8")]
    InvalidBits(u32),
    #[error("invalid observed range: min {min} > max {max}")]
    MinGreaterThanMax { min: f32, max: f32 },
    #[error("non-finite observed range: min {min}, max {max}")]
    NonFiniteRange { min: f32, max: f32 },
    #[error("invalid scale {0}: a scale must be finite and > 0")]
    InvalidScale(f32),
    #[error("zero point {zero_point} outside the quantized range [{quant_min}, {quant_max}]")]
    ZeroPointOutOfRange {
        zero_point: i32,
        quant_min: i32,
        quant_max: i32,
    },
    #[error("invalid eps {0}: eps must be finite and > 0")]
    InvalidEps(f32),
    #[error("{what}: expected {expected} values, got {got}")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{0}")]
    Invalid(String),
}

/// qat-core's result type.
pub type Result<T> = std::result::Result<T, QuantError>;
