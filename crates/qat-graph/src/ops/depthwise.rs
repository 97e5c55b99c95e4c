//! Depthwise conv2d (`groups == in_channels == out_channels`) as a candle custom op with a fused
//! backward.
//!
//! candle 0.11 runs a grouped conv as one conv per channel plus `cat`, and its backward builds a
//! full-size zero-padded gradient per channel (MEASURED.md: 77 ms forward, 0.5–1.7 s backward for
//! 144 ch @ 56×56 ×8). Here each (image, channel) plane is first copied into `stride²` zero-padded
//! *phase planes* (`P[ry][rx][i][j] = x_padded[s·i + ry][s·j + rx]`), each `Hp × Wp` with
//! `Wp = Wo + max column shift`. In that layout every kernel tap is one contiguous slice of
//! length `L = (Ho − 1)·Wp + Wo`: output `oy·Wp + ox` reads phase-plane element
//! `oy·Wp + ox + (shift_y·Wp + shift_x)`. So the forward is one long `axpy` per tap, the input
//! gradient one long `axpy` per tap into phase-plane gradients, and the weight gradient one long
//! `dot` per tap — instead of per-row loops of 7–28 elements that LLVM cannot vectorize well.
//! The `Wp − Wo` extra columns per row compute values that are dropped (forward) or multiply an
//! output gradient laid out with zeros there (backward), so they never leak into results.

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
    /// Rows and columns of one phase plane.
    hp: usize,
    wp: usize,
    /// Per tap `ky·KW + kx`: its phase (`ry·stride + rx`) and its shift inside a phase plane.
    tap_phase: Vec<usize>,
    tap_shift: Vec<usize>,
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
        let hp = ho + (eh - 1) / stride;
        let wp = wo + (ew - 1) / stride;
        let (mut tap_phase, mut tap_shift) = (Vec::new(), Vec::new());
        for ky in 0..kh {
            for kx in 0..kw {
                let (ty, tx) = (ky * dil, kx * dil);
                tap_phase.push((ty % stride) * stride + tx % stride);
                tap_shift.push((ty / stride) * wp + tx / stride);
            }
        }
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
            hp,
            wp,
            tap_phase,
            tap_shift,
        })
    }

    fn in_plane(&self) -> usize {
        self.h * self.w
    }

    fn out_plane(&self) -> usize {
        self.ho * self.wo
    }

    /// One phase plane.
    fn pp(&self) -> usize {
        self.hp * self.wp
    }

    /// Images per group: a channel's images are processed together, their phase planes
    /// stacked, as long as the stack stays cache-sized.
    fn group(&self) -> usize {
        const BUDGET: usize = 1 << 16;
        (BUDGET / (self.stride * self.stride * self.pp()).max(1)).clamp(1, self.n.max(1))
    }

    /// Length of the phase buffer of `nb` stacked images (`stride²` phases of `nb·Hp` rows).
    fn phases_len(&self, nb: usize) -> usize {
        self.stride * self.stride * nb * self.pp()
    }

    /// Length of the flat output range every tap covers for `nb` stacked images.
    fn span(&self, nb: usize) -> usize {
        ((nb - 1) * self.hp + self.ho - 1) * self.wp + self.wo
    }

    /// Scratch for a group: the phase buffer plus one `span`-long buffer.
    fn scratch_len(&self) -> usize {
        let nb = self.group();
        self.phases_len(nb) + self.span(nb)
    }

    /// Start of each tap's slice in the phase buffer of `nb` stacked images.
    #[inline(always)]
    fn tap_starts(&self, nb: usize) -> impl Iterator<Item = usize> + '_ {
        let block = nb * self.pp();
        self.tap_phase
            .iter()
            .zip(&self.tap_shift)
            .map(move |(&p, &sh)| p * block + sh)
    }

    /// The input row of padded phase row `i` of row phase `r`, if inside the image.
    #[inline(always)]
    fn src_row(&self, i: usize, r: usize) -> Option<usize> {
        (i * self.stride + r)
            .checked_sub(self.pad)
            .filter(|&v| v < self.h)
    }

    /// For column phase `rx`: the phase columns `j0..j1` that fall inside the image, and the
    /// input column of `j0` (later ones follow every `stride` columns).
    #[inline(always)]
    fn col_range(&self, rx: usize) -> (usize, usize, usize) {
        let s = self.stride;
        // First j with s·j + rx >= pad, and first j with s·j + rx >= pad + w.
        let first = |bound: usize| {
            if bound > rx {
                (bound - rx).div_ceil(s)
            } else {
                0
            }
        };
        let j0 = first(self.pad).min(self.wp);
        let j1 = first(self.pad + self.w).clamp(j0, self.wp);
        (j0, j1, (j0 * s + rx).saturating_sub(self.pad))
    }

    /// Copies one input plane into its zero-padded phase planes: phase `ph` goes to
    /// `dst[ph·pstride ..][.. Hp·Wp]`.
    #[inline(always)]
    fn split_phases(&self, x: &[f32], dst: &mut [f32], pstride: usize) {
        let s = self.stride;
        for ph in 0..s * s {
            let plane = &mut dst[ph * pstride..ph * pstride + self.pp()];
            let (ry, rx) = (ph / s, ph % s);
            let (j0, j1, ix0) = self.col_range(rx);
            for (i, row) in plane.chunks_exact_mut(self.wp).enumerate() {
                let Some(iy) = self.src_row(i, ry) else {
                    row.fill(0.0);
                    continue;
                };
                let xrow = &x[iy * self.w + ix0..(iy + 1) * self.w];
                row[..j0].fill(0.0);
                if s == 1 {
                    row[j0..j1].copy_from_slice(&xrow[..j1 - j0]);
                } else {
                    for (v, &xv) in row[j0..j1].iter_mut().zip(xrow.iter().step_by(s)) {
                        *v = xv;
                    }
                }
                row[j1..].fill(0.0);
            }
        }
    }

    /// Gathers one image's phase-plane gradients (phase `ph` at `src[ph·pstride ..]`) back
    /// into its input-plane gradient (`dx` fully written).
    #[inline(always)]
    fn gather_phases(&self, src: &[f32], pstride: usize, dx: &mut [f32]) {
        let s = self.stride;
        if s > 1 {
            // Phases interleave: some input positions may be covered by no phase row.
            dx.fill(0.0);
        }
        for ph in 0..s * s {
            let plane = &src[ph * pstride..ph * pstride + self.pp()];
            let (ry, rx) = (ph / s, ph % s);
            let (j0, j1, ix0) = self.col_range(rx);
            for (i, row) in plane.chunks_exact(self.wp).enumerate() {
                let Some(iy) = self.src_row(i, ry) else {
                    continue;
                };
                let dxrow = &mut dx[iy * self.w + ix0..(iy + 1) * self.w];
                if s == 1 {
                    dxrow[..j1 - j0].copy_from_slice(&row[j0..j1]);
                } else {
                    for (d, &v) in dxrow.iter_mut().step_by(s).zip(&row[j0..j1]) {
                        *d = v;
                    }
                }
            }
        }
        if s == 1 {
            // Rows / columns no phase element maps to (beyond Hp or Wp) got no gradient.
            let rows = self.hp.saturating_sub(self.pad).min(self.h);
            let (j0, j1, ix0) = self.col_range(0);
            for (iy, row) in dx.chunks_exact_mut(self.w).enumerate() {
                if iy >= rows {
                    row.fill(0.0);
                } else {
                    row[..ix0].fill(0.0);
                    row[ix0 + (j1 - j0)..].fill(0.0);
                }
            }
        }
    }

    /// Lays one image's output-gradient plane out at `dst[Hp·Wp·k ..]` (its slot `k` in a
    /// stack) with row stride `Wp`, zeros in the extra columns and the extra rows.
    #[inline(always)]
    fn spread_rows(&self, dy: &[f32], dst: &mut [f32], k: usize) {
        let base = k * self.pp();
        for (oy, row) in dy.chunks_exact(self.wo).enumerate() {
            let start = base + oy * self.wp;
            dst[start..start + self.wo].copy_from_slice(row);
            let end = (start + self.wp).min(dst.len());
            dst[start + self.wo..end].fill(0.0);
        }
        let gap = (base + self.ho * self.wp).min(dst.len());
        let end = (base + self.pp()).min(dst.len());
        dst[gap..end].fill(0.0);
    }
}

