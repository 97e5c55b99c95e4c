//! The crate's one error type: every kernel entry point validates its arguments and returns
//! one of these instead of panicking or producing a silently wrong number.

use thiserror::Error;

/// Everything a kernel can refuse.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum KernelError {
    /// A buffer does not hold exactly the number of elements its shape implies.
    #[error("{what}: expected {expected} elements, got {got}")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// A dimension is zero or the shape is otherwise unusable.
    #[error("invalid shape: {0}")]
    Shape(String),
    /// A stride, padding, dilation, kernel size or group count that cannot be used.
    #[error("invalid parameter: {0}")]
    Param(String),
    /// A scale (or derived multiplier) that is not finite and > 0.
    #[error("invalid scale {value} for {what}: a scale must be finite and > 0")]
    Scale { what: &'static str, value: f32 },
    /// A zero point outside the quantized range of its dtype.
    #[error("zero point {value} for {what} is outside [{min}, {max}]")]
    ZeroPoint {
        what: &'static str,
        value: i32,
        min: i32,
        max: i32,
    },
    /// The requested ISA cannot run on this CPU.
    #[error("ISA {0} is not supported on this CPU")]
    Unsupported(crate::Isa),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, KernelError>;

/// `Err` unless `scale` is finite and > 0.
pub fn check_scale(what: &'static str, value: f32) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(KernelError::Scale { what, value })
    }
}

/// `Err` unless `got == expected`.
pub fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(KernelError::Length {
            what,
            expected,
            got,
        })
    }
}

/// `Err` unless `zp` lies in `[min, max]`.
pub fn check_zero_point(what: &'static str, value: i32, min: i32, max: i32) -> Result<()> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(KernelError::ZeroPoint {
            what,
            value,
            min,
            max,
        })
    }
}

/// `Err` unless `isa` runs on this CPU.
pub fn check_isa(isa: crate::Isa) -> Result<()> {
    if isa.is_supported() {
        Ok(())
    } else {
        Err(KernelError::Unsupported(isa))
    }
}
