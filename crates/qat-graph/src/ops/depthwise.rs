//! Depthwise conv2d (`groups == in_channels == out_channels`) as a candle custom op with a fused
//! backward.
//!
//! candle 0.11 runs a grouped conv as one conv per channel plus `cat`, and its backward builds a
//! full-size zero-padded gradient per channel (MEASURED.md: 77 ms forward, 0.5–1.7 s backward for
//! 144 ch @ 56×56 ×8). Here every (image, channel) plane is a direct loop whose innermost loop runs
//! over contiguous output columns, so LLVM vectorizes it. Strided convs first split each input row
//! into its `stride` phases (`x[j*s + r]` → phase `r`), which turns every tap into a contiguous
//! slice again; the input gradient is accumulated in the same phase layout and interleaved back.

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::bias::bias_add_nchw;
use super::common::{axpy, dot, f32_contiguous, simd_dispatch, slice_f32, PAR_MIN_ELEMS};

/// Geometry of one depthwise conv call.
#[derive(Clone, Debug)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    dil: usize,
    ho: usize,
    wo: usize,
    /// Per kernel column: where tap `kx` reads in a phase-split input row.
    taps: Vec<Tap>,
    /// Start of each stride phase inside a phase-split row.
    phase_off: Vec<usize>,
}

/// For kernel column `kx`, output columns `lo..hi` read phase-split row index `ox + base`.
#[derive(Clone, Copy, Debug)]
struct Tap {
    base: isize,
    lo: usize,
    hi: usize,
}

impl Geom {
    fn new(x: &[usize], w: &[usize], stride: usize, pad: usize, dil: usize) -> Result<Self> {
        const OP: &str = "depthwise_conv2d";
        let (n, c, h, wd) = match *x {
            [a, b, c, d] => (a, b, c, d),
            _ => bail!("{OP}: input must have rank 4 (NCHW), got shape {x:?}"),
        };
        let (kh, kw) = match *w {
            [o, 1, kh, kw] if o == c => (kh, kw),
            [o, i, _, _] => bail!(
                "{OP}: weight must be [C, 1, KH, KW] with C = {c} input channels, got [{o}, {i}, ..]"
            ),
            _ => bail!("{OP}: weight must have rank 4 ([C, 1, KH, KW]), got shape {w:?}"),
        };
        if kh == 0 || kw == 0 || c == 0 {
            bail!("{OP}: empty kernel or channel dimension (weight {w:?})")
        }
        if stride == 0 || dil == 0 {
            bail!("{OP}: stride ({stride}) and dilation ({dil}) must be at least 1")
        }
        let (eh, ew) = (dil * (kh - 1) + 1, dil * (kw - 1) + 1);
        if h + 2 * pad < eh || wd + 2 * pad < ew {
            bail!(
                "{OP}: kernel {kh}x{kw} (dilation {dil}, extent {eh}x{ew}) is larger than the \
                 padded input {}x{}",
                h + 2 * pad,
                wd + 2 * pad
            )
        }
        let ho = (h + 2 * pad - eh) / stride + 1;
        let wo = (wd + 2 * pad - ew) / stride + 1;
        let phase_len = |r: usize| if wd > r { (wd - r).div_ceil(stride) } else { 0 };
        let mut phase_off = Vec::with_capacity(stride);
        let mut off = 0;
        for r in 0..stride {
            phase_off.push(off);
            off += phase_len(r);
        }
        let taps = (0..kw)
            .map(|kx| {
                let t = (kx * dil) as isize - pad as isize;
                let s = stride as isize;
                let (r, q) = (t.rem_euclid(s), t.div_euclid(s));
                let len = phase_len(r as usize) as isize;
                let lo = (-q).max(0).min(wo as isize);
                let hi = (len - q).min(wo as isize).max(lo);
                Tap {
                    base: phase_off[r as usize] as isize + q,
                    lo: lo as usize,
                    hi: hi as usize,
                }
            })
            .collect();
        Ok(Self {
            n,
            c,
            h,
            w: wd,
            kh,
            kw,
            stride,
            pad,
            dil,
            ho,
            wo,
            taps,
            phase_off,
        })
    }

    /// Input row read by output row `oy` through kernel row `ky`, if inside the image.
    #[inline(always)]
    fn in_row(&self, oy: usize, ky: usize) -> Option<usize> {
        let iy = (oy * self.stride + ky * self.dil).checked_sub(self.pad)?;
        (iy < self.h).then_some(iy)
    }