/// The planes of one channel for images `n0..n0 + nb` (plane `n·C + c` of an NCHW buffer).
#[derive(Clone, Copy)]
struct Group {
    c: usize,
    n0: usize,
    nb: usize,
}

impl Group {
    fn plane<'a>(&self, g: &Geom, v: &'a [f32], k: usize, len: usize) -> &'a [f32] {
        let i = (self.n0 + k) * g.c + self.c;
        &v[i * len..(i + 1) * len]
    }
}

/// Forward of a group: writes its `nb` output planes, image-major, into `out`.
#[inline(always)]
fn fwd_group_generic<const FMA: bool>(
    g: &Geom,
    grp: Group,
    x: &[f32],
    scratch: &mut [f32],
    wk: &[f32],
    out: &mut [f32],
) {
    let nb = grp.nb;
    let (phases, rest) = scratch.split_at_mut(g.phases_len(nb));
    let acc = &mut rest[..g.span(nb)];
    for k in 0..nb {
        g.split_phases(
            grp.plane(g, x, k, g.in_plane()),
            &mut phases[k * g.pp()..],
            nb * g.pp(),
        );
    }
    acc.fill(0.0);
    for (start, &wv) in g.tap_starts(nb).zip(wk) {
        axpy::<FMA>(acc, wv, &phases[start..start + acc.len()]);
    }
    for (k, oplane) in out.chunks_exact_mut(g.out_plane()).enumerate() {
        for (oy, orow) in oplane.chunks_exact_mut(g.wo).enumerate() {
            let at = (k * g.hp + oy) * g.wp;
            orow.copy_from_slice(&acc[at..at + g.wo]);
        }
    }
}

