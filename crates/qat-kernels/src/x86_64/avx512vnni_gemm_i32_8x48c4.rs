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
//! (the accumulators' start value) carries `-zp_a · Σ w`. The u8 epilogue requantizes a row's
//! vectors together and narrows them with saturating packs (see `U8Epilogue`). Tiles narrower than 48 columns (the last panel) run with 1 or 2
//! vectors; shorter tiles with fewer rows: both are const-generic instances, not masks.

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
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile<const R: usize, const C: usize>(t: &Tile) {
    // The accumulators start at the packed bias (it covers the panel's whole width).
    let bias: [__m512i; C] = std::array::from_fn(|c| _mm512_loadu_si512(t.bias.add(16 * c).cast()));
    let mut acc = [bias; R];
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

    match t.out {
        Out::I32 { ptr, ldc } => {
            // Lanes past `nc` are masked off on store.
            let mask: [u16; C] = std::array::from_fn(|c| {
                let valid = t.nc.saturating_sub(16 * c).min(16);
                ((1u32 << valid) - 1) as u16
            });
            for (r, acc_r) in acc.iter().enumerate() {
                for c in 0..C {
                    _mm512_mask_storeu_epi32(ptr.add(r * ldc + 16 * c).cast(), mask[c], acc_r[c]);
                }
            }
        }
        Out::U8 { ptr, ldc } if C <= 2 => {
            // One or two vectors per row: pack 4 / C rows together (see `store_rows`).
            let per = 4 / C;
            // One loop per epilogue variant, so each stays branch-free and unrolled; the
            // constants are built inside, so a variant computes only those it reads (the
            // packs-only one none of the byte clamps', ~20 instructions per tile).
            macro_rules! rows {
                ($float_clamp:literal, $packs_only:literal) => {{
                    let e = U8Epilogue::<C>::new_rows(t);
                    let mut r0 = 0;
                    while r0 < R {
                        let rows = (R - r0).min(per);
                        // Slot j holds row r0 + j / C (the last row repeated past R), vector
                        // j % C.
                        let v = std::array::from_fn(|j| acc[(r0 + j / C).min(R - 1)][j % C]);
                        let dst = ptr.add(r0 * ldc);
                        e.store_rows::<$float_clamp, $packs_only>(v, dst, ldc, rows);
                        r0 += rows;
                    }
                }};
            }
            match (t.fits_i32, t.packs_only) {
                (true, true) => rows!(false, true),
                (true, false) => rows!(false, false),
                (false, true) => rows!(true, true),
                (false, false) => rows!(true, false),
            }
        }
        Out::U8 { ptr, ldc } => {
            macro_rules! rows {
                ($float_clamp:literal, $packs_only:literal) => {{
                    let e = U8Epilogue::<C>::new(t);
                    for (r, acc_r) in acc.iter().enumerate() {
                        e.store::<$float_clamp, $packs_only>(acc_r, ptr.add(r * ldc));
                    }
                }};
            }
            match (t.fits_i32, t.packs_only) {
                (true, true) => rows!(false, true),
                (true, false) => rows!(false, false),
                (false, true) => rows!(true, true),
                (false, false) => rows!(true, false),
            }
        }
    }
}

/// The requantizing store of one tile row: [`qat_core::requantize`] exactly, in fewer
/// instructions than [`requant_avx512`](super::requant::requant_avx512) plus a narrowing store per vector.
///
/// Per vector only `min(f32(acc) · m, hi)` is computed in float and converted (round half to
/// even); the lower clamp and the zero point are applied after the saturating packs:
/// `vpackssdw`, `+ zp` (saturating i16), `vpackuswb`, then a byte `max` with `qmin`. This is
/// the same value because `hi` and `lo` are integers (`clamp(round(x), lo, hi) =
/// max(round(min(x, hi)), lo)`), every value at or above `lo` passes the packs unchanged
/// (`lo + zp = qmin ≥ 0`, `hi + zp = qmax ≤ 255`), and every value below `lo` — including
/// `i32::MIN`, which `vcvtps2dq` returns for a float below -2³¹ — lands at or below `qmin`
/// before the final `max`. The packs work per 128-bit lane; one `vpermd` restores column
/// order. Vectors past `C` repeat the last one (their bytes are never stored).
///
/// When every product is known to stay below 2³¹ in magnitude (`Tile::fits_i32`), the float
/// `min` is skipped as well and the upper clamp becomes a byte `min` with `qmax` after the
/// packs: `vcvtps2dq` then converts every lane exactly, a lane above `hi` rounds to at least
/// `hi` (an integer), and the monotone saturating packs keep it at or above `qmax`, which the
/// byte `min` restores; lanes in range pass the packs unchanged as before.
///
/// The zero-point add and the byte clamps are skipped when they are identities for every
/// column of the GEMM (`Tile::packs_only`): three or four of a row's ~17 epilogue
/// instructions on the usual ReLU6 outputs.
///
/// With one or two vectors per row, [`U8Epilogue::store_rows`] packs the vectors of 4 / C
/// rows together instead of repeating one row's vectors: fewer packs per output byte.
struct U8Epilogue<const C: usize> {
    mult: [__m512; 4],
    hi: [__m512; 4],
    /// `zero_point` as i16 in the packed order of vector pairs (0, 1) and (2, 2).
    zp: [__m512i; 2],
    /// `qmin` / `qmax` as bytes in the packed (pre-permutation) order.
    qmin: __m512i,
    qmax: __m512i,
    /// Columns `0..nc` of the row.
    mask: __mmask64,
}

