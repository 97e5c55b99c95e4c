//! # candle-qat
//!
//! Quantization-aware training on [candle](https://github.com/huggingface/candle), and int8
//! inference on our own SIMD CPU kernels. This crate re-exports the workspace's crates:
//!
//! * [`core`] (`qat-core`): the numeric spec — dtypes, schemes, qparams, (fake-)quantize,
//!   requantize.
//! * [`observer`] (`qat-observer`): observers that pick qparams from data.
//! * [`fakequant`] (`qat-fakequant`): fake-quant candle ops with straight-through gradients and
//!   the `FakeQuantize` module.
//!
//! Most users want the [`prelude`].

pub use qat_core as core;
pub use qat_fakequant as fakequant;
pub use qat_observer as observer;

/// The names a typical program uses.
pub mod prelude {
    pub use qat_core::{
        choose_qparams, dequantize, quantize, QDType, QParams, QScheme, TensorQParams,
    };
}
