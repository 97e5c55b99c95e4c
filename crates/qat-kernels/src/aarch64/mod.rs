//! aarch64 kernels: NEON, dotprod (`sdot`) and i8mm (`usmmla`) GEMM microkernels, and the
//! SIMD requantization epilogue shared by every aarch64 kernel of the crate.
//!
//! Stable Rust has no dotprod / i8mm intrinsics: those instructions are emitted with
//! `core::arch::asm!` inside `#[target_feature(enable = ...)] unsafe fn`s, which callers must
//! only reach after [`crate::Isa::is_supported`] (the GEMM dispatch table does).

pub mod requant;

pub(crate) mod dotprod_gemm_i32_8x8c4;
mod epilogue;
pub(crate) mod i8mm_gemm_i32_8x8c8;
pub(crate) mod neon_gemm_i32_8x8;
