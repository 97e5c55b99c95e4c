//! Normative formulas of the quantized element-wise ops: quantized add and global average pool.
//!
//! Like [`crate::requantize`], each is a fixed sequence of IEEE-754 f32 operations (integer
//! differences converted exactly, one multiply per term, never an FMA, clamp in float before a
//! round-half-even conversion), so every SIMD kernel reproduces it bit for bit.

/// The multipliers `(a_scale / out_scale, b_scale / out_scale)` of [`quantized_add`], each
/// computed in f64 and rounded once to f32.
#[inline]
pub fn add_multipliers(a_scale: f32, b_scale: f32, out_scale: f32) -> (f32, f32) {
    (
        (a_scale as f64 / out_scale as f64) as f32,
        (b_scale as f64 / out_scale as f64) as f32,
    )
}

/// Quantized add of one element pair (the normative scalar definition):
///
/// ```text
/// ta  = f32(a - a_zp) * a_mult            (exact conversion, one rounding)
/// tb  = f32(b - b_zp) * b_mult            (one rounding)
/// v   = clamp(ta + tb, qmin - out_zp, qmax - out_zp)   (one rounding, then the clamp)
/// out = round_half_even(v) + out_zp
/// ```
///
/// `a_mult` / `b_mult` come from [`add_multipliers`]; `[qmin, qmax]` holds the fused ReLU.
///
/// ```
/// use qat_core::{add_multipliers, quantized_add};
/// let (ma, mb) = add_multipliers(0.04, 0.07, 0.09);
/// // (130 - 120) * 0.04 + (110 - 100) * 0.07 = 1.1 → 1.1 / 0.09 = 12.2 → 12 + 110
/// assert_eq!(quantized_add(130, 120, ma, 110, 100, mb, 110, 0, 255), 122);
/// ```
#[inline]
#[allow(clippy::too_many_arguments)]
pub fn quantized_add(
    a: i32,
    a_zp: i32,
    a_mult: f32,
    b: i32,
    b_zp: i32,
    b_mult: f32,
    out_zp: i32,
    qmin: i32,
    qmax: i32,
) -> i32 {
    let ta = (a - a_zp) as f32 * a_mult;
    let tb = (b - b_zp) as f32 * b_mult;
    let lo = (qmin - out_zp) as f32;
    let hi = (qmax - out_zp) as f32;
    (ta + tb).max(lo).min(hi).round_ties_even() as i32 + out_zp
}

/// The multiplier `in_scale / (out_scale * count)` of [`global_avg_pool`], computed in f64 and
/// rounded once to f32.
#[inline]
pub fn avg_pool_multiplier(in_scale: f32, out_scale: f32, count: usize) -> f32 {
    (in_scale as f64 / (out_scale as f64 * count as f64)) as f32
}

/// Global average pool of one channel (the normative scalar definition): the exact integer
/// sum of the `count` inputs, minus `count * in_zp` (exact in i32 for any `count` below 2^23),
/// requantized with [`crate::requantize`] and [`avg_pool_multiplier`].
///
/// ```
/// use qat_core::{avg_pool_multiplier, global_avg_pool};
/// let m = avg_pool_multiplier(0.05, 0.05, 4);
/// // mean of 10, 11, 12, 13 with zero point 9 → 2.5 above zp → rounds to 2 (even)
/// assert_eq!(global_avg_pool(46, 4, 9, m, 9, 0, 255), 11);
/// ```
#[inline]
pub fn global_avg_pool(
    sum: i32,
    count: usize,
    in_zp: i32,
    multiplier: f32,
    out_zp: i32,
    qmin: i32,
    qmax: i32,
) -> i32 {
    let acc = sum.wrapping_sub((count as i32).wrapping_mul(in_zp));
    crate::requantize(acc, multiplier, out_zp, qmin, qmax)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_matches_f64_away_from_ties() {
        let (ma, mb) = add_multipliers(0.04, 0.07, 0.09);
        for a in (0..256).step_by(7) {
            for b in (0..256).step_by(5) {
                let exact = (a - 120) as f64 * 0.04 / 0.09 + (b - 100) as f64 * 0.07 / 0.09;
                let got = quantized_add(a, 120, ma, b, 100, mb, 110, 0, 255);
                let frac = exact - exact.floor();
                if (frac - 0.5).abs() > 1e-4 {
                    let want = (exact.round() as i32 + 110).clamp(0, 255);
                    assert_eq!(got, want, "a={a} b={b}");
                }
            }
        }
    }

    #[test]
    fn add_clamps_and_relu() {
        let (ma, mb) = add_multipliers(1.0, 1.0, 1.0);
        assert_eq!(quantized_add(255, 0, ma, 255, 0, mb, 0, 0, 255), 255);
        assert_eq!(quantized_add(0, 255, ma, 0, 255, mb, 128, 128, 255), 128);
    }

    #[test]
    fn avg_pool_rounds_half_even() {
        let m = avg_pool_multiplier(1.0, 1.0, 2);
        assert_eq!(global_avg_pool(1, 2, 0, m, 0, 0, 255), 0); // 0.5 → 0
        assert_eq!(global_avg_pool(3, 2, 0, m, 0, 0, 255), 2); // 1.5 → 2
        assert_eq!(global_avg_pool(2 * 255, 2, 255, m, 0, 0, 255), 0);
    }
}
