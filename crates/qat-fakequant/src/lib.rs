//! # qat-fakequant — fake quantization for candle, with straight-through gradients
//!
//! Fake quantization rounds a float tensor onto the integer grid it will have after
//! conversion and maps it straight back, so training sees the quantization error:
//!
//! ```text
//! q = clamp(zero_point + round_half_even(x * (1/scale)), quant_min, quant_max)
//! y = (q - zero_point) * scale
//! ```
//!
//! **Rounding** is PyTorch's exactly: multiply by the f32 reciprocal of the scale (never
//! divide), round half to even (`nearbyint`), add the zero point, clamp; NaN maps to
//! `quant_min`. Every path here — the fused CPU kernels on each ISA and the device-generic
//! `*_slow` compositions — is bit-identical to [`qat_core::fake_quantize_with_inv`].
//!
//! **Gradients.** Rounding has a zero derivative almost everywhere, so fake quantization
//! uses the *clipped straight-through estimator* (STE): the backward pass treats rounding as
//! the identity inside the representable range and as a constant outside it,
//! `grad_x = grad_y * [quant_min <= zero_point + round(x/scale) <= quant_max]`. The fused
//! backward recomputes that mask from `x` in one pass instead of storing it.
//!
//! The learnable variants ([`fake_quantize_learnable_per_tensor`],
//! [`fake_quantize_learnable_per_channel`]; LSQ / LSQ+) also return gradients for the scale
//! and the zero point, PyTorch's `_fake_quantize_learnable_*_affine` formulas.
//!
//! Modules: [`FakeQuantize`] (any observer + fake quantization, each switched on its own),
//! [`FusedMovingAvgObsFakeQuantize`] (the moving-average observer fused in, PyTorch's default
//! for QAT) and [`LearnableFakeQuantize`] (LSQ). Their state is exported with PyTorch's
//! `state_dict` names.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! let x = Tensor::new(&[0.05f32, 0.15, 0.25, 9.0], &Device::Cpu).unwrap();
//! let y = qat_fakequant::fake_quantize_per_tensor(&x, 0.1, 0, 0, 15).unwrap();
//! // 0.5 -> 0, 1.5 -> 2, 2.5 -> 2 (half to even); 90 clamps to 15.
//! assert_eq!(y.to_vec1::<f32>().unwrap(), [0.0, 0.2, 0.2, 1.5]);
//! ```

mod check;
mod fake_quant;
mod fused;
pub mod kernels;
mod learnable;
mod learnable_module;
mod module;
mod op;
mod slow;
mod state;
mod switches;

pub use fake_quant::{
    fake_quantize_per_channel, fake_quantize_per_channel_slow, fake_quantize_per_tensor,
    fake_quantize_per_tensor_slow,
};
pub use fused::{FusedMovingAvgObsFakeQuantize, RangeFeed};
pub use learnable::{fake_quantize_learnable_per_channel, fake_quantize_learnable_per_tensor};
pub use learnable_module::LearnableFakeQuantize;
pub use module::FakeQuantize;
pub use slow::round_half_even_slow;
pub use state::{State, OBSERVER_PREFIX};