    fn in_plane(&self) -> usize {
        self.h * self.w
    }

    fn out_plane(&self) -> usize {
        self.ho * self.wo
    }

    /// Splits each row of `x` into its stride phases (`dst` is `h * w`).
    #[inline(always)]
    fn split_phases(&self, x: &[f32], dst: &mut [f32]) {
        let (w, s) = (self.w, self.stride);
        for (src, dst) in x.chunks_exact(w).zip(dst.chunks_exact_mut(w)) {
            for (r, &off) in self.phase_off.iter().enumerate() {
                for (d, &v) in dst[off..].iter_mut().zip(src.iter().skip(r).step_by(s)) {
                    *d = v;
                }
            }
        }
    }

    /// Inverse of [`Geom::split_phases`].
    #[inline(always)]
    fn merge_phases(&self, src: &[f32], x: &mut [f32]) {
        let (w, s) = (self.w, self.stride);
        for (src, dst) in src.chunks_exact(w).zip(x.chunks_exact_mut(w)) {
            for (r, &off) in self.phase_off.iter().enumerate() {
                for (d, &v) in dst.iter_mut().skip(r).step_by(s).zip(&src[off..]) {
                    *d = v;
                }
            }
        }
    }

    /// The slice of a phase-split row `row` that tap `t` reads for its output columns.
    #[inline(always)]
    fn tap_slice<'a>(&self, row: &'a [f32], t: &Tap) -> &'a [f32] {
        let start = (t.lo as isize + t.base) as usize;
        &row[start..start + (t.hi - t.lo)]
    }
}

#[inline(always)]
fn fwd_plane_generic<const FMA: bool>(
    g: &Geom,
    x: &[f32],
    scratch: &mut [f32],
    wk: &[f32],
    out: &mut [f32],
) {
    let src: &[f32] = if g.stride == 1 {
        x
    } else {
        g.split_phases(x, scratch);
        scratch
    };
    out.fill(0.0);
    for (oy, orow) in out.chunks_exact_mut(g.wo).enumerate() {
        for ky in 0..g.kh {
            let Some(iy) = g.in_row(oy, ky) else { continue };
            let xrow = &src[iy * g.w..(iy + 1) * g.w];
            for (tap, &wv) in g.taps.iter().zip(&wk[ky * g.kw..(ky + 1) * g.kw]) {
                axpy::<FMA>(&mut orow[tap.lo..tap.hi], wv, g.tap_slice(xrow, tap));
            }
        }
    }
}

simd_dispatch!(fn fwd_plane = fwd_plane_generic(g: &Geom, x: &[f32], scratch: &mut [f32], wk: &[f32], out: &mut [f32]));

#[inline(always)]
fn input_grad_plane_generic<const FMA: bool>(
    g: &Geom,
    dy: &[f32],
    scratch: &mut [f32],
    wk: &[f32],
    dx: &mut [f32],
) {
    let w = g.w;
    let acc: &mut [f32] = if g.stride == 1 {
        &mut *dx
    } else {
        &mut *scratch
    };
    acc.fill(0.0);
    for (oy, dyrow) in dy.chunks_exact(g.wo).enumerate() {
        for ky in 0..g.kh {
            let Some(iy) = g.in_row(oy, ky) else { continue };
            let arow = &mut acc[iy * w..(iy + 1) * w];
            for (tap, &wv) in g.taps.iter().zip(&wk[ky * g.kw..(ky + 1) * g.kw]) {
                let start = (tap.lo as isize + tap.base) as usize;
                let len = tap.hi - tap.lo;
                axpy::<FMA>(&mut arow[start..start + len], wv, &dyrow[tap.lo..tap.hi]);
            }
        }
    }
    if g.stride != 1 {
        g.merge_phases(scratch, dx);
    }
}

simd_dispatch!(fn input_grad_plane = input_grad_plane_generic(g: &Geom, dy: &[f32], scratch: &mut [f32], wk: &[f32], dx: &mut [f32]));

