//! AVX-512 VNNI microkernel: up to 8 rows × 48 columns, K in groups of 4 (`vpdpbusd` zmm).
//!
//! ```text
//!             weights: 3 zmm per K group (16 columns × 4 K bytes each)
//!             ┌────────────┬────────────┬────────────┐
//!  A row 0 ──▶│ acc[0][0]  │ acc[0][1]  │ acc[0][2]  │   each acc: 16 × i32
//!  (4 bytes   │    ...     │    ...     │    ...     │
//!   broadcast)│            │            │            │
//!  A row 7 ──▶│ acc[7][0]  │ acc[7][1]  │ acc[7][2]  │   24 accumulators + 3 weights
//!             └────────────┴────────────┴────────────┘
//! ```
//!
//! `vpdpbusd` multiplies u8 (the broadcast activations) by i8 (the weights) and adds groups of
//! four products into i32 without saturation, so raw activations go in and the packed bias
//! carries `-zp_a · Σ w`. Tiles narrower than 48 columns (the last panel) run with 1 or 2
//! vectors; shorter tiles with fewer rows: both are const-generic instances, not masks.

use super::requant::requant_avx512;
use crate::gemm::kernel::{KernelDesc, Tile};
use crate::gemm::Out;
use crate::Isa;
use std::arch::x86_64::*;

pub(crate) static DESC: KernelDesc = KernelDesc {
    name: "avx512vnni_gemm_i32_8x48c4",
    isa: Isa::Avx512Vnni,
    mr: 8,
    nr: 48,
    kr: 4,
    vw: 16,
    wide: false,
    a_xor_128: false,
    run,
};

/// # Safety
/// `t` must describe a valid tile for this kernel's packing, and the CPU must support
/// AVX-512 F/BW/VNNI.
unsafe fn run(t: &Tile) {
    macro_rules! dispatch {
        ($($r:literal)*) => {
            match (t.m, t.width / 16) {
                $( ($r, 1) => tile::<$r, 1>(t), ($r, 2) => tile::<$r, 2>(t), ($r, _) => tile::<$r, 3>(t), )*
                _ => unreachable!("tile rows {} outside 1..=8", t.m),
            }
        };
    }
    // SAFETY: forwarded from the caller.
    unsafe { dispatch!(1 2 3 4 5 6 7 8) }
}

/// 4 bytes of row `r` at K offset `4·g`, zero-filled past `k` (the weights there are zero).
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
/// As [`run`], with `t.m == R` and `t.width == 16 · C`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const R: usize, const C: usize>(t: &Tile) {
    let mut acc = [[_mm512_setzero_si512(); C]; R];
    let groups = t.k.div_ceil(4);
    let full = t.k / 4;
    let mut w = t.w.cast::<__m512i>();
    // SAFETY (whole loop): row r < R = m reads A bytes [4g, 4g + 4) ⊂ [0, k) (the tail group
    // goes through `a_quad`'s bounded copy); the panel holds `groups` × C vectors.
    for g in 0..full {
        let wv: [__m512i; C] = std::array::from_fn(|c| _mm512_loadu_si512(w.add(c)));
        w = w.add(C);
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_epi32(t.a.add(r * t.lda + 4 * g).cast::<i32>().read_unaligned());
            for c in 0..C {
                acc_r[c] = _mm512_dpbusd_epi32(acc_r[c], av, wv[c]);
            }
        }
    }
    if groups > full {
        let wv: [__m512i; C] = std::array::from_fn(|c| _mm512_loadu_si512(w.add(c)));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_epi32(a_quad(t, r, full));
            for c in 0..C {
                acc_r[c] = _mm512_dpbusd_epi32(acc_r[c], av, wv[c]);
            }
        }
    }

    // Epilogue. Lanes past `nc` are masked off on store.
    let mask: [u16; C] = std::array::from_fn(|c| {
        let valid = t.nc.saturating_sub(16 * c).min(16);
        ((1u32 << valid) - 1) as u16
    });
    let bias: [__m512i; C] = std::array::from_fn(|c| _mm512_loadu_si512(t.bias.add(16 * c).cast()));
    match t.out {
        Out::I32 { ptr, ldc } => {
            for (r, acc_r) in acc.iter().enumerate() {
                for c in 0..C {
                    let v = _mm512_add_epi32(acc_r[c], bias[c]);
                    _mm512_mask_storeu_epi32(ptr.add(r * ldc + 16 * c).cast(), mask[c], v);
                }
            }
        }
        Out::U8 { ptr, ldc } => {
            let mult: [__m512; C] =
                std::array::from_fn(|c| _mm512_loadu_ps(t.multiplier.add(16 * c)));
            let zp: [__m512i; C] =
                std::array::from_fn(|c| _mm512_loadu_si512(t.zero_point.add(16 * c).cast()));
            let lo: [__m512; C] = std::array::from_fn(|c| _mm512_loadu_ps(t.lo.add(16 * c)));
            let hi: [__m512; C] = std::array::from_fn(|c| _mm512_loadu_ps(t.hi.add(16 * c)));
            for (r, acc_r) in acc.iter().enumerate() {
                for c in 0..C {
                    let v = _mm512_add_epi32(acc_r[c], bias[c]);
                    let q = requant_avx512(v, mult[c], zp[c], lo[c], hi[c]);
                    _mm512_mask_cvtepi32_storeu_epi8(ptr.add(r * ldc + 16 * c).cast(), mask[c], q);
                }
            }
        }
    }
}
