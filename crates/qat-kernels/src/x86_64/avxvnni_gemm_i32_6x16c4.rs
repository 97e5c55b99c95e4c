//! AVX-VNNI microkernel: up to 6 rows × 16 columns, K in groups of 4 (VEX `vpdpbusd` ymm).
//!
//! ```text
//!             weights: 2 ymm per K group (8 columns × 4 K bytes each)
//!             ┌────────────┬────────────┐
//!  A row 0 ──▶│ acc[0][0]  │ acc[0][1]  │   each acc: 8 × i32
//!  (4 bytes   │    ...     │    ...     │
//!   broadcast)│            │            │
//!  A row 5 ──▶│ acc[5][0]  │ acc[5][1]  │   12 accumulators + 2 weights + 1 broadcast
//!             └────────────┴────────────┘
//! ```
//!
//! Same arithmetic as the AVX-512 VNNI kernel (u8 × i8 into i32, no saturation), 16 registers.

use super::epilogue_ymm::finish;
use crate::gemm::kernel::{KernelDesc, Tile};
use crate::Isa;
use std::arch::x86_64::*;

pub(crate) static DESC: KernelDesc = KernelDesc {
    name: "avxvnni_gemm_i32_6x16c4",
    isa: Isa::AvxVnni,
    mr: 6,
    nr: 16,
    kr: 4,
    vw: 8,
    wide: false,
    a_xor_128: false,
    run,
};

/// # Safety
/// `t` must describe a valid tile for this kernel's packing; the CPU must support AVX-VNNI.
unsafe fn run(t: &Tile) {
    macro_rules! dispatch {
        ($($r:literal)*) => {
            match (t.m, t.width / 8) {
                $( ($r, 1) => tile::<$r, 1>(t), ($r, _) => tile::<$r, 2>(t), )*
                _ => unreachable!("tile rows {} outside 1..=6", t.m),
            }
        };
    }
    // SAFETY: forwarded from the caller.
    unsafe { dispatch!(1 2 3 4 5 6) }
}

/// 4 bytes of row `r` at K offset `4·g`, zero-filled past `k`.
#[inline(always)]
unsafe fn a_quad(t: &Tile, r: usize, g: usize) -> i32 {
    let p = t.a.add(r * t.lda + 4 * g);
    if 4 * g + 4 <= t.k {
        p.cast::<i32>().read_unaligned()
    } else {
        let mut b = [0u8; 4];
        for (i, x) in b.iter_mut().enumerate().take(t.k - 4 * g) {
            *x = *p.add(i);
        }
        i32::from_le_bytes(b)
    }
}

/// # Safety
/// As [`run`], with `t.m == R` and `t.width == 8·C`.
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn tile<const R: usize, const C: usize>(t: &Tile) {
    let mut acc = [[_mm256_setzero_si256(); C]; R];
    let mut w = t.w.cast::<__m256i>();
    // SAFETY (whole loop): `a_quad` reads only bytes < k of rows < m; the panel holds
    // ceil(k/4) × C vectors.
    for g in 0..t.k.div_ceil(4) {
        let wv: [__m256i; C] = std::array::from_fn(|c| _mm256_loadu_si256(w.add(c)));
        w = w.add(C);
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let av = _mm256_set1_epi32(a_quad(t, r, g));
            for c in 0..C {
                acc_r[c] = _mm256_dpbusd_avx_epi32(acc_r[c], av, wv[c]);
            }
        }
    }
    finish::<R, C>(t, &acc);
}