/// Adds this plane's contribution to the channel's kernel gradient `dw` (`kh * kw`).
#[inline(always)]
fn weight_grad_plane_generic<const FMA: bool>(
    g: &Geom,
    x: &[f32],
    scratch: &mut [f32],
    dy: &[f32],
    dw: &mut [f32],
) {
    let src: &[f32] = if g.stride == 1 {
        x
    } else {
        g.split_phases(x, scratch);
        scratch
    };
    for (oy, dyrow) in dy.chunks_exact(g.wo).enumerate() {
        for ky in 0..g.kh {
            let Some(iy) = g.in_row(oy, ky) else { continue };
            let xrow = &src[iy * g.w..(iy + 1) * g.w];
            for (tap, d) in g.taps.iter().zip(&mut dw[ky * g.kw..(ky + 1) * g.kw]) {
                *d += dot::<FMA>(&dyrow[tap.lo..tap.hi], g.tap_slice(xrow, tap));
            }
        }
    }
}

simd_dispatch!(fn weight_grad_plane = weight_grad_plane_generic(g: &Geom, x: &[f32], scratch: &mut [f32], dy: &[f32], dw: &mut [f32]));

/// Runs `f(plane_index, out_plane, scratch)` over all output planes, in parallel when big.
fn for_planes(
    out: &mut [f32],
    plane: usize,
    scratch_len: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync,
) {
    if plane == 0 {
        return;
    }
    if out.len() < PAR_MIN_ELEMS {
        let mut scratch = vec![0f32; scratch_len];
        for (i, o) in out.chunks_exact_mut(plane).enumerate() {
            f(i, o, &mut scratch);
        }
    } else {
        out.par_chunks_exact_mut(plane)
            .enumerate()
            .with_min_len((PAR_MIN_ELEMS / plane).max(1))
            .for_each_init(
                || vec![0f32; scratch_len],
                |scratch, (i, o)| f(i, o, scratch),
            );
    }
}

/// Forward: `(x [N,C,H,W], w [C,1,KH,KW]) -> y [N,C,Ho,Wo]`.
struct DwForward(Geom);

impl CustomOp2 for DwForward {
    fn name(&self) -> &'static str {
        "depthwise_conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let x = slice_f32(s1, l1, self.name(), "input")?;
        let wt = slice_f32(s2, l2, self.name(), "weight")?;
        let mut out = vec![0f32; g.n * g.c * g.out_plane()];
        let scratch = if g.stride == 1 { 0 } else { g.in_plane() };
        for_planes(&mut out, g.out_plane(), scratch, |i, o, s| {
            let c = i % g.c;
            let xp = &x[i * g.in_plane()..(i + 1) * g.in_plane()];
            fwd_plane(g, xp, s, &wt[c * g.kh * g.kw..(c + 1) * g.kh * g.kw], o);
        });
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.c, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = grad.apply_op2_no_bwd(w, &DwInputGrad(self.0.clone()))?;
        let dw = x.apply_op2_no_bwd(&grad, &DwWeightGrad(self.0.clone()))?;
        Ok((Some(dx), Some(dw)))
    }
}

/// Input gradient: `(dy [N,C,Ho,Wo], w [C,1,KH,KW]) -> dx [N,C,H,W]`.
struct DwInputGrad(Geom);

impl CustomOp2 for DwInputGrad {
    fn name(&self) -> &'static str {
        "depthwise_conv2d_input_grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let dy = slice_f32(s1, l1, self.name(), "output gradient")?;
        let wt = slice_f32(s2, l2, self.name(), "weight")?;
        let mut dx = vec![0f32; g.n * g.c * g.in_plane()];
        let scratch = if g.stride == 1 { 0 } else { g.in_plane() };
        for_planes(&mut dx, g.in_plane(), scratch, |i, o, s| {
            let c = i % g.c;
            let dyp = &dy[i * g.out_plane()..(i + 1) * g.out_plane()];
            input_grad_plane(g, dyp, s, &wt[c * g.kh * g.kw..(c + 1) * g.kh * g.kw], o);
        });
        Ok((CpuStorage::F32(dx), Shape::from((g.n, g.c, g.h, g.w))))
    }
}

/// Weight gradient: `(x [N,C,H,W], dy [N,C,Ho,Wo]) -> dw [C,1,KH,KW]`, one task per channel.
struct DwWeightGrad(Geom);

