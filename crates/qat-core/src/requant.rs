//! Requantization: the one normative definition that turns an i32 accumulator into a
//! quantized output, used by the scalar reference kernels, every SIMD kernel, and the
//! fake-quant graph's integer-exact mode.
//!
//! # Why the fp32 flavour
//!
//! We follow XNNPACK's `fp32` requantization rather than gemmlowp's fixed-point one:
//!
//! ```text
//! out = clamp(round_half_even(f32(acc) * multiplier), qmin - zp, qmax - zp) + zp
//! ```
//!
//! * It is what PyTorch's x86 backend (FBGEMM) does, so converted models agree with PyTorch's
//!   int8 results more often than a fixed-point multiplier would.
//! * It is cheap and exact on every ISA: `i32 → f32` conversion, one multiply (never an FMA),
//!   a clamp and a round-to-nearest-even conversion are IEEE-754 operations with a single
//!   correct result, available as single instructions on SSE/AVX (`cvtdq2ps`, `mulps`,
//!   `minps`/`maxps`, `cvtps2dq` under the default rounding mode) and NEON (`scvtf`, `fmul`,
//!   `fmin`/`fmax`, `fcvtns`).
//! * The fake-quant simulation can reproduce it with plain f32 tensor ops.
//!
//! Clamping happens *before* the conversion to integer, so no lane ever converts an
//! out-of-range float (where x86 and ARM would disagree).

/// Per-output-channel requantization parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Requant {
    /// `input_scale * weight_scale / output_scale`, see [`requant_multiplier`].
    pub multiplier: f32,
    /// Output zero point.
    pub zero_point: i32,
    /// Output clamp, in quantized units (ReLU / ReLU6 / the dtype's range).
    pub qmin: i32,
    pub qmax: i32,
}

/// The multiplier `input_scale * weight_scale / output_scale`, computed in f64 and rounded
/// once to f32, so it does not depend on evaluation order.
#[inline]
pub fn requant_multiplier(input_scale: f32, weight_scale: f32, output_scale: f32) -> f32 {
    (input_scale as f64 * weight_scale as f64 / output_scale as f64) as f32
}

/// Requantize one accumulator (the normative scalar definition).
///
/// ```
/// use qat_core::requantize;
/// assert_eq!(requantize(1000, 0.01, 128, 0, 255), 138);
/// assert_eq!(requantize(250, 0.01, 128, 0, 255), 130); // 2.5 rounds to even
/// assert_eq!(requantize(i32::MAX, 1.0, 128, 0, 255), 255);
/// ```
#[inline]
pub fn requantize(acc: i32, multiplier: f32, zero_point: i32, qmin: i32, qmax: i32) -> i32 {
    let lo = (qmin - zero_point) as f32;
    let hi = (qmax - zero_point) as f32;
    let v = (acc as f32 * multiplier).max(lo).min(hi);
    v.round_ties_even() as i32 + zero_point
}

impl Requant {
    /// Apply [`requantize`] with these parameters.
    #[inline]
    pub fn apply(&self, acc: i32) -> i32 {
        requantize(acc, self.multiplier, self.zero_point, self.qmin, self.qmax)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_f64_rounding_for_small_accumulators() {
        for acc in -5000..5000 {
            let m = 0.0123f32;
            let want = ((acc as f32 * m) as f64).round_ties_even() as i32 + 7;
            assert_eq!(requantize(acc, m, 7, -1000, 1000), want);
        }
    }

    #[test]
    fn clamps_before_converting() {
        assert_eq!(requantize(i32::MIN, 1e30, 0, -128, 127), -128);
        assert_eq!(requantize(i32::MAX, 1e30, 3, 0, 255), 255);
        assert_eq!(requantize(-1, 1.0, 3, 3, 255), 3);
    }

    #[test]
    fn multiplier_is_order_independent() {
        let a = requant_multiplier(0.02, 0.003, 0.05);
        let b = (0.003f64 * 0.02f32 as f64 / 0.05f32 as f64) as f32;
        assert!((a - b).abs() <= f32::EPSILON * a);
    }
}
