//! NEON element-wise kernels, 8 lanes per step; each repeats its qat-core formula's IEEE-754
//! operations in the same order (no FMA; `fcvtns` / `frintn` round half to even; `fmaxnm`
//! ignores a NaN operand as `f32::max` does). Tails go through the scalar reference.

use std::arch::aarch64::*;

use super::add::QuantizedAdd;
use super::pool::channel_sums_tail;
use super::quantize::{dequantize_reference, quantize_reference};
use crate::aarch64::requant::narrow_u8_neon;
use qat_core::QParams;

/// Quantized add.
///
/// # Safety
/// NEON must be supported; `a`, `b` and `out` must have equal lengths.
#[target_feature(enable = "neon")]
pub(super) unsafe fn add_neon(q: &QuantizedAdd, a: &[u8], b: &[u8], out: &mut [u8]) {
    let n = out.len();
    let body = n - n % 8;
    let zpa = vdupq_n_s16(q.a_zp as i16);
    let zpb = vdupq_n_s16(q.b_zp as i16);
    let ma = vdupq_n_f32(q.a_mult);
    let mb = vdupq_n_f32(q.b_mult);
    let zpo = vdupq_n_s32(q.out_zp);
    let lo = vdupq_n_f32((q.qmin - q.out_zp) as f32);
    let hi = vdupq_n_f32((q.qmax - q.out_zp) as f32);
    let half = |d: int16x4_t, m: float32x4_t| vmulq_f32(vcvtq_f32_s32(vmovl_s16(d)), m);
    let mut i = 0;
    while i < body {
        // SAFETY: `i + 8 <= body <= n` for all three equal-length slices.
        unsafe {
            // x - zp lies in [-255, 255]: exact in i16.
            let da = vsubq_s16(
                vreinterpretq_s16_u16(vmovl_u8(vld1_u8(a.as_ptr().add(i)))),
                zpa,
            );
            let db = vsubq_s16(
                vreinterpretq_s16_u16(vmovl_u8(vld1_u8(b.as_ptr().add(i)))),
                zpb,
            );
            let mut r = [vdupq_n_s32(0); 2];
            for (k, (xa, xb)) in [
                (vget_low_s16(da), vget_low_s16(db)),
                (vget_high_s16(da), vget_high_s16(db)),
            ]
            .into_iter()
            .enumerate()
            {
                let v = vaddq_f32(half(xa, ma), half(xb, mb));
                let v = vminnmq_f32(vmaxnmq_f32(v, lo), hi);
                r[k] = vaddq_s32(vcvtnq_s32_f32(v), zpo);
            }
            vst1_u8(out.as_mut_ptr().add(i), narrow_u8_neon(r[0], r[1]));
        }
        i += 8;
    }
    q.reference(&a[body..], &b[body..], &mut out[body..]);
}

/// Per-channel sums of `x` (`pixels × c`) into `sums` (`c`).
///
/// # Safety
/// NEON must be supported; `x.len()` must be a multiple of `c` and `sums.len() == c`.
#[target_feature(enable = "neon")]
pub(super) unsafe fn channel_sums_neon(x: &[u8], c: usize, sums: &mut [i32]) {
    let pixels = x.len() / c;
    let body = c - c % 8;
    let mut cb = 0;
    while cb < body {
        // SAFETY: pixel `p` channels `cb..cb + 8` lie inside `x`; the stores write
        // `sums[cb..cb + 8]`.
        unsafe {
            let mut lo = vdupq_n_u32(0);
            let mut hi = vdupq_n_u32(0);
            for p in 0..pixels {
                let v = vmovl_u8(vld1_u8(x.as_ptr().add(p * c + cb)));
                lo = vaddw_u16(lo, vget_low_u16(v));
                hi = vaddw_high_u16(hi, v);
            }
            vst1q_s32(sums.as_mut_ptr().add(cb), vreinterpretq_s32_u32(lo));
            vst1q_s32(sums.as_mut_ptr().add(cb + 4), vreinterpretq_s32_u32(hi));
        }
        cb += 8;
    }
    channel_sums_tail(x, c, body, sums);
}

/// Quantize with `inv = 1 / scale`.
///
/// # Safety
/// NEON must be supported; `x.len() == out.len()`.
#[target_feature(enable = "neon")]
pub(super) unsafe fn quantize_neon(x: &[f32], inv: f32, zp: i32, out: &mut [u8]) {
    let n = out.len();
    let body = n - n % 8;
    let inv_v = vdupq_n_f32(inv);
    let zp_v = vdupq_n_f32(zp as f32);
    let qmin = vdupq_n_f32(0.0);
    let qmax = vdupq_n_f32(255.0);
    let one = |v: float32x4_t| {
        let r = vrndnq_f32(vmulq_f32(v, inv_v));
        let qf = vminnmq_f32(vmaxnmq_f32(vaddq_f32(zp_v, r), qmin), qmax);
        vcvtq_s32_f32(qf)
    };
    let mut i = 0;
    while i < body {
        // SAFETY: `i + 8 <= n` for both equal-length slices.
        unsafe {
            let a = one(vld1q_f32(x.as_ptr().add(i)));
            let b = one(vld1q_f32(x.as_ptr().add(i + 4)));
            vst1_u8(out.as_mut_ptr().add(i), narrow_u8_neon(a, b));
        }
        i += 8;
    }
    quantize_reference(&x[body..], inv, zp, &mut out[body..]);
}

/// Dequantize.
///
/// # Safety
/// NEON must be supported; `q.len() == out.len()`.
#[target_feature(enable = "neon")]
pub(super) unsafe fn dequantize_neon(q: &[u8], p: QParams, out: &mut [f32]) {
    let n = out.len();
    let body = n - n % 8;
    let zp = vdupq_n_s16(p.zero_point as i16);
    let s = vdupq_n_f32(p.scale);
    let mut i = 0;
    while i < body {
        // SAFETY: `i + 8 <= n` for both equal-length slices.
        unsafe {
            let d = vsubq_s16(
                vreinterpretq_s16_u16(vmovl_u8(vld1_u8(q.as_ptr().add(i)))),
                zp,
            );
            let a = vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(d))), s);
            let b = vmulq_f32(vcvtq_f32_s32(vmovl_high_s16(d)), s);
            vst1q_f32(out.as_mut_ptr().add(i), a);
            vst1q_f32(out.as_mut_ptr().add(i + 4), b);
        }
        i += 8;
    }
    dequantize_reference(&q[body..], p, &mut out[body..]);
}