simd_dispatch!(fn fwd_group = fwd_group_generic(g: &Geom, grp: Group, x: &[f32], scratch: &mut [f32], wk: &[f32], out: &mut [f32]));

/// Input gradient of a group: writes its `nb` input-gradient planes, image-major, into `dx`.
#[inline(always)]
fn input_grad_group_generic<const FMA: bool>(
    g: &Geom,
    grp: Group,
    dy: &[f32],
    scratch: &mut [f32],
    wk: &[f32],
    dx: &mut [f32],
) {
    let nb = grp.nb;
    let (dphases, rest) = scratch.split_at_mut(g.phases_len(nb));
    let dyw = &mut rest[..g.span(nb)];
    for k in 0..nb {
        g.spread_rows(grp.plane(g, dy, k, g.out_plane()), dyw, k);
    }
    dphases.fill(0.0);
    for (start, &wv) in g.tap_starts(nb).zip(wk) {
        axpy::<FMA>(&mut dphases[start..start + dyw.len()], wv, dyw);
    }
    for (k, dplane) in dx.chunks_exact_mut(g.in_plane()).enumerate() {
        g.gather_phases(&dphases[k * g.pp()..], nb * g.pp(), dplane);
    }
}

simd_dispatch!(fn input_grad_group = input_grad_group_generic(g: &Geom, grp: Group, dy: &[f32], scratch: &mut [f32], wk: &[f32], dx: &mut [f32]));

/// Adds a group's contribution to its channel's kernel gradient `dw` (`kh * kw`).
#[inline(always)]
fn weight_grad_group_generic<const FMA: bool>(
    g: &Geom,
    grp: Group,
    x: &[f32],
    dy: &[f32],
    scratch: &mut [f32],
    dw: &mut [f32],
) {
    let nb = grp.nb;
    let (phases, rest) = scratch.split_at_mut(g.phases_len(nb));
    let dyw = &mut rest[..g.span(nb)];
    for k in 0..nb {
        g.split_phases(
            grp.plane(g, x, k, g.in_plane()),
            &mut phases[k * g.pp()..],
            nb * g.pp(),
        );
        g.spread_rows(grp.plane(g, dy, k, g.out_plane()), dyw, k);
    }
    for (start, d) in g.tap_starts(nb).zip(dw.iter_mut()) {
        *d += dot::<FMA>(dyw, &phases[start..start + dyw.len()]);
    }
}

