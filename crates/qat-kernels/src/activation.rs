//! Fused activations, expressed as quantized output bounds.
//!
//! A ReLU or ReLU6 after a quantized op is nothing but a tighter clamp on the quantized output:
//! real 0 is the output zero point, real 6 is `quantize(6.0)`. Every kernel takes the bounds
//! from [`Activation::bounds`], so the fused activation costs nothing.

use qat_core::QParams;

/// The activation fused into a kernel's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Activation {
    /// Clamp to the u8 range only.
    #[default]
    None,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// Explicit u8 bounds `[qmin, qmax]` (`qmin <= qmax`), e.g. a fake-quant's narrowed range
    /// (`reduce_range`: `[0, 127]`) combined with a fused ReLU, so the int8 output clamps
    /// exactly where the fake-quant did.
    Clamp { qmin: u8, qmax: u8 },
}

impl Activation {
    /// The quantized u8 bounds `[qmin, qmax]` for an output with these parameters.
    ///
    /// ```
    /// use qat_core::QParams;
    /// use qat_kernels::Activation;
    /// let out = QParams { scale: 0.05, zero_point: 3 };
    /// assert_eq!(Activation::None.bounds(out), (0, 255));
    /// assert_eq!(Activation::Relu.bounds(out), (3, 255));
    /// assert_eq!(Activation::Relu6.bounds(out), (3, 123));
    /// assert_eq!(Activation::Clamp { qmin: 3, qmax: 127 }.bounds(out), (3, 127));
    /// ```
    pub fn bounds(self, out: QParams) -> (i32, i32) {
        let zp = out.zero_point.clamp(0, 255);
        match self {
            Activation::None => (0, 255),
            Activation::Relu => (zp, 255),
            Activation::Relu6 => {
                let six = qat_core::quantize_with_inv(
                    6.0,
                    qat_core::inv_scale(out.scale),
                    out.zero_point,
                    0,
                    255,
                );
                (zp, six.max(zp))
            }
            // A reversed pair would make the kernels' clamp order-dependent: keep it ordered.
            Activation::Clamp { qmin, qmax } => (qmin.min(qmax) as i32, qmax.max(qmin) as i32),
        }
    }
}
