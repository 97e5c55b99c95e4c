//! Slice kernels behind the fused CPU ops, compiled once per ISA and picked at run time.
//!
//! Every kernel is one plain Rust loop over the scalar formula (`x * inv_scale`, round half
//! to even, `+ zero_point`, clamp, `- zero_point`, `* scale`). The loop body is
//! `#[inline(always)]` into `#[target_feature]` wrappers so LLVM vectorizes it with the ISA's
//! rounding instruction (`vroundps` / `vrndscaleps`): on baseline x86-64 (no SSE4.1)
//! `f32::round_ties_even` is a libm call per element. Rust never contracts `a * b + c` into
//! an FMA, so every variant computes bit-identical results to the portable one (and to
//! `qat_core::fake_quantize_with_inv`); the tests check that on every ISA the host has.

use std::mem::MaybeUninit;

/// The instruction sets the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust, the baseline target (on aarch64 `round_ties_even` is already one `frintn`).
    Portable,
    /// x86-64 with AVX2.
    Avx2,
    /// x86-64 with AVX-512F.
    Avx512,
}

impl Isa {
    /// The widest ISA this CPU runs.
    pub fn detect() -> Isa {
        if Isa::Avx512.is_supported() {
            Isa::Avx512
        } else if Isa::Avx2.is_supported() {
            Isa::Avx2
        } else {
            Isa::Portable
        }
    }

    /// Whether this CPU can run the ISA's kernels (std caches the CPUID probe).
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every ISA this CPU runs (for tests comparing them).
    pub fn all_supported() -> Vec<Isa> {
        [Isa::Portable, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| i.is_supported())
            .collect()
    }
}

/// One channel's constants, as the hot loop reads them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine {
    pub scale: f32,
    /// `1.0 / scale` in f32, PyTorch's reciprocal.
    pub inv: f32,
    /// The zero point as f32 (exact: zero points are small integers).
    pub zp: f32,
}

impl Affine {
    pub fn new(scale: f32, zero_point: f32) -> Self {
        Affine {
            scale,
            inv: qat_core::inv_scale(scale),
            zp: zero_point,
        }
    }
}

/// `(clamp(zp + round_half_even(x * inv)) - zp) * scale`; NaN maps to `lo` (`f32::max`).
#[inline(always)]
fn fq(x: f32, a: Affine, lo: f32, hi: f32) -> f32 {
    let qf = a.zp + (x * a.inv).round_ties_even();
    (qf.max(lo).min(hi) - a.zp) * a.scale
}

/// 1.0 where the unclamped quantized value lies in `[lo, hi]`, else 0.0 (NaN: 0.0).
#[inline(always)]
fn pass(x: f32, a: Affine, lo: f32, hi: f32) -> f32 {
    let qf = a.zp + (x * a.inv).round_ties_even();
    ((lo <= qf) & (qf <= hi)) as u8 as f32
}

/// One element fake-quantized, for kernels in other crates that fuse fake quantization into
/// their own loops (`#[inline(always)]`: it vectorizes there with the caller's ISA). The same
/// bits as every kernel here and [`qat_core::fake_quantize_with_inv`].
#[inline(always)]
pub fn fake_quantize_one(x: f32, a: Affine, lo: f32, hi: f32) -> f32 {
    fq(x, a, lo, hi)
}

/// The straight-through mask of one element (1.0 inside the range, 0.0 outside or NaN), for
/// kernels in other crates that fold the fake-quant gradient into their own backward.
#[inline(always)]
pub fn ste_mask_one(x: f32, a: Affine, lo: f32, hi: f32) -> f32 {
    pass(x, a, lo, hi)
}

/// Expands each kernel body into a portable copy and `#[target_feature]` copies, and a
/// dispatcher taking the [`Isa`] first. The ISA is re-checked (a cached load) before an
/// unsafe call, so a caller passing an ISA the CPU lacks gets the portable code.
macro_rules! multiversion {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        pub fn $name(isa: Isa, $($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }
                if isa == Isa::Avx512 && Isa::Avx512.is_supported() {
                    // SAFETY: the CPU supports AVX-512F (checked just above); the body is
                    // safe Rust, the attribute only changes code generation.
                    return unsafe { avx512($($arg),*) };
                }
                if isa != Isa::Portable && Isa::Avx2.is_supported() {
                    // SAFETY: the CPU supports AVX2 (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            let _ = isa;
            imp($($arg),*)
        }
    };
}