impl<const C: usize> U8Epilogue<C> {
    /// # Safety
    /// AVX-512F/BW; `t`'s parameter arrays hold `16 · C` entries.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn new(t: &Tile) -> Self {
        Self::with_slots(t, |j| j.min(C - 1))
    }

    /// The constants of [`U8Epilogue::store_rows`]: slot `j` is column vector `j % C`.
    ///
    /// # Safety
    /// As [`U8Epilogue::new`].
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn new_rows(t: &Tile) -> Self {
        Self::with_slots(t, |j| j % C)
    }

    /// Constants for the four packed slots, slot `j` holding column vector `col(j) < C`.
    ///
    /// # Safety
    /// As [`U8Epilogue::new`].
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn with_slots(t: &Tile, col: impl Fn(usize) -> usize) -> Self {
        let ld_i = |p: *const i32, j: usize| _mm512_loadu_si512(p.add(16 * col(j)).cast());
        let ld_f = |p: *const f32, j: usize| _mm512_loadu_ps(p.add(16 * col(j)));
        let zp = [0, 1, 2, 3].map(|j| ld_i(t.zero_point, j));
        // Each column's qmin (= lo + zp, exact), through the same packs as the data.
        let qmin32 = [0, 1, 2, 3].map(|j| {
            let lo = _mm512_cvtps_epi32(ld_f(t.lo, j));
            _mm512_add_epi32(lo, ld_i(t.zero_point, j))
        });
        let packed16 = |v: [__m512i; 4]| {
            [
                _mm512_packs_epi32(v[0], v[1]),
                _mm512_packs_epi32(v[2], v[3]),
            ]
        };
        let qmax32 = [0, 1, 2, 3].map(|j| {
            let hi = _mm512_cvtps_epi32(ld_f(t.hi, j));
            _mm512_add_epi32(hi, ld_i(t.zero_point, j))
        });
        let q16 = packed16(qmin32);
        let x16 = packed16(qmax32);
        U8Epilogue {
            mult: std::array::from_fn(|j| ld_f(t.multiplier, j)),
            hi: std::array::from_fn(|j| ld_f(t.hi, j)),
            zp: packed16(zp),
            qmin: _mm512_packus_epi16(q16[0], q16[1]),
            qmax: _mm512_packus_epi16(x16[0], x16[1]),
            mask: if t.nc >= 64 { !0 } else { (1u64 << t.nc) - 1 },
        }
    }

    /// The packs and byte clamps of four converted vectors (in the packed, per-128-bit-lane
    /// order): `vpackssdw`, `+ zp`, `vpackuswb`, `max qmin`, and `min qmax` when the float
    /// clamp was skipped. `PACKS_ONLY` (only when the tile's `packs_only` holds: every column
    /// has zero point 0, `qmin` 0 and `qmax` 255, the usual ReLU / ReLU6 output) leaves out the
    /// add and both byte clamps, which are identities then: the packs' saturation at 0 and 255
    /// is the clamp.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn to_bytes<const FLOAT_CLAMP: bool, const PACKS_ONLY: bool>(
        &self,
        q: [__m512i; 4],
    ) -> __m512i {
        let w01 = _mm512_packs_epi32(q[0], q[1]);
        let w23 = _mm512_packs_epi32(q[2], q[3]);
        if PACKS_ONLY {
            return _mm512_packus_epi16(w01, w23);
        }
        let w01 = _mm512_adds_epi16(w01, self.zp[0]);
        let w23 = _mm512_adds_epi16(w23, self.zp[1]);
        let b = _mm512_max_epu8(_mm512_packus_epi16(w01, w23), self.qmin);
        if FLOAT_CLAMP {
            b
        } else {
            _mm512_min_epu8(b, self.qmax)
        }
    }

    /// Requantize one row's `C` accumulator vectors and store its `nc` bytes at `dst`;
    /// `FLOAT_CLAMP = false` only when the tile's `fits_i32` holds.
    ///
    /// # Safety
    /// AVX-512F/BW; `dst` is writable for `nc` bytes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn store<const FLOAT_CLAMP: bool, const PACKS_ONLY: bool>(
        &self,
        acc: &[__m512i; C],
        dst: *mut u8,
    ) {
        let q: [__m512i; C] = std::array::from_fn(|c| {
            let x = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[c]), self.mult[c]);
            if FLOAT_CLAMP {
                _mm512_cvtps_epi32(_mm512_min_ps(x, self.hi[c]))
            } else {
                _mm512_cvtps_epi32(x)
            }
        });
        let v = |c: usize| q[c.min(C - 1)];
        let b = self.to_bytes::<FLOAT_CLAMP, PACKS_ONLY>([v(0), v(1), v(2), v(3)]);
        // Lane L dword j holds columns 16j + 4L .. 16j + 4L + 4: gather them back in order.
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        // SAFETY: masked to the row's `nc` valid columns (caller).
        _mm512_mask_storeu_epi8(dst.cast(), self.mask, _mm512_permutexvar_epi32(order, b));
    }

    /// Requantize `rows ≤ 4 / C` rows at once (`C ≤ 2`): slot `j` of `v` is row `j / C`'s
    /// vector `j % C` (slots of missing rows repeat a real one; they are never stored), and row
    /// `i`'s `nc` bytes go to `dst + i·ldc`. The same packs as [`U8Epilogue::store`], but every
    /// packed byte belongs to an output row instead of three quarters (C = 1) or half (C = 2)
    /// of them repeating the row's vectors. Built by [`U8Epilogue::new_rows`].
    ///
    /// # Safety
    /// AVX-512F/BW/VL; `C ≤ 2`; rows `0..rows` are writable for `nc` bytes at `dst + i·ldc`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn store_rows<const FLOAT_CLAMP: bool, const PACKS_ONLY: bool>(
        &self,
        v: [__m512i; 4],
        dst: *mut u8,
        ldc: usize,
        rows: usize,
    ) {
        let q: [__m512i; 4] = std::array::from_fn(|j| {
            let x = _mm512_mul_ps(_mm512_cvtepi32_ps(v[j]), self.mult[j]);
            if FLOAT_CLAMP {
                _mm512_cvtps_epi32(_mm512_min_ps(x, self.hi[j]))
            } else {
                _mm512_cvtps_epi32(x)
            }
        });
        let b = self.to_bytes::<FLOAT_CLAMP, PACKS_ONLY>(q);
        // 128-bit lane j of the result = slot j's 16 columns, in order.
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        let b = _mm512_permutexvar_epi32(order, b);
        let row_bytes = 16 * C;
        // SAFETY (stores): each writes row i < rows at `dst + i·ldc`, masked to `nc` bytes.
        if self.mask == (1u64 << row_bytes) - 1 && ldc == row_bytes {
            // Full rows back to back: one store.
            let m = if rows * row_bytes == 64 {
                !0
            } else {
                (1u64 << (rows * row_bytes)) - 1
            };
            _mm512_mask_storeu_epi8(dst.cast(), m, b);
        } else if C == 1 {
            let m = self.mask as __mmask16;
            _mm_mask_storeu_epi8(dst.cast(), m, _mm512_castsi512_si128(b));
            if rows > 1 {
                let l = _mm512_extracti32x4_epi32::<1>(b);
                _mm_mask_storeu_epi8(dst.add(ldc).cast(), m, l);
            }
            if rows > 2 {
                let l = _mm512_extracti32x4_epi32::<2>(b);
                _mm_mask_storeu_epi8(dst.add(2 * ldc).cast(), m, l);
            }
            if rows > 3 {
                let l = _mm512_extracti32x4_epi32::<3>(b);
                _mm_mask_storeu_epi8(dst.add(3 * ldc).cast(), m, l);
            }
        } else {
            let m = self.mask as __mmask32;
            _mm256_mask_storeu_epi8(dst.cast(), m, _mm512_castsi512_si256(b));
            if rows > 1 {
                let h = _mm512_extracti64x4_epi64::<1>(b);
                _mm256_mask_storeu_epi8(dst.add(ldc).cast(), m, h);
            }
        }
    }
}
