//! AVX2 element-wise kernels, 8 lanes per step (the add and the pool also in AVX-512 forms); each repeats its qat-core formula's IEEE-754
//! operations in the same order (no FMA; `cvtps2dq` rounds half to even under the default
//! MXCSR; `maxps(v, lo)` returns `lo` for a NaN `v`, as `f32::max` does). Tails (< 8 elements)
//! go through the scalar reference, which is the same formula.

use std::arch::x86_64::*;

use super::add::QuantizedAdd;
use super::pool::channel_sums_tail;
use super::quantize::{dequantize_reference, quantize_reference};
use crate::x86_64::requant::{narrow_u8_avx2, requant_avx512};
use qat_core::QParams;

/// 8 bytes zero-extended to i32 lanes.
///
/// # Safety
/// AVX2; `p` must address 8 readable bytes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load8(p: *const u8) -> __m256i {
    // SAFETY: 8 readable bytes by contract.
    unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast())) }
}

/// Quantized add.
///
/// # Safety
/// AVX2 must be supported; `a`, `b` and `out` must have equal lengths.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn add_avx2(q: &QuantizedAdd, a: &[u8], b: &[u8], out: &mut [u8]) {
    let n = out.len();
    let body = n - n % 8;
    let zpa = _mm256_set1_epi32(q.a_zp);
    let zpb = _mm256_set1_epi32(q.b_zp);
    let ma = _mm256_set1_ps(q.a_mult);
    let mb = _mm256_set1_ps(q.b_mult);
    let zpo = _mm256_set1_epi32(q.out_zp);
    let lo = _mm256_set1_ps((q.qmin - q.out_zp) as f32);
    let hi = _mm256_set1_ps((q.qmax - q.out_zp) as f32);
    let mut i = 0;
    while i < body {
        // SAFETY: `i + 8 <= body <= n` for all three equal-length slices.
        unsafe {
            let ta = _mm256_mul_ps(
                _mm256_cvtepi32_ps(_mm256_sub_epi32(load8(a.as_ptr().add(i)), zpa)),
                ma,
            );
            let tb = _mm256_mul_ps(
                _mm256_cvtepi32_ps(_mm256_sub_epi32(load8(b.as_ptr().add(i)), zpb)),
                mb,
            );
            let v = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(ta, tb), lo), hi);
            let r = _mm256_add_epi32(_mm256_cvtps_epi32(v), zpo);
            _mm_storel_epi64(out.as_mut_ptr().add(i).cast(), narrow_u8_avx2(r));
        }
        i += 8;
    }
    q.reference(&a[body..], &b[body..], &mut out[body..]);
}

/// Quantized add, 16 lanes per step: [`add_avx2`]'s operations on zmm registers (this op is
/// instruction-bound, not memory-bound, at MobileNetV2's sizes: half the instructions per
/// element).
///
/// # Safety
/// AVX-512F must be supported; `a`, `b` and `out` must have equal lengths.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn add_avx512(q: &QuantizedAdd, a: &[u8], b: &[u8], out: &mut [u8]) {
    let n = out.len();
    let body = n - n % 16;
    let zpa = _mm512_set1_epi32(q.a_zp);
    let zpb = _mm512_set1_epi32(q.b_zp);
    let ma = _mm512_set1_ps(q.a_mult);
    let mb = _mm512_set1_ps(q.b_mult);
    let zpo = _mm512_set1_epi32(q.out_zp);
    let lo = _mm512_set1_ps((q.qmin - q.out_zp) as f32);
    let hi = _mm512_set1_ps((q.qmax - q.out_zp) as f32);
    let load16 = |p: *const u8| {
        // SAFETY: callers pass pointers to 16 readable bytes.
        unsafe { _mm512_cvtepu8_epi32(_mm_loadu_si128(p.cast())) }
    };
    let mut i = 0;
    while i < body {
        // SAFETY: `i + 16 <= body <= n` for all three equal-length slices.
        unsafe {
            let ta = _mm512_mul_ps(
                _mm512_cvtepi32_ps(_mm512_sub_epi32(load16(a.as_ptr().add(i)), zpa)),
                ma,
            );
            let tb = _mm512_mul_ps(
                _mm512_cvtepi32_ps(_mm512_sub_epi32(load16(b.as_ptr().add(i)), zpb)),
                mb,
            );
            let v = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(ta, tb), lo), hi);
            let r = _mm512_add_epi32(_mm512_cvtps_epi32(v), zpo);
            // Lanes are in [qmin, qmax] ⊂ [0, 255]: the truncating narrow is exact.
            _mm_storeu_si128(out.as_mut_ptr().add(i).cast(), _mm512_cvtepi32_epi8(r));
        }
        i += 16;
    }
    q.reference(&a[body..], &b[body..], &mut out[body..]);
}

