//! x86-64 kernels: AVX2, AVX-VNNI and AVX-512 VNNI GEMM microkernels, and the SIMD
//! requantization epilogue shared by every x86 kernel of the crate.
//!
//! Every SIMD function here is a `#[target_feature(enable = ...)] unsafe fn`: callers must
//! check [`crate::Isa::is_supported`] first (the GEMM dispatch table does).

pub mod requant;

pub(crate) mod avx2_gemm_i32_4x16c2;
pub(crate) mod avx512vnni_gemm_i32_8x48c4;
pub(crate) mod avxvnni_gemm_i32_6x16c4;
mod epilogue_ymm;