simd_dispatch!(fn weight_grad_group = weight_grad_group_generic(g: &Geom, grp: Group, x: &[f32], dy: &[f32], scratch: &mut [f32], dw: &mut [f32]));

/// Whether to split channels over rayon's pool.
fn parallel(elems: usize) -> bool {
    elems >= PAR_MIN_ELEMS && rayon::current_num_threads() > 1
}

/// Runs `f(group, scratch, chan_out)` over every channel's image groups, where `chan_out`
/// holds the channel's `N` planes of `plane` elements image-major, then scatters them into
/// the NCHW buffer `out`.
fn per_channel_planes(
    g: &Geom,
    out: &mut [f32],
    plane: usize,
    f: impl Fn(Group, &mut [f32], &mut [f32]) + Sync,
) {
    let gsz = g.group();
    let channel = |c: usize, scratch: &mut [f32], chan: &mut [f32]| {
        for n0 in (0..g.n).step_by(gsz) {
            let nb = gsz.min(g.n - n0);
            f(
                Group { c, n0, nb },
                scratch,
                &mut chan[n0 * plane..(n0 + nb) * plane],
            );
        }
    };
    let scatter = |c: usize, chan: &[f32], out: &mut [f32]| {
        for (n, p) in chan.chunks_exact(plane).enumerate() {
            let i = n * g.c + c;
            out[i * plane..(i + 1) * plane].copy_from_slice(p);
        }
    };
    if plane == 0 || g.n == 0 {
        return;
    }
    if parallel(out.len()) {
        let chans: Vec<Vec<f32>> = (0..g.c)
            .into_par_iter()
            .map_init(
                || vec![0f32; g.scratch_len()],
                |scratch, c| {
                    let mut chan = vec![0f32; g.n * plane];
                    channel(c, scratch, &mut chan);
                    chan
                },
            )
            .collect();
        for (c, chan) in chans.iter().enumerate() {
            scatter(c, chan, out);
        }
    } else {
        let mut scratch = vec![0f32; g.scratch_len()];
        let mut chan = vec![0f32; g.n * plane];
        for c in 0..g.c {
            channel(c, &mut scratch, &mut chan);
            scatter(c, &chan, out);
        }
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
        let k = g.kh * g.kw;
        let mut out = vec![0f32; g.n * g.c * g.out_plane()];
        per_channel_planes(g, &mut out, g.out_plane(), |grp, scratch, o| {
            fwd_group(g, grp, x, scratch, &wt[grp.c * k..(grp.c + 1) * k], o);
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
        let k = g.kh * g.kw;
        let mut dx = vec![0f32; g.n * g.c * g.in_plane()];
        per_channel_planes(g, &mut dx, g.in_plane(), |grp, scratch, o| {
            input_grad_group(g, grp, dy, scratch, &wt[grp.c * k..(grp.c + 1) * k], o);
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
        let gsz = g.group();
        let channel = |c: usize, dwc: &mut [f32], scratch: &mut Vec<f32>| {
            for n0 in (0..g.n).step_by(gsz) {
                let grp = Group {
                    c,
                    n0,
                    nb: gsz.min(g.n - n0),
                };
                weight_grad_group(g, grp, x, dy, scratch, dwc);
            }
        };
        if !parallel(g.n * g.c * g.out_plane()) {
            let mut scratch = vec![0f32; g.scratch_len()];
            for (c, dwc) in dw.chunks_exact_mut(k).enumerate() {
                channel(c, dwc, &mut scratch);
            }
        } else {
            dw.par_chunks_exact_mut(k).enumerate().for_each_init(
                || vec![0f32; g.scratch_len()],
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
