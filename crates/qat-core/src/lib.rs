//! # qat-core — the numeric spec of candle-qat
//!
//! Quantized dtypes ([`QDType`]), schemes ([`QScheme`]), quantization parameters
//! ([`QParams`], [`TensorQParams`]), PyTorch's rules for choosing them ([`choose_qparams`]),
//! and the scalar quantize / dequantize / fake-quantize / requantize formulas. Observers,
//! fake-quant ops and int8 kernels all agree with these functions; nothing here depends on
//! candle.
//!
//! ```
//! use qat_core::*;
//! let dtype = QDType::quint8();
//! let q = choose_qparams(-0.5, 1.5, dtype, false, DEFAULT_EPS).unwrap();
//! let x = 0.7f32;
//! let y = dequantize(quantize(x, q, dtype), q);
//! assert!((x - y).abs() <= q.scale / 2.0);
//! ```

mod dtype;
mod error;
mod qarith;
mod qparams;
mod quantize;
mod requant;
mod scheme;

pub use dtype::{QDType, Signedness};
pub use error::{QuantError, Result};
pub use qarith::{add_multipliers, avg_pool_multiplier, global_avg_pool, quantized_add};
pub use qparams::{
    choose_qparams, choose_qparams_per_channel, QParams, TensorQParams, DEFAULT_EPS,
};
pub use quantize::{
    dequantize, fake_quantize, fake_quantize_with_inv, inv_scale, quantize, quantize_with_inv,
};
pub use requant::{requant_multiplier, requantize, Requant};
pub use scheme::QScheme;
