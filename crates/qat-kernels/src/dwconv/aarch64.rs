//! aarch64 NEON depthwise row kernel: 8 channels per step.
//!
//! Input bytes are widened to u16 (≤ 255, so also valid i16) and multiplied by the i16 weights
//! with the widening `smlal` / `smlal2` into i32 lanes: exact, no saturating instruction.

use std::arch::aarch64::*;

use super::RowParams;
use crate::aarch64::requant::{narrow_u8_neon, requant_neon};

/// One output row with NEON.
///
/// # Safety
/// NEON must be supported. Every pointer in `ptrs` (`ow · p.taps` of them) must address
/// `p.channels` readable bytes; `out` must hold `ow · p.channels` bytes; the packed arrays must
/// hold `p.taps` × (channels rounded up to 16) entries; `p.taps` must be 9 or 25.
#[target_feature(enable = "neon")]
pub(super) unsafe fn row_neon(p: &RowParams, ptrs: &[*const u8], ow: usize, out: &mut [u8]) {
    debug_assert_eq!(ptrs.len(), ow * p.taps);
    match p.taps {
        // SAFETY: forwarded contract.
        9 => unsafe { row_neon_t::<9>(p, ptrs, ow, out) },
        // SAFETY: forwarded contract.
        25 => unsafe { row_neon_t::<25>(p, ptrs, ow, out) },
        t => unreachable!("depthwise SIMD kernel called with {t} taps"),
    }
}

/// Load `n ≤ 8` bytes (8 without a copy).
///
/// # Safety
/// NEON; `src` must address `n` readable bytes.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load8(src: *const u8, n: usize) -> uint8x8_t {
    // SAFETY: `n` readable bytes by contract; the tail goes through a local buffer.
    unsafe {
        if n == 8 {
            vld1_u8(src)
        } else {
            let mut buf = [0u8; 8];
            std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), n);
            vld1_u8(buf.as_ptr())
        }
    }
}

#[target_feature(enable = "neon")]
unsafe fn row_neon_t<const T: usize>(p: &RowParams, ptrs: &[*const u8], ow: usize, out: &mut [u8]) {
    let c = p.channels;
    let cp = c.div_ceil(super::BLOCK) * super::BLOCK;
    let zp = vdupq_n_s32(p.zero_point);
    let lo = vdupq_n_f32(p.lo);
    let hi = vdupq_n_f32(p.hi);
    let out_ptr = out.as_mut_ptr();
    let mut cb = 0;
    while cb < c {
        let n = (c - cb).min(8);
        // SAFETY: `cb + 8 <= cp` bounds the packed loads; input loads read `n` bytes of pixels
        // holding `c`; output writes `n` bytes at `ox·c + cb < ow·c`.
        unsafe {
            let wv: [int16x8_t; T] =
                std::array::from_fn(|t| vld1q_s16(p.packed_weights.as_ptr().add(t * cp + cb)));
            let b_lo = vld1q_s32(p.packed_bias.as_ptr().add(cb));
            let b_hi = vld1q_s32(p.packed_bias.as_ptr().add(cb + 4));
            let m_lo = vld1q_f32(p.multiplier.as_ptr().add(cb));
            let m_hi = vld1q_f32(p.multiplier.as_ptr().add(cb + 4));
            for ox in 0..ow {
                let tp = ptrs.as_ptr().add(ox * T);
                let mut a_lo = b_lo;
                let mut a_hi = b_hi;
                for (t, w) in wv.iter().enumerate() {
                    let x = vreinterpretq_s16_u16(vmovl_u8(load8((*tp.add(t)).add(cb), n)));
                    a_lo = vmlal_s16(a_lo, vget_low_s16(x), vget_low_s16(*w));
                    a_hi = vmlal_high_s16(a_hi, x, *w);
                }
                let bytes = narrow_u8_neon(
                    requant_neon(a_lo, m_lo, zp, lo, hi),
                    requant_neon(a_hi, m_hi, zp, lo, hi),
                );
                let dst = out_ptr.add(ox * c + cb);
                if n == 8 {
                    vst1_u8(dst, bytes);
                } else {
                    let mut buf = [0u8; 8];
                    vst1_u8(buf.as_mut_ptr(), bytes);
                    std::ptr::copy_nonoverlapping(buf.as_ptr(), dst, n);
                }
            }
        }
        cb += 8;
    }
}
