//! AVX2 microkernel: up to 4 rows × 16 columns, K in pairs (`vpmaddwd` on i16).
//!
//! ```text
//!             weights: 2 ymm per K pair (8 columns × 2 K values, widened to i16 at pack time)
//!             ┌────────────┬────────────┐
//!  A row 0 ──▶│ acc[0][0]  │ acc[0][1]  │   each acc: 8 × i32
//!  (2 values  │    ...     │    ...     │
//!   as i16)   │            │            │
//!  A row 3 ──▶│ acc[3][0]  │ acc[3][1]  │   8 accumulators + 2 weights + 1 broadcast
//!             └────────────┴────────────┘
//! ```
//!
//! Exact by construction: `vpmaddubsw` would add two u8×i8 products into a *saturating* i16
//! (255·(-128)·2 does not fit), so this kernel widens both operands to i16 (activations at run
//! time, weights at pack time) and uses `vpmaddwd`, whose pairs of i16 products sum into i32.

use super::epilogue_ymm::finish;
use crate::gemm::kernel::{KernelDesc, Tile};
use crate::Isa;
use std::arch::x86_64::*;

pub(crate) static DESC: KernelDesc = KernelDesc {
    name: "avx2_gemm_i32_4x16c2",
    isa: Isa::Avx2,
    mr: 4,
    nr: 16,
    kr: 2,
    vw: 8,
    wide: true,
    a_xor_128: false,
    run,
};

/// # Safety
/// `t` must describe a valid tile for this kernel's packing; the CPU must support AVX2.
unsafe fn run(t: &Tile) {
    macro_rules! dispatch {
        ($($r:literal)*) => {
            match (t.m, t.width / 8) {
                $( ($r, 1) => tile::<$r, 1>(t), ($r, _) => tile::<$r, 2>(t), )*
                _ => unreachable!("tile rows {} outside 1..=4", t.m),
            }
        };
    }
    // SAFETY: forwarded from the caller.
    unsafe { dispatch!(1 2 3 4) }
}

/// Row `r`'s K values `2g, 2g + 1` as two i16 in one i32 (zero past `k`).
#[inline(always)]
unsafe fn a_pair(t: &Tile, r: usize, g: usize) -> i32 {
    let p = t.a.add(r * t.lda + 2 * g);
    let lo = *p as i32;
    let hi = if 2 * g + 1 < t.k { *p.add(1) as i32 } else { 0 };
    lo | (hi << 16)
}

/// # Safety
/// As [`run`], with `t.m == R` and `t.width == 8·C`.
#[target_feature(enable = "avx2")]
unsafe fn tile<const R: usize, const C: usize>(t: &Tile) {
    let mut acc = [[_mm256_setzero_si256(); C]; R];
    let mut w = t.w.cast::<__m256i>();
    // SAFETY (whole loop): `a_pair` reads only bytes < k of rows < m; the panel holds
    // ceil(k/2) × C vectors.
    for g in 0..t.k.div_ceil(2) {
        let wv: [__m256i; C] = std::array::from_fn(|c| _mm256_loadu_si256(w.add(c)));
        w = w.add(C);
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let av = _mm256_set1_epi32(a_pair(t, r, g));
            for c in 0..C {
                acc_r[c] = _mm256_add_epi32(acc_r[c], _mm256_madd_epi16(av, wv[c]));
            }
        }
    }
    finish::<R, C>(t, &acc);
}
