//! Packed int8 GEMM: `u8` activations × `i8` weights → `i32`, with a fused requantization
//! epilogue → `u8`.
//!
//! # API in one screen (for the conv / runtime code built on it)
//!
//! ```text
//! let g = PackedGemm::new(weights /* N×K row-major i8 */, n, k, Some(&bias) /* N i32 */,
//!                         input_zero_point /* u8 zp of A */, &requant /* 1 or N qat_core::Requant */,
//!                         isa::active())?;            // packs once; pick the ISA or force one
//! g.gemm_u8(a /* M×K u8, row stride lda */, m, lda, out /* M×N u8, row stride ldc */, ldc, threads)?;
//! g.gemm_i32(a, m, lda, out_i32, ldc, threads)?;      // Σ_k (a - zp_a)·w + bias, no requant
//! g.kernel_name();                                    // e.g. "avx512vnni_gemm_i32_8x48c4"
//! ```
//!
//! Output element `(i, j)` is
//! `requant[j].apply(bias[j] + Σ_k (a[i·lda + k] - zp_a) · w[j·k + k])` with
//! [`qat_core::requantize`] as the one definition, bit-identical on every ISA and for any
//! thread count. A 1×1 convolution is `gemm_u8` over pixels (NHWC: `m = N·H·W`, `lda = C_in`);
//! a k×k convolution is `gemm_u8` over an im2col matrix whose padding bytes hold `zp_a`.
//! ReLU / ReLU6 are just the `qmin` / `qmax` of each [`Requant`] (see
//! [`crate::Activation::bounds`]).
//!
//! Weights may use the full `[-128, 127]` range. Activations and outputs are u8. `A` rows are
//! read only in `[0, k)` (no padding needed, no out-of-bounds reads); outputs are written only
//! in `[0, n)` of each row.
//!
//! ```
//! use qat_core::Requant;
//! use qat_kernels::{gemm::PackedGemm, isa, Isa};
//! // 2 output channels, K = 3.
//! let w: [i8; 6] = [1, 2, 3, -1, -2, -3];
//! let rq = Requant { multiplier: 0.5, zero_point: 10, qmin: 0, qmax: 255 };
//! let g = PackedGemm::new(&w, 2, 3, Some(&[4, 0]), 1, &[rq], isa::active()).unwrap();
//! let a: [u8; 3] = [2, 3, 4]; // minus zp 1 → [1, 2, 3]
//! let mut acc = [0i32; 2];
//! g.gemm_i32(&a, 1, 3, &mut acc, 2, 1).unwrap();
//! assert_eq!(acc, [14 + 4, -14]);
//! let mut out = [0u8; 2];
//! g.gemm_u8(&a, 1, 3, &mut out, 2, 1).unwrap();
//! assert_eq!(out, [19, 3]); // 18·0.5 + 10, -14·0.5 + 10
//! # let _ = Isa::Scalar;
//! ```

mod driver;
pub(crate) mod kernel;
mod pack;
pub mod reference;
mod scalar_gemm_i32_4x4;

#[cfg(test)]
pub(crate) mod requant_test_cases;

use crate::error::{check_isa, check_len, check_scale, check_zero_point, KernelError, Result};
use crate::Isa;
pub use kernel::kernel_names;
use kernel::KernelDesc;
use pack::CacheLine;
use qat_core::Requant;

/// Largest `|Σ_k (a - zp_a)·w|` per unit of K: `255 · 128`.
const MAX_PRODUCT: i64 = 255 * 128;

/// Weights packed once for one kernel, with the zero-point corrections folded into the bias.
///
/// See the [module documentation](self) for the API and the exact output definition.
#[derive(Clone)]
pub struct PackedGemm {
    desc: &'static KernelDesc,
    n: usize,
    k: usize,
    input_zero_point: i32,
    weights: Vec<CacheLine>,
    /// Per column (padded to a whole panel): bias + zero-point / ISA corrections.
    bias: Vec<i32>,
    multiplier: Vec<f32>,
    zero_point: Vec<i32>,
    lo: Vec<f32>,
    hi: Vec<f32>,
    requant: Vec<Requant>,
    /// Every column's `|f32(acc) · multiplier|` stays below 2³¹ for any input (see
    /// [`products_fit_i32`]): the u8 epilogues may then skip the float upper clamp.
    fits_i32: bool,
    /// The u8 epilogue needs only its packs as the clamp (see [`kernel::packs_only`]).
    packs_only: bool,
}

impl std::fmt::Debug for PackedGemm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedGemm")
            .field("kernel", &self.desc.name)
            .field("n", &self.n)
            .field("k", &self.k)
            .field("input_zero_point", &self.input_zero_point)
            .finish_non_exhaustive()
    }
}