multiversion! {
    /// Fake-quantize `x` into `y`, channel `b % params.len()` for the `b`-th block of `inner`
    /// elements (per-tensor: one channel, one block).
    fn fwd_blocks(
        x: &[f32],
        y: &mut [MaybeUninit<f32>],
        params: &[Affine],
        inner: usize,
        lo: f32,
        hi: f32,
    ) {
        let c = params.len();
        for (b, (xb, yb)) in x.chunks_exact(inner).zip(y.chunks_exact_mut(inner)).enumerate() {
            let a = params[b % c];
            for (xi, yi) in xb.iter().zip(yb.iter_mut()) {
                yi.write(fq(*xi, a, lo, hi));
            }
        }
    }
}

multiversion! {
    /// Fake-quantize `y` in place with one channel's constants (an output that its producer
    /// wrote and observed, fake-quantized without a second buffer).
    fn fwd_in_place(y: &mut [f32], a: Affine, lo: f32, hi: f32) {
        for v in y.iter_mut() {
            *v = fq(*v, a, lo, hi);
        }
    }
}

multiversion! {
    /// Fake-quantize rows of `row.scale.len()` elements whose constants change per element
    /// (per-channel with a short inner extent: the constants are expanded along the row).
    fn fwd_rows(x: &[f32], y: &mut [MaybeUninit<f32>], row: RowParams<'_>, lo: f32, hi: f32) {
        let n = row.scale.len();
        for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
            let it = xr.iter().zip(yr.iter_mut()).zip(row.scale).zip(row.inv).zip(row.zp);
            for ((((xi, yi), &scale), &inv), &zp) in it {
                yi.write(fq(*xi, Affine { scale, inv, zp }, lo, hi));
            }
        }
    }
}

multiversion! {
    /// `grad_x = grad_y * mask(x)`, block layout as [`fwd_blocks`]. A product (not a select)
    /// so masked-out elements carry `grad_y`'s sign and NaN, as PyTorch's `dY * mask`.
    fn bwd_blocks(
        x: &[f32],
        g: &[f32],
        dx: &mut [MaybeUninit<f32>],
        params: &[Affine],
        inner: usize,
        lo: f32,
        hi: f32,
    ) {
        let c = params.len();
        let blocks = x.chunks_exact(inner).zip(g.chunks_exact(inner)).zip(dx.chunks_exact_mut(inner));
        for (b, ((xb, gb), db)) in blocks.enumerate() {
            let a = params[b % c];
            for ((xi, gi), di) in xb.iter().zip(gb).zip(db.iter_mut()) {
                di.write(*gi * pass(*xi, a, lo, hi));
            }
        }
    }
}

multiversion! {
    /// `grad_x = grad_y * mask(x)`, row layout as [`fwd_rows`].
    fn bwd_rows(
        x: &[f32],
        g: &[f32],
        dx: &mut [MaybeUninit<f32>],
        row: RowParams<'_>,
        lo: f32,
        hi: f32,
    ) {
        let n = row.scale.len();
        for ((xr, gr), dr) in x.chunks_exact(n).zip(g.chunks_exact(n)).zip(dx.chunks_exact_mut(n)) {
            let it = xr.iter().zip(gr).zip(dr.iter_mut()).zip(row.scale).zip(row.inv).zip(row.zp);
            for (((((xi, gi), di), &scale), &inv), &zp) in it {
                di.write(*gi * pass(*xi, Affine { scale, inv, zp }, lo, hi));
            }
        }
    }
}

/// Per-element constants of one row (struct of arrays, so the loop vectorizes).
#[derive(Debug, Clone, Copy)]
pub struct RowParams<'a> {
    pub scale: &'a [f32],
    pub inv: &'a [f32],
    pub zp: &'a [f32],
}

/// Owned storage behind [`RowParams`].
#[derive(Debug, Clone, Default)]
pub struct RowBuf {
    scale: Vec<f32>,
    inv: Vec<f32>,
    zp: Vec<f32>,
}

impl RowBuf {
    /// Each channel's constants repeated `inner` times: one row of `params.len() * inner`.
    pub fn expand(params: &[Affine], inner: usize) -> Self {
        let mut r = RowBuf::default();
        for a in params {
            for _ in 0..inner {
                r.scale.push(a.scale);
                r.inv.push(a.inv);
                r.zp.push(a.zp);
            }
        }
        r
    }

    pub fn view(&self) -> RowParams<'_> {
        RowParams {
            scale: &self.scale,
            inv: &self.inv,
            zp: &self.zp,
        }
    }
}

