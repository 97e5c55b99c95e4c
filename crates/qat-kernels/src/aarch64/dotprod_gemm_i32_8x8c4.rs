//! dotprod microkernel: up to 8 rows × 8 columns, K in groups of 4 (`sdot`).
//!
//! ```text
//!             weights: 2 q registers per K group (4 columns × 4 K bytes each)
//!             ┌────────────┬────────────┐
//!  A row 0 ──▶│ acc[0][0]  │ acc[0][1]  │   each acc: 4 × i32
//!  (4 bytes   │    ...     │    ...     │
//!   broadcast)│            │            │
//!  A row 7 ──▶│ acc[7][0]  │ acc[7][1]  │   16 accumulators
//!             └────────────┴────────────┘
//! ```
//!
//! `sdot` is i8 × i8 and `udot` u8 × u8; u8 activations × i8 weights fit neither. The kernel
//! flips each activation byte's top bit (`a ^ 0x80 = a - 128` as i8) and uses `sdot`; the
//! packing adds `128 · Σ_k w` to the bias (`a_xor_128`), so the accumulators equal every
//! other ISA's. Stable Rust has no dotprod intrinsics: `sdot` is emitted with `asm!`.

use super::epilogue::{a_chunk, finish_row};
use crate::gemm::kernel::{KernelDesc, Tile};
use crate::Isa;
use std::arch::aarch64::*;
use std::arch::asm;

pub(crate) static DESC: KernelDesc = KernelDesc {
    name: "dotprod_gemm_i32_8x8c4",
    isa: Isa::Dotprod,
    mr: 8,
    nr: 8,
    kr: 4,
    vw: 8,
    wide: false,
    a_xor_128: true,
    run,
};

/// # Safety
/// `t` must describe a valid tile for this kernel's packing; the CPU must support dotprod.
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

/// `acc += Σ_4 a · b` per i32 lane (i8 × i8).
///
/// # Safety
/// The CPU must support dotprod.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: register-only instruction, available under the enabled feature.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
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
#[target_feature(enable = "neon,dotprod")]
unsafe fn tile<const R: usize>(t: &Tile) {
    let mut acc = [[vdupq_n_s32(0); 2]; R];
    let flip = vdupq_n_u8(0x80);
    let full = t.k / 4;
    let mut w = t.w.cast::<i8>();
    // SAFETY (whole loop): A reads are 4 bytes < k of rows < m (the tail goes through
    // `a_chunk`); the panel holds ceil(k/4) × 32 bytes.
    for g in 0..t.k.div_ceil(4) {
        let w0 = vld1q_s8(w);
        let w1 = vld1q_s8(w.add(16));
        w = w.add(32);
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let quad = if g < full {
                t.a.add(r * t.lda + 4 * g).cast::<u32>().read_unaligned()
            } else {
                u32::from_le_bytes(a_chunk(t, r, 4 * g, 4)[..4].try_into().unwrap())
            };
            let av = vreinterpretq_s8_u8(veorq_u8(vreinterpretq_u8_u32(vdupq_n_u32(quad)), flip));
            acc_r[0] = sdot(acc_r[0], w0, av);
            acc_r[1] = sdot(acc_r[1], w1, av);
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        finish_row(t, r, *acc_r);
    }
}
