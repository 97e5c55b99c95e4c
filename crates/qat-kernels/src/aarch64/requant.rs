//! SIMD requantization epilogue for aarch64 NEON: the lane-wise twin of
//! [`qat_core::requantize`].
//!
//! `scvtf` (i32 → f32) and `fcvtns` (f32 → i32, nearest with ties to even) round as Rust's
//! `as f32` and `round_ties_even` do under the default FPCR; `fmul` is a plain multiply (never
//! fused). The clamp uses `fmaxnm`/`fminnm`, which ignore a NaN operand exactly like
//! `f32::max`/`min`, and comes before the conversion so no lane converts an out-of-range float.

use std::arch::aarch64::*;

/// Requantize 4 accumulators. `lo`/`hi` are `qmin - zp` / `qmax - zp` as f32.
///
/// # Safety
/// The CPU must support NEON (every aarch64 Linux CPU does; check [`crate::Isa::Neon`]).
#[inline]
#[target_feature(enable = "neon")]
pub unsafe fn requant_neon(
    acc: int32x4_t,
    multiplier: float32x4_t,
    zero_point: int32x4_t,
    lo: float32x4_t,
    hi: float32x4_t,
) -> int32x4_t {
    let v = vmulq_f32(vcvtq_f32_s32(acc), multiplier);
    let v = vminnmq_f32(vmaxnmq_f32(v, lo), hi);
    vaddq_s32(vcvtnq_s32_f32(v), zero_point)
}

/// Narrow 8 lanes already in `[0, 255]` (two [`requant_neon`] results) to 8 bytes, in order.
///
/// # Safety
/// The CPU must support NEON.
#[inline]
#[target_feature(enable = "neon")]
pub unsafe fn narrow_u8_neon(a: int32x4_t, b: int32x4_t) -> uint8x8_t {
    vqmovun_s16(vcombine_s16(vqmovn_s32(a), vqmovn_s32(b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::requant_test_cases::cases;
    use crate::Isa;

    #[test]
    fn neon_lanes_equal_scalar() {
        if !Isa::Neon.is_supported() {
            eprintln!("SKIPPED requant neon: no neon");
            return;
        }
        let all = cases();
        for chunk in all.chunks(4) {
            let c: [_; 4] = std::array::from_fn(|i| chunk[i.min(chunk.len() - 1)]);
            let acc = c.map(|c| c.acc);
            let mult = c.map(|c| c.multiplier);
            let zp = c.map(|c| c.zp);
            let lo = c.map(|c| (c.qmin - c.zp) as f32);
            let hi = c.map(|c| (c.qmax - c.zp) as f32);
            let mut out = [0i32; 4];
            // SAFETY: NEON checked above; every pointer is to a 4-lane local array.
            unsafe {
                let r = requant_neon(
                    vld1q_s32(acc.as_ptr()),
                    vld1q_f32(mult.as_ptr()),
                    vld1q_s32(zp.as_ptr()),
                    vld1q_f32(lo.as_ptr()),
                    vld1q_f32(hi.as_ptr()),
                );
                vst1q_s32(out.as_mut_ptr(), r);
            }
            for (c, g) in c.iter().zip(out) {
                let want = qat_core::requantize(c.acc, c.multiplier, c.zp, c.qmin, c.qmax);
                assert_eq!(g, want, "{c:?}");
            }
        }
    }

    #[test]
    fn narrowing_keeps_lane_order() {
        let v = [0i32, 255, 1, 128, 7, 200, 254, 3];
        let mut out = [0u8; 8];
        // SAFETY: NEON is baseline on aarch64 Linux; loads read 4 + 4 lanes, store writes 8.
        unsafe {
            let n = narrow_u8_neon(vld1q_s32(v.as_ptr()), vld1q_s32(v[4..].as_ptr()));
            vst1_u8(out.as_mut_ptr(), n);
        }
        assert_eq!(out, v.map(|x| x as u8));
    }
}