/// PyTorch's learnable fake-quant gradients for one element (`fake_quantize_learnable_*
/// _grad_kernel_cpu`): `(grad_x, grad_scale, grad_zero_point)` contributions.
///
/// Note the backward's own rounding: the zero point is added *before* rounding
/// (`nearbyint(zp + x * inv)`), unlike the forward. A NaN input counts as below the range,
/// as PyTorch's float → int64 conversion makes it on x86.
#[inline(always)]
fn learn(x: f32, dy: f32, a: Affine, lo: f32, hi: f32, gf: f32) -> (f32, f32, f32) {
    let xq = (a.zp + x * a.inv).round_ties_even();
    let inside = (lo <= xq) & (xq <= hi);
    let dx = dy * (inside as u8 as f32);
    if inside {
        let xfq = (xq - a.zp) * a.scale;
        (dx, dy * (xfq - x) * a.inv * gf, 0.0)
    } else {
        let edge = if xq > hi { hi - a.zp } else { lo - a.zp };
        (dx, dy * edge * gf, -dy * a.scale * gf)
    }
}

multiversion! {
    /// Learnable backward over blocks (layout as [`fwd_blocks`]): writes `grad_x`, adds each
    /// block's scale / zero-point gradient sums (in f64) into `dscale[c]` / `dzp[c]`.
    fn learn_bwd_blocks(
        x: &[f32],
        g: &[f32],
        dx: &mut [MaybeUninit<f32>],
        params: &[Affine],
        inner: usize,
        lo: f32,
        hi: f32,
        gf: f32,
        dscale: &mut [f64],
        dzp: &mut [f64],
    ) {
        let c = params.len();
        let blocks = x.chunks_exact(inner).zip(g.chunks_exact(inner)).zip(dx.chunks_exact_mut(inner));
        for (b, ((xb, gb), db)) in blocks.enumerate() {
            let a = params[b % c];
            let (mut ds, mut dz) = (0f64, 0f64);
            for ((xi, gi), di) in xb.iter().zip(gb).zip(db.iter_mut()) {
                let (d, s, z) = learn(*xi, *gi, a, lo, hi, gf);
                di.write(d);
                ds += s as f64;
                dz += z as f64;
            }
            dscale[b % c] += ds;
            dzp[b % c] += dz;
        }
    }
}

multiversion! {
    /// Folds each block's minimum / maximum (NaN ignored) into `min[b % c]` / `max[b % c]`
    /// (`c = min.len()`, block layout as [`fwd_blocks`]); returns how many values are NaN or
    /// infinite. Sixteen independent lanes per block, so the loop vectorizes.
    fn min_max_blocks(x: &[f32], inner: usize, min: &mut [f32], max: &mut [f32]) -> usize {
        const L: usize = 16;
        let c = min.len();
        let mut non_finite = 0usize;
        for (b, xb) in x.chunks_exact(inner).enumerate() {
            let (mut lo, mut hi, mut bad) = ([f32::INFINITY; L], [f32::NEG_INFINITY; L], [0u64; L]);
            let mut it = xb.chunks_exact(L);
            for ch in &mut it {
                for i in 0..L {
                    lo[i] = lo[i].min(ch[i]);
                    hi[i] = hi[i].max(ch[i]);
                    bad[i] += (!ch[i].is_finite()) as u64;
                }
            }
            for &v in it.remainder() {
                lo[0] = lo[0].min(v);
                hi[0] = hi[0].max(v);
                bad[0] += (!v.is_finite()) as u64;
            }
            let ch = b % c;
            min[ch] = lo.iter().fold(min[ch], |a, &v| a.min(v));
            max[ch] = hi.iter().fold(max[ch], |a, &v| a.max(v));
            non_finite += bad.iter().sum::<u64>() as usize;
        }
        non_finite
    }
}