/// Pixels whose u8 values a u16 lane can sum without overflow (`257 · 255 = 65535`).
const U16_PIXELS: usize = 257;

/// Per-channel sums of `x` (`pixels × c`) into `sums` (`c`), 32 channels per zmm: bytes are
/// widened to u16 and summed in u16 over runs of at most [`U16_PIXELS`] pixels (exact), each
/// run then added to the i32 sums.
///
/// # Safety
/// AVX-512F/BW must be supported; `x.len()` must be a multiple of `c` and `sums.len() == c`.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn channel_sums_avx512(x: &[u8], c: usize, sums: &mut [i32]) {
    let pixels = x.len() / c;
    let body = c - c % 32;
    let mut cb = 0;
    while cb < body {
        let mut lo = _mm512_setzero_si512();
        let mut hi = _mm512_setzero_si512();
        let mut p0 = 0;
        while p0 < pixels {
            let p1 = (p0 + U16_PIXELS).min(pixels);
            // Two accumulators over alternate pixels keep the add chain short.
            let mut acc = [_mm512_setzero_si512(); 2];
            for p in p0..p1 {
                // SAFETY: pixel `p < pixels`, channels `cb..cb + 32` with `cb + 32 <= c`.
                let v = unsafe { _mm256_loadu_si256(x.as_ptr().add(p * c + cb).cast()) };
                acc[p % 2] = _mm512_add_epi16(acc[p % 2], _mm512_cvtepu8_epi16(v));
            }
            // Each accumulator holds at most 129 pixels (≤ 32 895 < 2^15 per u16 lane) and
            // their u16 sum at most 65 535: widen both to i32 before adding.
            let sum16 = _mm512_add_epi16(acc[0], acc[1]);
            lo = _mm512_add_epi32(lo, _mm512_cvtepu16_epi32(_mm512_castsi512_si256(sum16)));
            hi = _mm512_add_epi32(
                hi,
                _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64::<1>(sum16)),
            );
            p0 = p1;
        }
        // SAFETY: `sums[cb..cb + 32]` is inside `sums` (`cb + 32 <= c`).
        unsafe {
            _mm512_storeu_si512(sums.as_mut_ptr().add(cb).cast(), lo);
            _mm512_storeu_si512(sums.as_mut_ptr().add(cb + 16).cast(), hi);
        }
        cb += 32;
    }
    channel_sums_tail(x, c, body, sums);
}

/// `out[i] = qat_core::global_avg_pool(sums[i], count, in_zp, mult, out_zp, 0, 255)`, 16
/// lanes per step through [`requant_avx512`] (the same IEEE-754 sequence); the tail through
/// the scalar definition.
///
/// # Safety
/// AVX-512F must be supported; `out.len() <= sums.len()`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn pool_requant_avx512(
    sums: &[i32],
    count: usize,
    in_zp: i32,
    mult: f32,
    out_zp: i32,
    out: &mut [u8],
) {
    let n = out.len();
    let body = n - n % 16;
    let sub = _mm512_set1_epi32((count as i32).wrapping_mul(in_zp));
    let m = _mm512_set1_ps(mult);
    let zp = _mm512_set1_epi32(out_zp);
    let lo = _mm512_set1_ps(-out_zp as f32);
    let hi = _mm512_set1_ps((255 - out_zp) as f32);
    let mut i = 0;
    while i < body {
        // SAFETY: `i + 16 <= body <= n <= sums.len()`.
        unsafe {
            let acc = _mm512_sub_epi32(_mm512_loadu_si512(sums.as_ptr().add(i).cast()), sub);
            let q = requant_avx512(acc, m, zp, lo, hi);
            _mm_storeu_si128(out.as_mut_ptr().add(i).cast(), _mm512_cvtepi32_epi8(q));
        }
        i += 16;
    }
    for (o, &s) in out[body..].iter_mut().zip(&sums[body..]) {
        *o = qat_core::global_avg_pool(s, count, in_zp, mult, out_zp, 0, 255) as u8;
    }
}

