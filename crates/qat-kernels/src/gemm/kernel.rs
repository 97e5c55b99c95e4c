//! Microkernel descriptors and the per-ISA table: one [`KernelDesc`] per kernel file, its
//! packing parameters next to its entry point (the packing and the kernel must agree).

use super::{Out, PackedGemm};
use crate::Isa;

/// A microkernel and the weight layout it reads.
///
/// Packed layout (see `pack.rs`): panels of `nr` columns; inside a panel of width `w` (a
/// multiple of `vw`, `w = nr` except for the last panel), for each group of `kr` values of K,
/// `w` columns × `kr` consecutive K values. K is padded with zero weights to a multiple of
/// `kr`, columns with zero weights to `w`.
#[derive(Debug)]
pub(crate) struct KernelDesc {
    /// `{isa}_gemm_i32_{mr}x{nr}[c{kr}]`: also the file name and what `kernel_name()` reports.
    pub name: &'static str,
    pub isa: Isa,
    /// Rows of A per tile.
    pub mr: usize,
    /// Columns per full weight panel.
    pub nr: usize,
    /// K values per packed group (the dot-product depth of the instruction).
    pub kr: usize,
    /// The last panel's width is rounded up to a multiple of this (the vector width).
    pub vw: usize,
    /// Weights stored widened to i16 (kernels that multiply i16 × i16).
    pub wide: bool,
    /// The kernel reads activations as `a ^ 0x80` (i8 × i8 dot products); the packing folds
    /// `+128 · Σ_k w` into the bias.
    pub a_xor_128: bool,
    /// Compute one tile.
    pub run: unsafe fn(&Tile),
}

/// One tile's arguments, in raw pointers so that tiles can run on several threads.
pub(crate) struct Tile {
    /// Row 0 of the tile in A; rows are `lda` apart and only `[0, k)` of each is read.
    pub a: *const u8,
    pub lda: usize,
    /// Rows in this tile, `1..=mr`.
    pub m: usize,
    /// Unpadded K.
    pub k: usize,
    /// The panel's packed weights (`i8`, or `i16` when `wide`).
    pub w: *const u8,
    /// Packed width of this panel (multiple of `vw`, at most `nr`).
    pub width: usize,
    /// Valid columns, `1..=width`; only these are written.
    pub nc: usize,
    /// Per-column epilogue parameters of the panel's first column, `width` entries each.
    pub bias: *const i32,
    pub multiplier: *const f32,
    pub zero_point: *const i32,
    pub lo: *const f32,
    pub hi: *const f32,
    /// The panel's first column's [`qat_core::Requant`] (scalar kernel), `nc` entries.
    pub requant: *const qat_core::Requant,
    /// Every product `f32(acc) · multiplier` of this GEMM is below 2³¹ in magnitude
    /// ([`super::products_fit_i32`]): u8 epilogues may clamp after converting.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub fits_i32: bool,
    /// Every column has zero point 0, `qmin` 0 and `qmax` 255 ([`packs_only`]).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub packs_only: bool,
    /// Output position of the tile's (0, 0) element.
    pub out: Out,
}

/// Whether every column's u8 requantization has zero point 0, `qmin` 0 and `qmax` 255 (a
/// ReLU / ReLU6 output with zero point 0): the saturating packs of an AVX-512 u8 epilogue are
/// then the whole clamp, and its zero-point add and byte `max` / `min` are identities.
pub(crate) fn packs_only(requant: &[qat_core::Requant]) -> bool {
    requant
        .iter()
        .all(|r| r.zero_point == 0 && r.qmin == 0 && r.qmax == 255)
}

impl Tile {
    /// Output row `r`'s first element, for u8 or i32 output.
    #[inline(always)]
    pub fn out_row(&self, r: usize) -> Out {
        match self.out {
            Out::U8 { ptr, ldc } => Out::U8 {
                // SAFETY (for callers): r < m, and the driver checked the output covers m rows.
                ptr: ptr.wrapping_add(r * ldc),
                ldc,
            },
            Out::I32 { ptr, ldc } => Out::I32 {
                ptr: ptr.wrapping_add(r * ldc),
                ldc,
            },
        }
    }
}

/// The kernel for `isa` (which the caller has checked is supported).
pub(crate) fn for_isa(isa: Isa) -> &'static KernelDesc {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => &crate::x86_64::avx2_gemm_i32_4x16c2::DESC,
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni => &crate::x86_64::avxvnni_gemm_i32_6x16c4::DESC,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => &crate::x86_64::avx512vnni_gemm_i32_8x48c4::DESC,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => &crate::aarch64::neon_gemm_i32_8x8::DESC,
        #[cfg(target_arch = "aarch64")]
        Isa::Dotprod => &crate::aarch64::dotprod_gemm_i32_8x8c4::DESC,
        #[cfg(target_arch = "aarch64")]
        Isa::I8mm => &crate::aarch64::i8mm_gemm_i32_8x8c8::DESC,
        _ => &super::scalar_gemm_i32_4x4::DESC,
    }
}

/// `(isa, kernel name)` for every GEMM kernel compiled for this architecture, supported by
/// this CPU or not.
pub fn kernel_names() -> Vec<(Isa, &'static str)> {
    Isa::ALL
        .into_iter()
        .map(|isa| (isa, for_isa(isa)))
        .filter(|(isa, d)| d.isa == *isa)
        .map(|(isa, d)| (isa, d.name))
        .collect()
}

impl PackedGemm {
    pub(crate) fn desc(&self) -> &'static KernelDesc {
        self.desc
    }
}
