//! Epilogue shared by the ymm kernels (AVX2, AVX-VNNI): bias, requantization, and a store of
//! exactly `nc` columns per row (full vectors go through a row buffer when the tile is ragged,
//! since AVX2 has no byte-masked store).

use super::requant::{narrow_u8_avx2, requant_avx2};
use crate::gemm::kernel::Tile;
use crate::gemm::Out;
use std::arch::x86_64::*;

/// Finish a tile of `R` rows × `8·C` columns of accumulators.
///
/// # Safety
/// `t` must describe a valid tile with `t.m == R`, `t.width == 8·C`, and the CPU must support
/// AVX2.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn finish<const R: usize, const C: usize>(t: &Tile, acc: &[[__m256i; C]; R]) {
    let bias: [__m256i; C] = std::array::from_fn(|c| _mm256_loadu_si256(t.bias.add(8 * c).cast()));
    let full = t.nc == 8 * C;
    match t.out {
        Out::I32 { ptr, ldc } => {
            for (r, acc_r) in acc.iter().enumerate() {
                let mut buf = [0i32; 16];
                let dst = if full {
                    ptr.add(r * ldc)
                } else {
                    buf.as_mut_ptr()
                };
                for c in 0..C {
                    let v = _mm256_add_epi32(acc_r[c], bias[c]);
                    _mm256_storeu_si256(dst.add(8 * c).cast(), v);
                }
                if !full {
                    std::ptr::copy_nonoverlapping(buf.as_ptr(), ptr.add(r * ldc), t.nc);
                }
            }
        }
        Out::U8 { ptr, ldc } => {
            let mult: [__m256; C] =
                std::array::from_fn(|c| _mm256_loadu_ps(t.multiplier.add(8 * c)));
            let zp: [__m256i; C] =
                std::array::from_fn(|c| _mm256_loadu_si256(t.zero_point.add(8 * c).cast()));
            let lo: [__m256; C] = std::array::from_fn(|c| _mm256_loadu_ps(t.lo.add(8 * c)));
            let hi: [__m256; C] = std::array::from_fn(|c| _mm256_loadu_ps(t.hi.add(8 * c)));
            for (r, acc_r) in acc.iter().enumerate() {
                let mut buf = [0u8; 16];
                let dst = if full {
                    ptr.add(r * ldc)
                } else {
                    buf.as_mut_ptr()
                };
                for c in 0..C {
                    let v = _mm256_add_epi32(acc_r[c], bias[c]);
                    let q = narrow_u8_avx2(requant_avx2(v, mult[c], zp[c], lo[c], hi[c]));
                    _mm_storel_epi64(dst.add(8 * c).cast(), q);
                }
                if !full {
                    std::ptr::copy_nonoverlapping(buf.as_ptr(), ptr.add(r * ldc), t.nc);
                }
            }
        }
    }
}
