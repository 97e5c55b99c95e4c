//! # qat-kernels — int8 SIMD CPU kernels with a scalar reference

pub mod isa;
pub use isa::Isa;
