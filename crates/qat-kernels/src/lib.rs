//! # qat-kernels — int8 SIMD CPU kernels with a scalar reference

pub mod activation;
pub mod error;
pub mod isa;
pub use activation::Activation;
pub use error::{KernelError, Result};
pub use isa::Isa;
