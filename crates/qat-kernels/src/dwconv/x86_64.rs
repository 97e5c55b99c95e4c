//! x86-64 depthwise row kernels (AVX2: 8 channels per step, AVX-512 VNNI: 16).
//!
//! Each input byte is zero-extended to an i32 lane whose high i16 half is 0; each weight is
//! zero-extended from i16 the same way, so `vpmaddwd` / `vpdpwssd` compute `x·w + 0·0` exactly
//! (no saturation: `vpdpwssd` is the non-saturating form). The weights of a channel block stay in
//! registers while the row's output pixels stream past.

use std::arch::x86_64::*;

use super::RowParams;
use crate::x86_64::requant::{narrow_u8_avx2, narrow_u8_avx512, requant_avx2, requant_avx512};

/// One output row with AVX2.
///
/// # Safety
/// AVX2 must be supported. Every pointer in `ptrs` (`ow · p.taps` of them) must address
/// `p.channels` readable bytes; `out` must hold `ow · p.channels` bytes; the packed arrays must
/// hold `p.taps` × (channels rounded up to 16) entries; `p.taps` must be 9 or 25.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn row_avx2(p: &RowParams, ptrs: &[*const u8], ow: usize, out: &mut [u8]) {
    debug_assert_eq!(ptrs.len(), ow * p.taps);
    match p.taps {
        // SAFETY: forwarded contract.
        9 => unsafe { row_avx2_t::<9>(p, ptrs, ow, out) },
        // SAFETY: forwarded contract.
        25 => unsafe { row_avx2_t::<25>(p, ptrs, ow, out) },
        t => unreachable!("depthwise SIMD kernel called with {t} taps"),
    }
}

/// Load `n ≤ 8` bytes (8 without a copy) zero-extended to 8 i32 lanes.
///
/// # Safety
/// AVX2; `src` must address `n` readable bytes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load8_avx2(src: *const u8, n: usize) -> __m256i {
    // SAFETY: the caller guarantees `n` readable bytes; the tail goes through a local buffer so
    // nothing past them is read.
    unsafe {
        let v = if n == 8 {
            _mm_loadl_epi64(src.cast())
        } else {
            let mut buf = [0u8; 8];
            std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), n);
            _mm_loadl_epi64(buf.as_ptr().cast())
        };
        _mm256_cvtepu8_epi32(v)
    }
}

#[target_feature(enable = "avx2")]
unsafe fn row_avx2_t<const T: usize>(p: &RowParams, ptrs: &[*const u8], ow: usize, out: &mut [u8]) {
    let c = p.channels;
    let cp = c.div_ceil(super::BLOCK) * super::BLOCK;
    let zp = _mm256_set1_epi32(p.zero_point);
    let lo = _mm256_set1_ps(p.lo);
    let hi = _mm256_set1_ps(p.hi);
    let out_ptr = out.as_mut_ptr();
    let mut cb = 0;
    while cb < c {
        let n = (c - cb).min(8);
        // SAFETY: `cb + 8 <= cp`, so the packed loads stay inside arrays of `T·cp` / `cp`
        // entries; input loads read `n` bytes at channel `cb` of pixels holding `c` bytes;
        // output writes `n` bytes at `ox·c + cb < ow·c`.
        unsafe {
            let wv: [__m256i; T] = std::array::from_fn(|t| {
                _mm256_cvtepu16_epi32(_mm_loadu_si128(
                    p.packed_weights.as_ptr().add(t * cp + cb).cast(),
                ))
            });
            let bias = _mm256_loadu_si256(p.packed_bias.as_ptr().add(cb).cast());
            let mult = _mm256_loadu_ps(p.multiplier.as_ptr().add(cb));
            for ox in 0..ow {
                let tp = ptrs.as_ptr().add(ox * T);
                let mut acc = bias;
                for (t, w) in wv.iter().enumerate() {
                    let x = load8_avx2((*tp.add(t)).add(cb), n);
                    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(x, *w));
                }
                let bytes = narrow_u8_avx2(requant_avx2(acc, mult, zp, lo, hi));
                let dst = out_ptr.add(ox * c + cb);
                if n == 8 {
                    _mm_storel_epi64(dst.cast(), bytes);
                } else {
                    let mut buf = [0u8; 16];
                    _mm_storeu_si128(buf.as_mut_ptr().cast(), bytes);
                    std::ptr::copy_nonoverlapping(buf.as_ptr(), dst, n);
                }
            }
        }
        cb += 8;
    }
}

/// One output row with AVX-512 VNNI.
///
/// # Safety
/// AVX-512F/BW/VL and VNNI must be supported; otherwise as [`row_avx2`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn row_avx512(p: &RowParams, ptrs: &[*const u8], ow: usize, out: &mut [u8]) {
    debug_assert_eq!(ptrs.len(), ow * p.taps);
    match p.taps {
        // SAFETY: forwarded contract.
        9 => unsafe { row_avx512_t::<9>(p, ptrs, ow, out) },
        // SAFETY: forwarded contract.
        25 => unsafe { row_avx512_t::<25>(p, ptrs, ow, out) },
        t => unreachable!("depthwise SIMD kernel called with {t} taps"),
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn row_avx512_t<const T: usize>(
    p: &RowParams,
    ptrs: &[*const u8],
    ow: usize,
    out: &mut [u8],
) {
    let c = p.channels;
    let cp = c.div_ceil(super::BLOCK) * super::BLOCK;
    let zp = _mm512_set1_epi32(p.zero_point);
    let lo = _mm512_set1_ps(p.lo);
    let hi = _mm512_set1_ps(p.hi);
    let out_ptr = out.as_mut_ptr();
    let mut cb = 0;
    while cb < c {
        let n = (c - cb).min(16);
        let mask: __mmask16 = if n == 16 { !0 } else { (1u16 << n) - 1 };
        // SAFETY: `cb + 16 <= cp` bounds the packed loads; the masked input loads / output
        // stores touch only the `n` valid channels (masked-off bytes are neither read nor
        // written, and cannot fault).
        unsafe {
            let wv: [__m512i; T] = std::array::from_fn(|t| {
                _mm512_cvtepu16_epi32(_mm256_loadu_si256(
                    p.packed_weights.as_ptr().add(t * cp + cb).cast(),
                ))
            });
            let bias = _mm512_loadu_si512(p.packed_bias.as_ptr().add(cb).cast());
            let mult = _mm512_loadu_ps(p.multiplier.as_ptr().add(cb));
            for ox in 0..ow {
                let tp = ptrs.as_ptr().add(ox * T);
                // Two chains halve the `vpdpwssd` latency chain.
                let mut a0 = bias;
                let mut a1 = _mm512_setzero_si512();
                for (t, w) in wv.iter().enumerate() {
                    let src = (*tp.add(t)).add(cb);
                    let x = if n == 16 {
                        _mm512_cvtepu8_epi32(_mm_loadu_si128(src.cast()))
                    } else {
                        _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, src.cast()))
                    };
                    if t % 2 == 0 {
                        a0 = _mm512_dpwssd_epi32(a0, x, *w);
                    } else {
                        a1 = _mm512_dpwssd_epi32(a1, x, *w);
                    }
                }
                let r = requant_avx512(_mm512_add_epi32(a0, a1), mult, zp, lo, hi);
                _mm_mask_storeu_epi8(out_ptr.add(ox * c + cb).cast(), mask, narrow_u8_avx512(r));
            }
        }
        cb += 16;
    }
}
