//! NEON microkernel: up to 8 rows × 8 columns, one K value at a time (`smlal` by lane).
//!
//! ```text
//!             weights: 1 q register per K value (8 columns, widened to i16 at pack time)
//!             ┌────────────┬────────────┐
//!  A row 0 ──▶│ acc[0][0]  │ acc[0][1]  │   each acc: 4 × i32
//!  (8 K values│    ...     │    ...     │
//!   as i16)   │            │            │
//!  A row 7 ──▶│ acc[7][0]  │ acc[7][1]  │   16 accumulators + 8 A registers + weights
//!             └────────────┴────────────┘
//! ```
//!
//! i16 × i16 → i32 widening multiply-accumulate is exact for u8 × i8.

use super::epilogue::{a_chunk, finish_row};
use crate::gemm::kernel::{KernelDesc, Tile};
use crate::Isa;
use std::arch::aarch64::*;

pub(crate) static DESC: KernelDesc = KernelDesc {
    name: "neon_gemm_i32_8x8",
    isa: Isa::Neon,
    mr: 8,
    nr: 8,
    kr: 1,
    vw: 8,
    wide: true,
    a_xor_128: false,
    run,
};

/// # Safety
/// `t` must describe a valid tile for this kernel's packing; the CPU must support NEON.
unsafe fn run(t: &Tile) {
    macro_rules! dispatch {
        ($($r:literal)*) => {
            match t.m {
                $( $r => tile::<$r>(t), )*
                _ => unreachable!("tile rows {} outside 1..=8", t.m),
            }
        };
    }
    // SAFETY: forwarded from the caller.
    unsafe { dispatch!(1 2 3 4 5 6 7 8) }
}

/// # Safety
/// As [`run`], with `t.m == R`.
#[target_feature(enable = "neon")]
unsafe fn tile<const R: usize>(t: &Tile) {
    let mut acc = [[vdupq_n_s32(0); 2]; R];
    let w = t.w.cast::<i16>();
    let mut k0 = 0;
    // SAFETY (whole loop): A is read through `a_chunk` (bounded by k); the panel holds k × 8
    // i16 weights and we read index < k·8.
    while k0 < t.k {
        let steps = (t.k - k0).min(8);
        let a: [int16x8_t; R] = std::array::from_fn(|r| {
            let b = a_chunk(t, r, k0, 8);
            vreinterpretq_s16_u16(vmovl_u8(vld1_u8(b.as_ptr())))
        });
        macro_rules! step {
            ($l:literal) => {
                if $l < steps {
                    let wv = vld1q_s16(w.add((k0 + $l) * 8));
                    let wl = vget_low_s16(wv);
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        acc_r[0] = vmlal_laneq_s16::<$l>(acc_r[0], wl, a[r]);
                        acc_r[1] = vmlal_high_laneq_s16::<$l>(acc_r[1], wv, a[r]);
                    }
                }
            };
        }
        step!(0);
        step!(1);
        step!(2);
        step!(3);
        step!(4);
        step!(5);
        step!(6);
        step!(7);
        k0 += 8;
    }
    for (r, acc_r) in acc.iter().enumerate() {
        finish_row(t, r, *acc_r);
    }
}
