//! SIMD requantization epilogue for x86-64: the lane-wise twin of [`qat_core::requantize`].
//!
//! `out = clamp(f32(acc) * multiplier, lo, hi).round_ties_even() + zero_point`, with
//! `lo = f32(qmin - zp)` and `hi = f32(qmax - zp)`. Each step is one IEEE-754 instruction with a
//! single correct result (`cvtdq2ps` and `cvtps2dq` round to nearest-even under the default
//! MXCSR, which Rust never changes), so every lane equals the scalar definition bit for bit.
//! The multiply is a plain `mulps` (never fused), and the clamp comes before the conversion so
//! no lane ever converts an out-of-range float. `maxps`/`minps` return their second operand
//! when the first is NaN, as Rust's `f32::max`/`min` ignore a NaN: the lanes agree even then.

use std::arch::x86_64::*;

/// Requantize 8 accumulators (AVX2). `lo`/`hi` are `qmin - zp` / `qmax - zp` as f32.
///
/// # Safety
/// The CPU must support AVX2 (check [`crate::Isa::Avx2`]`.is_supported()`).
#[inline]
#[target_feature(enable = "avx2")]
pub unsafe fn requant_avx2(
    acc: __m256i,
    multiplier: __m256,
    zero_point: __m256i,
    lo: __m256,
    hi: __m256,
) -> __m256i {
    let v = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), multiplier);
    let v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
    _mm256_add_epi32(_mm256_cvtps_epi32(v), zero_point)
}

/// Narrow 8 lanes already in `[0, 255]` (the output of [`requant_avx2`] with u8 bounds) to
/// bytes: the low 8 bytes of the result, in lane order.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2")]
pub unsafe fn narrow_u8_avx2(v: __m256i) -> __m128i {
    // packus works per 128-bit half: half 0 ends with lanes 0..3 in its low dword, half 1 with
    // lanes 4..7; the unpack glues the two dwords together.
    let p = _mm256_packus_epi32(v, v);
    let p = _mm256_packus_epi16(p, p);
    _mm_unpacklo_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256::<1>(p))
}

/// Requantize 16 accumulators (AVX-512F). `lo`/`hi` are `qmin - zp` / `qmax - zp` as f32.
///
/// # Safety
/// The CPU must support AVX-512F (every [`crate::Isa::Avx512Vnni`] CPU does).
#[inline]
#[target_feature(enable = "avx512f")]
pub unsafe fn requant_avx512(
    acc: __m512i,
    multiplier: __m512,
    zero_point: __m512i,
    lo: __m512,
    hi: __m512,
) -> __m512i {
    let v = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), multiplier);
    let v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
    _mm512_add_epi32(_mm512_cvtps_epi32(v), zero_point)
}

