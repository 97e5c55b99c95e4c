//! # qat-kernels — int8 SIMD CPU kernels with a scalar reference

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
pub mod activation;
pub mod conv;
pub mod dwconv;
pub mod elementwise;
pub mod error;
mod fold;
pub mod gemm;
pub mod isa;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;
pub use activation::Activation;
pub use error::{KernelError, Result};
pub use isa::Isa;
