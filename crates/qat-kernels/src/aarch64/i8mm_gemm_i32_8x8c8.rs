//! i8mm microkernel: up to 8 rows × 8 columns, K in groups of 8 (`usmmla`).
//!
//! ```text
//!   usmmla: (2 rows × 8 K, u8) × (8 K × 2 columns, i8)ᵀ → 2×2 i32 = [r0c0 r0c1 r1c0 r1c1]
//!
//!             weights: 4 q registers per K group (column pairs 0-1, 2-3, 4-5, 6-7)
//!             ┌──────┬──────┬──────┬──────┐
//!  rows 0-1 ─▶│ 2×2  │ 2×2  │ 2×2  │ 2×2  │
//!  rows 2-3 ─▶│      │      │      │      │   16 accumulators, each a 2×2 block
//!  rows 4-5 ─▶│      │      │      │      │
//!  rows 6-7 ─▶│      │      │      │      │
//!             └──────┴──────┴──────┴──────┘
//! ```
//!
//! `usmmla` multiplies u8 by i8 directly: no +128 trick. The 2×2 blocks are unzipped into rows
//! (`zip1`/`zip2` on 64-bit lanes) before the epilogue. Stable Rust has no i8mm intrinsics:
//! `usmmla` is emitted with `asm!`.

use super::epilogue::{a_chunk, finish_row};
use crate::gemm::kernel::{KernelDesc, Tile};
use crate::Isa;
use std::arch::aarch64::*;
use std::arch::asm;

pub(crate) static DESC: KernelDesc = KernelDesc {
    name: "i8mm_gemm_i32_8x8c8",
    isa: Isa::I8mm,
    mr: 8,
    nr: 8,
    kr: 8,
    vw: 8,
    wide: false,
    a_xor_128: false,
    run,
};

/// # Safety
/// `t` must describe a valid tile for this kernel's packing; the CPU must support i8mm.
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

/// `acc += a (2×8 u8) · b (2×8 i8)ᵀ`.
///
/// # Safety
/// The CPU must support i8mm.
#[inline]
#[target_feature(enable = "neon,i8mm")]
unsafe fn usmmla(acc: int32x4_t, a: uint8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: register-only instruction, available under the enabled feature.
    unsafe {
        asm!(
            "usmmla {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// # Safety
/// As [`run`], with `t.m == R`.
#[target_feature(enable = "neon,i8mm")]
unsafe fn tile<const R: usize>(t: &Tile) {
    let pairs = R.div_ceil(2);
    let mut acc = [[vdupq_n_s32(0); 4]; 4];
    let full = t.k / 8;
    let mut w = t.w.cast::<i8>();
    // SAFETY (whole loop): A reads are 8 bytes < k of rows < m (the tail goes through
    // `a_chunk`; a missing odd row reads as zeros); the panel holds ceil(k/8) × 64 bytes.
    for g in 0..t.k.div_ceil(8) {
        let wv: [int8x16_t; 4] = std::array::from_fn(|c| vld1q_s8(w.add(16 * c)));
        w = w.add(64);
        for (p, acc_p) in acc.iter_mut().enumerate().take(pairs) {
            let row = |r: usize| {
                if r >= R {
                    vdup_n_u8(0)
                } else if g < full {
                    vld1_u8(t.a.add(r * t.lda + 8 * g))
                } else {
                    vld1_u8(a_chunk(t, r, 8 * g, 8).as_ptr())
                }
            };
            let av = vcombine_u8(row(2 * p), row(2 * p + 1));
            for c in 0..4 {
                acc_p[c] = usmmla(acc_p[c], av, wv[c]);
            }
        }
    }
    for (p, acc_p) in acc.iter().enumerate().take(pairs) {
        let lanes = |c: usize| vreinterpretq_s64_s32(acc_p[c]);
        let even = [
            vreinterpretq_s32_s64(vzip1q_s64(lanes(0), lanes(1))),
            vreinterpretq_s32_s64(vzip1q_s64(lanes(2), lanes(3))),
        ];
        finish_row(t, 2 * p, even);
        if 2 * p + 1 < R {
            let odd = [
                vreinterpretq_s32_s64(vzip2q_s64(lanes(0), lanes(1))),
                vreinterpretq_s32_s64(vzip2q_s64(lanes(2), lanes(3))),
            ];
            finish_row(t, 2 * p + 1, odd);
        }
    }
}