/// Narrow 16 lanes already in `[0, 255]` to 16 bytes (truncating `vpmovdb`, exact in range).
///
/// # Safety
/// The CPU must support AVX-512F.
#[inline]
#[target_feature(enable = "avx512f")]
pub unsafe fn narrow_u8_avx512(v: __m512i) -> __m128i {
    _mm512_cvtepi32_epi8(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::requant_test_cases::{cases, Case};
    use crate::Isa;

    fn check(lanes: usize, run: impl Fn(&[Case]) -> Vec<i32>) {
        let all = cases();
        let mut checked = 0;
        for chunk in all.chunks(lanes) {
            let got = run(chunk);
            for (c, g) in chunk.iter().zip(&got) {
                let want = qat_core::requantize(c.acc, c.multiplier, c.zp, c.qmin, c.qmax);
                assert_eq!(*g, want, "{c:?}");
                checked += 1;
            }
        }
        assert_eq!(checked, all.len());
    }

    fn pad<const L: usize>(chunk: &[Case]) -> [Case; L] {
        std::array::from_fn(|i| chunk[i.min(chunk.len() - 1)])
    }

    #[test]
    fn avx2_lanes_equal_scalar() {
        if !Isa::Avx2.is_supported() {
            eprintln!("SKIPPED requant avx2: no avx2");
            return;
        }
        check(8, |chunk| {
            let c = pad::<8>(chunk);
            let acc: [i32; 8] = c.map(|c| c.acc);
            let mult: [f32; 8] = c.map(|c| c.multiplier);
            let zp: [i32; 8] = c.map(|c| c.zp);
            let lo: [f32; 8] = c.map(|c| (c.qmin - c.zp) as f32);
            let hi: [f32; 8] = c.map(|c| (c.qmax - c.zp) as f32);
            let mut out = [0i32; 8];
            // SAFETY: AVX2 checked above; every pointer is to an 8-lane local array.
            unsafe {
                let r = requant_avx2(
                    _mm256_loadu_si256(acc.as_ptr().cast()),
                    _mm256_loadu_ps(mult.as_ptr()),
                    _mm256_loadu_si256(zp.as_ptr().cast()),
                    _mm256_loadu_ps(lo.as_ptr()),
                    _mm256_loadu_ps(hi.as_ptr()),
                );
                _mm256_storeu_si256(out.as_mut_ptr().cast(), r);
            }
            out[..chunk.len()].to_vec()
        });
    }

    #[test]
    fn avx512_lanes_equal_scalar() {
        if !Isa::Avx512Vnni.is_supported() {
            eprintln!("SKIPPED requant avx512: no avx512f/vnni");
            return;
        }
        check(16, |chunk| {
            let c = pad::<16>(chunk);
            let acc: [i32; 16] = c.map(|c| c.acc);
            let mult: [f32; 16] = c.map(|c| c.multiplier);
            let zp: [i32; 16] = c.map(|c| c.zp);
            let lo: [f32; 16] = c.map(|c| (c.qmin - c.zp) as f32);
            let hi: [f32; 16] = c.map(|c| (c.qmax - c.zp) as f32);
            let mut out = [0i32; 16];
            // SAFETY: AVX-512F checked above; every pointer is to a 16-lane local array.
            unsafe {
                let r = requant_avx512(
                    _mm512_loadu_si512(acc.as_ptr().cast()),
                    _mm512_loadu_ps(mult.as_ptr()),
                    _mm512_loadu_si512(zp.as_ptr().cast()),
                    _mm512_loadu_ps(lo.as_ptr()),
                    _mm512_loadu_ps(hi.as_ptr()),
                );
                _mm512_storeu_si512(out.as_mut_ptr().cast(), r);
            }
            out[..chunk.len()].to_vec()
        });
    }

    #[test]
    fn narrowing_keeps_lane_order() {
        let v: [i32; 16] = std::array::from_fn(|i| [0, 255, 1, 128][i % 4] + (i as i32 / 4) * 7);
        let v = v.map(|x| x.min(255));
        if Isa::Avx2.is_supported() {
            let mut out = [0u8; 16];
            // SAFETY: AVX2 checked; the loads read 8 of the 16 lanes, the store writes 16 bytes.
            unsafe {
                let n = narrow_u8_avx2(_mm256_loadu_si256(v.as_ptr().cast()));
                _mm_storeu_si128(out.as_mut_ptr().cast(), n);
            }
            assert_eq!(&out[..8], &v.map(|x| x as u8)[..8]);
        } else {
            eprintln!("SKIPPED narrow avx2: no avx2");
        }
        if Isa::Avx512Vnni.is_supported() {
            let mut out = [0u8; 16];
            // SAFETY: AVX-512F checked; 16 lanes in, 16 bytes out.
            unsafe {
                let n = narrow_u8_avx512(_mm512_loadu_si512(v.as_ptr().cast()));
                _mm_storeu_si128(out.as_mut_ptr().cast(), n);
            }
            assert_eq!(out, v.map(|x| x as u8));
        } else {
            eprintln!("SKIPPED narrow avx512: no avx512f");
        }
    }
}