/// Per-channel sums of `x` (`pixels × c`) into `sums` (`c`).
///
/// # Safety
/// AVX2 must be supported; `x.len()` must be a multiple of `c` and `sums.len() == c`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn channel_sums_avx2(x: &[u8], c: usize, sums: &mut [i32]) {
    let pixels = x.len() / c;
    let body = c - c % 8;
    let mut cb = 0;
    while cb < body {
        // Four accumulators over interleaved pixels keep the add chain short.
        let mut acc = [_mm256_setzero_si256(); 4];
        // SAFETY: pixel `p` channel `cb..cb + 8` lies inside `x` (`cb + 8 <= c`); the store
        // writes `sums[cb..cb + 8]`.
        unsafe {
            for p in 0..pixels {
                let v = load8(x.as_ptr().add(p * c + cb));
                acc[p % 4] = _mm256_add_epi32(acc[p % 4], v);
            }
            let s = _mm256_add_epi32(
                _mm256_add_epi32(acc[0], acc[1]),
                _mm256_add_epi32(acc[2], acc[3]),
            );
            _mm256_storeu_si256(sums.as_mut_ptr().add(cb).cast(), s);
        }
        cb += 8;
    }
    channel_sums_tail(x, c, body, sums);
}

/// Quantize with `inv = 1 / scale`.
///
/// # Safety
/// AVX2 must be supported; `x.len() == out.len()`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn quantize_avx2(x: &[f32], inv: f32, zp: i32, out: &mut [u8]) {
    let n = out.len();
    let body = n - n % 8;
    let inv_v = _mm256_set1_ps(inv);
    let zp_v = _mm256_set1_ps(zp as f32);
    let qmin = _mm256_set1_ps(0.0);
    let qmax = _mm256_set1_ps(255.0);
    let mut i = 0;
    while i < body {
        // SAFETY: `i + 8 <= n` for both equal-length slices.
        unsafe {
            let v = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(i)), inv_v);
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            // `zp + round(x·inv)` as the scalar formula adds; maxps puts qmin in a NaN lane.
            let qf = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(zp_v, r), qmin), qmax);
            let q = _mm256_cvttps_epi32(qf);
            _mm_storel_epi64(out.as_mut_ptr().add(i).cast(), narrow_u8_avx2(q));
        }
        i += 8;
    }
    quantize_reference(&x[body..], inv, zp, &mut out[body..]);
}

/// Dequantize.
///
/// # Safety
/// AVX2 must be supported; `q.len() == out.len()`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn dequantize_avx2(q: &[u8], p: QParams, out: &mut [f32]) {
    let n = out.len();
    let body = n - n % 8;
    let zp = _mm256_set1_epi32(p.zero_point);
    let s = _mm256_set1_ps(p.scale);
    let mut i = 0;
    while i < body {
        // SAFETY: `i + 8 <= n` for both equal-length slices.
        unsafe {
            let v = _mm256_sub_epi32(load8(q.as_ptr().add(i)), zp);
            _mm256_storeu_ps(
                out.as_mut_ptr().add(i),
                _mm256_mul_ps(_mm256_cvtepi32_ps(v), s),
            );
        }
        i += 8;
    }
    dequantize_reference(&q[body..], p, &mut out[body..]);
}