/// A vector of `n` f32 filled by `f` through its spare capacity (no zeroing pass).
pub fn fill_vec(n: usize, f: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(n);
    f(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: every kernel writes each of the `n` slots it is given (they iterate over
    // exact chunks covering the whole slice; callers pass `n` as a multiple of the chunk).
    unsafe { v.set_len(n) };
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Vec<f32> {
        let mut v = vec![
            0.0,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e30,
            -1e30,
            f32::MIN_POSITIVE,
        ];
        let mut s = 0x1234_5678u32;
        for i in 0..4000 {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let u = (s >> 8) as f32 / (1u32 << 24) as f32;
            // Half of them exact ties k + 0.5 at scale 0.1 (as x * inv rounds them).
            v.push(if i % 2 == 0 {
                (u - 0.5) * 40.0
            } else {
                ((s % 400) as f32 - 200.0 + 0.5) * 0.1
            });
        }
        v
    }

    #[test]
    fn every_isa_matches_qat_core() {
        let x = inputs();
        let g: Vec<f32> = x.iter().map(|v| v.sin() - 0.3).collect();
        let a = Affine::new(0.1, 3.0);
        for isa in Isa::all_supported() {
            let y = fill_vec(x.len(), |y| {
                fwd_blocks(isa, &x, y, &[a], x.len(), -128.0, 127.0)
            });
            let dx = fill_vec(x.len(), |d| {
                bwd_blocks(isa, &x, &g, d, &[a], x.len(), -128.0, 127.0)
            });
            for i in 0..x.len() {
                let (r, m) = qat_core::fake_quantize_with_inv(x[i], 0.1, a.inv, 3, -128, 127);
                assert_eq!(y[i].to_bits(), r.to_bits(), "{isa:?} x={}", x[i]);
                let want = g[i] * m as u8 as f32;
                assert_eq!(dx[i].to_bits(), want.to_bits(), "{isa:?} x={}", x[i]);
            }
        }
    }

    #[test]
    fn in_place_and_one_element_equal_the_kernels() {
        let x = inputs();
        let a = Affine::new(0.1, 3.0);
        for isa in Isa::all_supported() {
            let want = fill_vec(x.len(), |y| {
                fwd_blocks(isa, &x, y, &[a], x.len(), 0.0, 255.0)
            });
            let mut got = x.clone();
            fwd_in_place(isa, &mut got, a, 0.0, 255.0);
            for i in 0..x.len() {
                assert_eq!(got[i].to_bits(), want[i].to_bits(), "{isa:?} x={}", x[i]);
                let one = fake_quantize_one(x[i], a, 0.0, 255.0);
                assert_eq!(one.to_bits(), want[i].to_bits(), "x={}", x[i]);
                let (_, m) = qat_core::fake_quantize_with_inv(x[i], 0.1, a.inv, 3, 0, 255);
                assert_eq!(
                    ste_mask_one(x[i], a, 0.0, 255.0),
                    m as u8 as f32,
                    "x={}",
                    x[i]
                );
            }
        }
    }

    #[test]
    fn rows_equal_blocks() {
        let x = inputs();
        let params: Vec<Affine> = (0..5)
            .map(|c| Affine::new(0.05 + 0.01 * c as f32, c as f32 - 2.0))
            .collect();
        let inner = 4;
        let n = x.len() / (5 * inner) * (5 * inner);
        let x = &x[..n];
        let g: Vec<f32> = x.iter().map(|v| v.cos()).collect();
        let row = RowBuf::expand(&params, inner);
        for isa in Isa::all_supported() {
            let yb = fill_vec(n, |y| fwd_blocks(isa, x, y, &params, inner, 0.0, 255.0));
            let yr = fill_vec(n, |y| fwd_rows(isa, x, y, row.view(), 0.0, 255.0));
            let db = fill_vec(n, |d| bwd_blocks(isa, x, &g, d, &params, inner, 0.0, 255.0));
            let dr = fill_vec(n, |d| bwd_rows(isa, x, &g, d, row.view(), 0.0, 255.0));
            for i in 0..n {
                assert_eq!(yb[i].to_bits(), yr[i].to_bits());
                assert_eq!(db[i].to_bits(), dr[i].to_bits());
            }
        }
    }

    #[test]
    fn learnable_isas_agree() {
        let x = inputs();
        let g: Vec<f32> = x.iter().map(|v| 0.5 - v.sin()).collect();
        let a = Affine::new(0.07, -2.0);
        let mut want = None;
        for isa in Isa::all_supported() {
            let (mut ds, mut dz) = ([0f64], [0f64]);
            let dx = fill_vec(x.len(), |d| {
                learn_bwd_blocks(
                    isa,
                    &x,
                    &g,
                    d,
                    &[a],
                    x.len(),
                    -8.0,
                    7.0,
                    0.5,
                    &mut ds,
                    &mut dz,
                )
            });
            let bits: Vec<u32> = dx.iter().map(|v| v.to_bits()).collect();
            let got = (bits, ds[0].to_bits(), dz[0].to_bits());
            match &want {
                None => want = Some(got),
                Some(w) => assert_eq!(w, &got, "{isa:?}"),
            }
        }
    }
}