impl CustomOp2 for DwWeightGrad {
    fn name(&self) -> &'static str {
        "depthwise_conv2d_weight_grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        let x = slice_f32(s1, l1, self.name(), "input")?;
        let dy = slice_f32(s2, l2, self.name(), "output gradient")?;
        let k = g.kh * g.kw;
        let mut dw = vec![0f32; g.c * k];
        let scratch_len = if g.stride == 1 { 0 } else { g.in_plane() };
        let channel = |c: usize, dwc: &mut [f32], scratch: &mut Vec<f32>| {
            for n in 0..g.n {
                let i = n * g.c + c;
                let xp = &x[i * g.in_plane()..(i + 1) * g.in_plane()];
                let dyp = &dy[i * g.out_plane()..(i + 1) * g.out_plane()];
                weight_grad_plane(g, xp, scratch, dyp, dwc);
            }
        };
        if g.n * g.c * g.out_plane() < PAR_MIN_ELEMS {
            let mut scratch = vec![0f32; scratch_len];
            for (c, dwc) in dw.chunks_exact_mut(k).enumerate() {
                channel(c, dwc, &mut scratch);
            }
        } else {
            dw.par_chunks_exact_mut(k).enumerate().for_each_init(
                || vec![0f32; scratch_len],
                |scratch, (c, dwc)| channel(c, dwc, scratch),
            );
        }
        Ok((CpuStorage::F32(dw), Shape::from((g.c, 1, g.kh, g.kw))))
    }
}

/// Depthwise 2-D convolution (`groups == C`), dilation 1. See [`depthwise_conv2d_dilated`].
pub fn depthwise_conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    depthwise_conv2d_dilated(x, w, bias, stride, padding, 1)
}

/// Depthwise 2-D convolution with autograd: `x` is NCHW `[N, C, H, W]` f32, `w` is
/// `[C, 1, KH, KW]` (PyTorch's layout for `groups = C`), `bias` is `[C]`. The same `stride`,
/// `padding` (zeros) and `dilation` apply to both spatial dims. Returns `[N, C, Ho, Wo]` with
/// `Ho = (H + 2·padding − dilation·(KH − 1) − 1) / stride + 1`.
///
/// Gradients for `x`, `w` and `bias` come from fused CPU kernels. Non-contiguous inputs are
/// made contiguous first. Errors (never panics) on wrong ranks, a channel mismatch, a kernel
/// larger than the padded input, a zero stride / dilation, a non-f32 dtype or a non-CPU device.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::ones((1, 2, 5, 5), candle_core::DType::F32, &Device::Cpu)?;
/// let w = Tensor::ones((2, 1, 3, 3), candle_core::DType::F32, &Device::Cpu)?;
/// let y = qat_graph::ops::depthwise_conv2d(&x, &w, None, 2, 1)?;
/// assert_eq!(y.dims(), &[1, 2, 3, 3]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn depthwise_conv2d_dilated(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    dilation: usize,
) -> Result<Tensor> {
    const OP: &str = "depthwise_conv2d";
    let g = Geom::new(x.dims(), w.dims(), stride, padding, dilation)?;
    let x = f32_contiguous(x, OP, "input")?;
    let w = f32_contiguous(w, OP, "weight")?;
    let y = x.apply_op2(&w, DwForward(g))?;
    match bias {
        Some(b) => bias_add_nchw(&y, b),
        None => Ok(y),
    }
}

/// The same convolution through candle's own `conv2d` with `groups = C` (the reference the tests
/// and benches compare against; slow, see the module docs).
///
/// The input is zero-padded and cropped to exactly the rows / columns the kernel reaches before
/// calling `conv2d` with padding 0: candle 0.11's conv2d backward returns a wrongly sized input
/// gradient when `(H + 2·padding − extent)` is not a multiple of the stride.
pub fn depthwise_conv2d_slow(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    dilation: usize,
) -> Result<Tensor> {
    let g = Geom::new(x.dims(), w.dims(), stride, padding, dilation)?;
    let x = crop_to_used(x, &g)?;
    let y = x.conv2d(w, 0, stride, dilation, g.c)?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, g.c, 1, 1))?),
        None => Ok(y),
    }
}

/// Zero-pads `x` by `padding` and keeps the `(Ho − 1)·stride + extent` leading rows / columns.
fn crop_to_used(x: &Tensor, g: &Geom) -> Result<Tensor> {
    let x = x
        .pad_with_zeros(2, g.pad, g.pad)?
        .pad_with_zeros(3, g.pad, g.pad)?;
    let used_h = (g.ho - 1) * g.stride + g.dil * (g.kh - 1) + 1;
    let used_w = (g.wo - 1) * g.stride + g.dil * (g.kw - 1) + 1;
    x.narrow(2, 0, used_h)?.narrow(3, 0, used_w)
}