/// Whether `|f32(acc) · multiplier| < 2³¹` for every accumulator `acc = bias + Σ x·w` with
/// inputs `x` of magnitude at most 255 and `Σ|w| = abs_w_sum`.
///
/// Then `vcvtps2dq` converts every product without overflow (it returns `i32::MIN` for a
/// float at or above 2³¹), and an epilogue may clamp after converting instead of before:
/// `clamp(round(x), lo, hi)` equals the spec's `round(clamp(x, lo, hi))` because `lo` and
/// `hi` are integers. The bound is checked in f64 against 2³⁰, which leaves far more room
/// than the two f32 roundings (`f32(acc)` and the product, each within 2⁻²⁴ relative) need.
pub(crate) fn products_fit_i32(bias: i32, abs_w_sum: i64, multiplier: f32) -> bool {
    let max_acc = (bias as i64).abs() + 255 * abs_w_sum;
    // Past i32 the depthwise sum would wrap (it is defined modulo 2³²).
    max_acc <= i32::MAX as i64 && (max_acc as f64) * (multiplier as f64) < (1u64 << 30) as f64
}

/// Where a kernel writes a tile.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Out {
    U8 { ptr: *mut u8, ldc: usize },
    I32 { ptr: *mut i32, ldc: usize },
}

impl PackedGemm {
    /// Pack `weights` (N×K row-major, per-output-channel symmetric i8) for `isa`'s kernel.
    ///
    /// * `bias`: `None` or N i32 values (scale `input_scale · weight_scale`).
    /// * `input_zero_point`: the zero point of the u8 activations, in `[0, 255]`.
    /// * `requant`: 1 entry (shared) or N entries (per channel); multipliers finite and > 0,
    ///   zero points and `qmin ≤ qmax` within `[0, 255]`.
    /// * `isa`: the kernel family ([`crate::isa::active`] for the best one); `Err` if this CPU
    ///   cannot run it.
    ///
    /// `Err` when a length does not match, `n` or `k` is 0, or `k` is so large that
    /// `bias + Σ (a - zp)·w` could overflow i32.
    pub fn new(
        weights: &[i8],
        n: usize,
        k: usize,
        bias: Option<&[i32]>,
        input_zero_point: i32,
        requant: &[Requant],
        isa: Isa,
    ) -> Result<Self> {
        check_isa(isa)?;
        if n == 0 || k == 0 {
            return Err(KernelError::Shape(format!(
                "GEMM needs n > 0 and k > 0, got n = {n}, k = {k}"
            )));
        }
        let nk = n
            .checked_mul(k)
            .ok_or_else(|| KernelError::Shape(format!("n·k overflows: n = {n}, k = {k}")))?;
        check_len("GEMM weights (n·k)", nk, weights.len())?;
        if let Some(b) = bias {
            check_len("GEMM bias (n)", n, b.len())?;
        }
        check_zero_point("GEMM input", input_zero_point, 0, 255)?;
        if requant.len() != 1 {
            check_len("GEMM requant (1 or n)", n, requant.len())?;
        }
        for r in requant {
            check_scale("GEMM requant multiplier", r.multiplier)?;
            check_zero_point("GEMM output", r.zero_point, 0, 255)?;
            if !(0..=255).contains(&r.qmin) || !(0..=255).contains(&r.qmax) || r.qmin > r.qmax {
                return Err(KernelError::Param(format!(
                    "GEMM output bounds [{}, {}] must satisfy 0 ≤ qmin ≤ qmax ≤ 255",
                    r.qmin, r.qmax
                )));
            }
        }
        let max_bias = bias.map_or(0, |b| {
            b.iter().map(|&x| (x as i64).abs()).max().unwrap_or(0)
        });
        if (k as i64).saturating_mul(MAX_PRODUCT) + max_bias > i32::MAX as i64 {
            return Err(KernelError::Param(format!(
                "GEMM k = {k} with |bias| ≤ {max_bias} can overflow the i32 accumulator"
            )));
        }

        let desc = kernel::for_isa(isa);
        let weights_packed = pack::pack_weights(desc, weights, n, k);
        let np = n.div_ceil(desc.nr) * desc.nr;
        let col_requant = |j: usize| {
            if requant.len() == 1 {
                requant[0]
            } else {
                requant[j]
            }
        };
        let mut packed_bias = vec![0i32; np];
        let mut requant_cols = Vec::with_capacity(n);
        for (j, pb) in packed_bias.iter_mut().enumerate().take(n) {
            let wsum: i32 = weights[j * k..(j + 1) * k].iter().map(|&w| w as i32).sum();
            let b = bias.map_or(0, |b| b[j]);
            // Activations enter as (a ^ 0x80) = a - 128 on kernels with i8×i8 dot products.
            let zp_eff = if desc.a_xor_128 {
                input_zero_point - 128
            } else {
                input_zero_point
            };
            *pb = b.wrapping_sub(zp_eff.wrapping_mul(wsum));
            requant_cols.push(col_requant(j));
        }
        let pad = |v: Vec<f32>| {
            let mut v = v;
            v.resize(np, 0.0);
            v
        };
        let multiplier = pad(requant_cols.iter().map(|r| r.multiplier).collect());
        let lo = pad(requant_cols
            .iter()
            .map(|r| (r.qmin - r.zero_point) as f32)
            .collect());
        let hi = pad(requant_cols
            .iter()
            .map(|r| (r.qmax - r.zero_point) as f32)
            .collect());
        let mut zero_point: Vec<i32> = requant_cols.iter().map(|r| r.zero_point).collect();
        zero_point.resize(np, 0);
        let fits_i32 = (0..n).all(|j| {
            let w = &weights[j * k..(j + 1) * k];
            let abs_w: i64 = w.iter().map(|&x| (x as i64).abs()).sum();
            products_fit_i32(packed_bias[j], abs_w, requant_cols[j].multiplier)
        });
        let packs_only = kernel::packs_only(&requant_cols);
        Ok(PackedGemm {
            desc,
            n,
            k,
            input_zero_point,
            weights: weights_packed,
            bias: packed_bias,
            multiplier,
            zero_point,
            lo,
            hi,
            requant: requant_cols,
            fits_i32,
            packs_only,
        })
    }

