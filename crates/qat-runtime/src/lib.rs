//! # qat-runtime — the int8 model of candle-qat
//!
//! A [`QuantizedModel`] is a **plan**: a list of ops, each producing one named value, run in
//! order on NHWC buffers. Quantized values are u8 (affine, one scale / zero point each);
//! weights are i8 symmetric per output channel with i32 biases; layers left in float run as
//! f32 **islands** between a `Dequantize` and a `Quantize`.
//!
//! | op | in → out | kernel |
//! |---|---|---|
//! | (entry) | f32 NCHW → u8 NHWC | `quantize_u8` + transpose |
//! | `quantize` / `dequantize` | f32 ⇄ u8 | element-wise kernels |
//! | `conv2d` | u8 → u8 | depthwise: direct kernel; 1×1 s1: GEMM over pixels; few input channels (the stem, AVX-512 VBMI): direct kernel; else im2col + GEMM per group |
//! | `linear` | u8 `[C,1,1]` → u8 | one GEMM over the batch |
//! | `add` (+ReLU) | u8, u8 → u8 | quantized add (different scales) |
//! | `global_avg_pool` | u8 `[C,H,W]` → u8 `[C,1,1]` | pool kernel |
//! | `flatten` | `[C,1,1]` → same | none (shares the buffer) |
//! | `float_linear`, `float_conv1x1`, `float_relu`, `float_hardswish`, `float_add` | f32 → f32 | plain loops |
//!
//! Requantization follows [`qat_core::requantize`] with per-channel multipliers from
//! [`qat_core::requant_multiplier`]; ReLU / ReLU6 are output clamps
//! ([`qat_kernels::Activation::bounds`]). Results are bit-identical for every ISA and thread
//! count.
//!
//! ## Building
//!
//! [`ModelBuilder`] takes canonical weights (i8 OIHW, per-channel scales, f32 or i32 bias) and
//! validates each op as it is added; [`ModelBuilder::build`] packs every op once for the CPU
//! ([`qat_kernels::isa::active`]) or a forced ISA ([`ModelOptions::isa`]).
//!
//! ## Buffers
//!
//! The plan assigns each value a slot (a buffer shared by values whose lifetimes do not
//! overlap). An arena of slots is allocated on the first call with a given batch size and kept
//! in a pool behind a mutex; a call takes an arena, runs, and gives it back, so concurrent
//! calls each use their own buffers and repeated calls allocate nothing (use
//! [`QuantizedModel::run_into`] to avoid the output `Vec` too; the depthwise kernel still keeps
//! a small per-call pointer list of its own).
//!
//! ## File format
//!
//! See [`format`](mod@format): safetensors with canonical weights and the plan as versioned
//! JSON in the metadata; packing happens at load, so one file runs on x86 and ARM.

mod builder;
mod error;
mod exec;
mod float_ops;
pub mod format;
mod inspect;
mod model;
mod op;
mod plan;
mod profile;
mod thread_policy;

pub use builder::{InputSpec, ModelBuilder, MAX_VALUE_ELEMS};
pub use error::{Result, RuntimeError};
pub use model::{ModelOptions, QuantizedModel, TracedValue, ValueData};
pub use op::{Bias, Conv2dParams, LinearParams, Node, Op, Shape, ValueType};
pub use profile::OpTiming;
pub use qat_kernels::{Activation, Isa};
