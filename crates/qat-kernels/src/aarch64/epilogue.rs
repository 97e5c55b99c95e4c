//! Epilogue shared by the aarch64 kernels: bias, requantization, and a store of exactly `nc`
//! columns per row (through a row buffer when the tile is ragged).

use super::requant::{narrow_u8_neon, requant_neon};
use crate::gemm::kernel::Tile;
use crate::gemm::Out;
use std::arch::aarch64::*;

/// Finish output row `r` of a tile from its 8 accumulators (columns 0..4, 4..8).
///
/// # Safety
/// `t` must describe a valid tile of width 8 with `r < t.m`; the CPU must support NEON.
#[inline]
#[target_feature(enable = "neon")]
pub(crate) unsafe fn finish_row(t: &Tile, r: usize, acc: [int32x4_t; 2]) {
    let v0 = vaddq_s32(acc[0], vld1q_s32(t.bias));
    let v1 = vaddq_s32(acc[1], vld1q_s32(t.bias.add(4)));
    let full = t.nc == 8;
    match t.out {
        Out::I32 { ptr, ldc } => {
            let mut buf = [0i32; 8];
            let dst = if full {
                ptr.add(r * ldc)
            } else {
                buf.as_mut_ptr()
            };
            vst1q_s32(dst, v0);
            vst1q_s32(dst.add(4), v1);
            if !full {
                std::ptr::copy_nonoverlapping(buf.as_ptr(), ptr.add(r * ldc), t.nc);
            }
        }
        Out::U8 { ptr, ldc } => {
            let q = |v, o: usize| {
                requant_neon(
                    v,
                    vld1q_f32(t.multiplier.add(o)),
                    vld1q_s32(t.zero_point.add(o)),
                    vld1q_f32(t.lo.add(o)),
                    vld1q_f32(t.hi.add(o)),
                )
            };
            let bytes = narrow_u8_neon(q(v0, 0), q(v1, 4));
            let mut buf = [0u8; 8];
            let dst = if full {
                ptr.add(r * ldc)
            } else {
                buf.as_mut_ptr()
            };
            vst1_u8(dst, bytes);
            if !full {
                std::ptr::copy_nonoverlapping(buf.as_ptr(), ptr.add(r * ldc), t.nc);
            }
        }
    }
}

/// `kr` bytes of row `r` starting at K offset `k0`, zero-filled past `k`, in a 16-byte buffer.
///
/// # Safety
/// Row `r` of the tile must have `k` readable bytes.
#[inline(always)]
pub(crate) unsafe fn a_chunk(t: &Tile, r: usize, k0: usize, kr: usize) -> [u8; 16] {
    let mut b = [0u8; 16];
    let n = t.k.saturating_sub(k0).min(kr);
    std::ptr::copy_nonoverlapping(t.a.add(r * t.lda + k0), b.as_mut_ptr(), n);
    b
}