    /// The microkernel that runs this GEMM, e.g. `"avx512vnni_gemm_i32_8x48c4"`.
    pub fn kernel_name(&self) -> &'static str {
        self.desc.name
    }

    /// The ISA the weights were packed for.
    pub fn isa(&self) -> Isa {
        self.desc.isa
    }

    /// Output channels.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Reduction length.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The activations' zero point this packing assumes.
    pub fn input_zero_point(&self) -> i32 {
        self.input_zero_point
    }

    /// `out[i·ldc + j] = requant[j](bias[j] + Σ_k (a[i·lda + k] - zp_a)·w[j][k])` for
    /// `i < m`, `j < n`, on `threads` threads (1 = the calling thread only, no pool).
    ///
    /// `Err` if `lda < k`, `ldc < n`, `threads == 0`, or a buffer is too short.
    pub fn gemm_u8(
        &self,
        a: &[u8],
        m: usize,
        lda: usize,
        out: &mut [u8],
        ldc: usize,
        threads: usize,
    ) -> Result<()> {
        self.check_call(a.len(), m, lda, out.len(), ldc, threads)?;
        if m == 0 {
            return Ok(());
        }
        let out = Out::U8 {
            ptr: out.as_mut_ptr(),
            ldc,
        };
        driver::run(self, a, m, lda, out, threads);
        Ok(())
    }

    /// The i32 accumulators `bias[j] + Σ_k (a[i·lda + k] - zp_a)·w[j][k]`, no requantization.
    /// Same arguments and errors as [`PackedGemm::gemm_u8`].
    pub fn gemm_i32(
        &self,
        a: &[u8],
        m: usize,
        lda: usize,
        out: &mut [i32],
        ldc: usize,
        threads: usize,
    ) -> Result<()> {
        self.check_call(a.len(), m, lda, out.len(), ldc, threads)?;
        if m == 0 {
            return Ok(());
        }
        let out = Out::I32 {
            ptr: out.as_mut_ptr(),
            ldc,
        };
        driver::run(self, a, m, lda, out, threads);
        Ok(())
    }

    fn check_call(
        &self,
        a_len: usize,
        m: usize,
        lda: usize,
        out_len: usize,
        ldc: usize,
        threads: usize,
    ) -> Result<()> {
        if threads == 0 {
            return Err(KernelError::Param("GEMM threads must be ≥ 1".into()));
        }
        if lda < self.k {
            return Err(KernelError::Param(format!(
                "GEMM lda = {lda} < k = {}",
                self.k
            )));
        }
        if ldc < self.n {
            return Err(KernelError::Param(format!(
                "GEMM ldc = {ldc} < n = {}",
                self.n
            )));
        }
        if m == 0 {
            return Ok(());
        }
        let need = |ld: usize, w: usize| (m - 1).checked_mul(ld).and_then(|x| x.checked_add(w));
        let too_big = || KernelError::Shape(format!("GEMM m = {m} overflows the buffer size"));
        let need_a = need(lda, self.k).ok_or_else(too_big)?;
        let need_c = need(ldc, self.n).ok_or_else(too_big)?;
        if a_len < need_a {
            return Err(KernelError::Length {
                what: "GEMM activations (at least (m-1)·lda + k)",
                expected: need_a,
                got: a_len,
            });
        }
        if out_len < need_c {
            return Err(KernelError::Length {
                what: "GEMM output (at least (m-1)·ldc + n)",
                expected: need_c,
                got: out_len,
            });
        }
        Ok(())
    }
}
