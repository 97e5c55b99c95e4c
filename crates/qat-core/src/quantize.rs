//! Scalar quantize / dequantize / fake-quantize: the formulas every other path agrees with.
//!
//! They follow PyTorch's kernels to the bit: the value is multiplied by the f32 reciprocal of
//! the scale (not divided), rounded half to even, shifted by the zero point, then clamped.

use crate::{QDType, QParams};

/// The f32 reciprocal PyTorch multiplies by (`1.0f / scale`).
#[inline]
pub fn inv_scale(scale: f32) -> f32 {
    1.0 / scale
}

/// `clamp(zero_point + round_half_even(x * inv_scale), quant_min, quant_max)`.
///
/// NaN maps to `quant_min`, as PyTorch's `fmax` / `fmin` do.
///
/// ```
/// use qat_core::{quantize, QDType, QParams};
/// let q = QParams { scale: 0.5, zero_point: 10 };
/// assert_eq!(quantize(1.25, q, QDType::quint8()), 12); // 2.5 rounds to even
/// assert_eq!(quantize(1e9, q, QDType::quint8()), 255);
/// ```
#[inline]
pub fn quantize(x: f32, q: QParams, dtype: QDType) -> i32 {
    quantize_with_inv(
        x,
        inv_scale(q.scale),
        q.zero_point,
        dtype.quant_min,
        dtype.quant_max,
    )
}

/// [`quantize`] with the reciprocal and the bounds already computed (the hot-loop form).
#[inline]
pub fn quantize_with_inv(x: f32, inv_scale: f32, zero_point: i32, qmin: i32, qmax: i32) -> i32 {
    let qf = zero_point as f32 + (x * inv_scale).round_ties_even();
    qf.max(qmin as f32).min(qmax as f32) as i32
}

/// `(q - zero_point) * scale`.
#[inline]
pub fn dequantize(q: i32, p: QParams) -> f32 {
    (q - p.zero_point) as f32 * p.scale
}

/// PyTorch's fake quantize of one value: the dequantized value and whether the unclamped
/// quantized value lies inside the range (the clipped straight-through gradient mask).
///
/// ```
/// use qat_core::{fake_quantize, QDType, QParams};
/// let q = QParams { scale: 0.1, zero_point: 0 };
/// let (y, pass) = fake_quantize(0.26, q, QDType::qint8());
/// assert!((y - 0.3).abs() < 1e-6 && pass);
/// assert_eq!(fake_quantize(100.0, q, QDType::qint8()).1, false);
/// ```
#[inline]
pub fn fake_quantize(x: f32, q: QParams, dtype: QDType) -> (f32, bool) {
    fake_quantize_with_inv(
        x,
        q.scale,
        inv_scale(q.scale),
        q.zero_point,
        dtype.quant_min,
        dtype.quant_max,
    )
}

/// [`fake_quantize`] with the reciprocal and bounds precomputed.
#[inline]
pub fn fake_quantize_with_inv(
    x: f32,
    scale: f32,
    inv_scale: f32,
    zero_point: i32,
    qmin: i32,
    qmax: i32,
) -> (f32, bool) {
    let zp = zero_point as f32;
    let qf = zp + (x * inv_scale).round_ties_even();
    let q = qf.max(qmin as f32).min(qmax as f32);
    let y = (q - zp) * scale;
    (y, qmin as f32 <= qf && qf <= qmax as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_round_to_even() {
        let q = QParams {
            scale: 1.0,
            zero_point: 0,
        };
        let d = QDType::qint8();
        assert_eq!(quantize(0.5, q, d), 0);
        assert_eq!(quantize(1.5, q, d), 2);
        assert_eq!(quantize(2.5, q, d), 2);
        assert_eq!(quantize(-0.5, q, d), 0);
        assert_eq!(quantize(-1.5, q, d), -2);
    }

    #[test]
    fn nan_and_inf() {
        let q = QParams {
            scale: 0.1,
            zero_point: 3,
        };
        let d = QDType::quint8();
        assert_eq!(quantize(f32::NAN, q, d), 0);
        assert_eq!(quantize(f32::INFINITY, q, d), 255);
        assert_eq!(quantize(f32::NEG_INFINITY, q, d), 0);
    }
}
