//! Depthwise conv2d (`groups == in_channels == out_channels`) as a candle custom op with a fused
//! backward.
//!
//! candle 0.11 runs a grouped conv as one conv per channel plus `cat`, and its backward builds a
//! full-size zero-padded gradient per channel (MEASURED.md: 77 ms forward, 0.5–1.7 s backward for
//! 144 ch @ 56×56 ×8). Here each (image, channel) plane is first copied into `stride²` zero-padded
//! *phase planes* (`P[ry][rx][i][j] = x_padded[s·i + ry][s·j + rx]`), each `Hp × Wp` with
//! `Wp = Wo + max column shift`. In that layout every kernel tap is one contiguous slice of
//! length `L = (Ho − 1)·Wp + Wo`: output `oy·Wp + ox` reads phase-plane element
//! `oy·Wp + ox + (shift_y·Wp + shift_x)`. So the forward sums, per 64-element block of outputs,
//! every tap's shifted slice in registers ([`taps_gather`]); the input gradient is the
//! transposed sum into the phase-plane gradients ([`taps_scatter`]); the weight gradient is one
//! long `dot` per tap — instead of per-row loops of 7–28 elements that LLVM cannot vectorize
//! well. Both gradients come from one pass (one op) that lays the output gradient out once.
//! The `Wp − Wo` extra columns per row compute values that are dropped (forward) or multiply an
//! output gradient laid out with zeros there (backward), so they never leak into results.
//! Every (image, channel) plane is written in place by the task that owns its channel.

use std::marker::PhantomData;

use candle_core::{bail, Result, Shape, Tensor};
use rayon::prelude::*;

use super::bias::bias_add_nchw;
use super::common::{f32_contiguous, madd, simd_dispatch, Pooled, PAR_MIN_ELEMS};
use super::slice_op::{flat, packed_grads, Op2, SliceOp2, SliceOp3};

/// Geometry of one depthwise conv call.
#[derive(Clone, Debug)]
pub(super) struct Geom {
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
    pub(super) fn new(
        x: &[usize],
        w: &[usize],
        stride: usize,
        pad: usize,
        dil: usize,
    ) -> Result<Self> {
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

    /// Output dims `[N, C, Ho, Wo]`.
    pub(super) fn out_dims(&self) -> (usize, usize, usize, usize) {
        (self.n, self.c, self.ho, self.wo)
    }
    pub(super) fn in_len(&self) -> usize {
        self.n * self.c * self.in_plane()
    }
    pub(super) fn out_len(&self) -> usize {
        self.n * self.c * self.out_plane()
    }
    /// Elements of the weight `[C, 1, KH, KW]`.
    pub(super) fn w_len(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// The forward into `out` (`out_len()` elements, fully written).
    pub(super) fn forward_into(&self, x: &[f32], wt: &[f32], out: &mut [f32]) -> Result<()> {
        let g = self;
        let k = g.kh * g.kw;
        if x.len() != g.in_len() || wt.len() != g.c * k || out.len() != g.out_len() {
            bail!("depthwise_conv2d: operand sizes do not match the convolution")
        }
        if g.out_plane() > 0 {
            let elems = out.len();
            let planes = Planes::new(out, g.c, g.out_plane());
            let ahead = [(x, g.in_plane())];
            for_each_channel_group(g, elems, false, &ahead, |grp, scratch, pads| {
                // SAFETY: each channel runs in one task, its groups one after another.
                let mut o = unsafe { planes.channel(grp) };
                let wk = &wt[grp.c * k..(grp.c + 1) * k];
                fwd_group(g, grp, x, scratch, pads, wk, &mut o);
            });
        }
        Ok(())
    }

    /// Both gradients from the output gradient `dy`: writes `dx` (`in_len()`, fully) and adds
    /// into `dw` (`C·KH·KW`, zeroed by the caller).
    pub(super) fn backward_into(
        &self,
        x: &[f32],
        wt: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        dw: &mut [f32],
    ) -> Result<()> {
        let g = self;
        let k = g.kh * g.kw;
        let nx = g.in_len();
        if x.len() != nx
            || wt.len() != g.c * k
            || dy.len() != g.out_len()
            || dx.len() != nx
            || dw.len() != g.c * k
        {
            bail!("depthwise_conv2d_backward: operand sizes do not match the convolution")
        }
        if g.out_plane() == 0 || g.n == 0 {
            dx.fill(0.0);
            return Ok(());
        }
        let planes = Planes::new(dx, g.c, g.in_plane());
        let dw_planes = Planes::new(dw, g.c, k);
        let ahead = [(x, g.in_plane()), (dy, g.out_plane())];
        for_each_channel_group(g, dy.len(), true, &ahead, |grp, scratch, pads| {
            // SAFETY: each channel runs in one task, its groups one after another; `dw`
            // viewed as N = 1 planes of `k` gives channel `c` its own kernel gradient.
            let mut dxs = unsafe { planes.channel(grp) };
            let mut dwc = unsafe {
                dw_planes.channel(Group {
                    c: grp.c,
                    n0: 0,
                    nb: 1,
                })
            };
            backward_group(
                g,
                grp,
                x,
                dy,
                scratch,
                pads,
                &wt[grp.c * k..(grp.c + 1) * k],
                &mut dwc[0][..],
                &mut dxs,
            );
        });
        Ok(())
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

    /// Scratch for a group: the phase buffer (the backward: a second one for the phase-plane
    /// gradients, so the first keeps its zero padding) plus one `span`-long buffer.
    fn scratch_len(&self, backward: bool) -> usize {
        let nb = self.group();
        (1 + backward as usize) * self.phases_len(nb) + self.span(nb)
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
    /// `dst[ph·pstride ..][.. Hp·Wp]`. The padding is written only with `pads` (else it
    /// already holds zeros: the same layout as the last call, and nothing else writes there).
    #[inline(always)]
    fn split_phases(&self, x: &[f32], dst: &mut [f32], pstride: usize, pads: bool) {
        let s = self.stride;
        for ph in 0..s * s {
            let plane = &mut dst[ph * pstride..ph * pstride + self.pp()];
            let (ry, rx) = (ph / s, ph % s);
            let (j0, j1, ix0) = self.col_range(rx);
            for (i, row) in plane.chunks_exact_mut(self.wp).enumerate() {
                let Some(iy) = self.src_row(i, ry) else {
                    if pads {
                        row.fill(0.0);
                    }
                    continue;
                };
                let xrow = &x[iy * self.w + ix0..(iy + 1) * self.w];
                if pads {
                    row[..j0].fill(0.0);
                }
                if s == 1 {
                    copy_row(&mut row[j0..j1], &xrow[..j1 - j0]);
                } else {
                    for (v, &xv) in row[j0..j1].iter_mut().zip(xrow.iter().step_by(s)) {
                        *v = xv;
                    }
                }
                if pads {
                    row[j1..].fill(0.0);
                }
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
                    copy_row(&mut dxrow[..j1 - j0], &row[j0..j1]);
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
    /// stack) with row stride `Wp`, zeros in the extra columns and the extra rows (written only
    /// with `pads`, as in [`Geom::split_phases`]).
    #[inline(always)]
    fn spread_rows(&self, dy: &[f32], dst: &mut [f32], k: usize, pads: bool) {
        let base = k * self.pp();
        for (oy, row) in dy.chunks_exact(self.wo).enumerate() {
            let start = base + oy * self.wp;
            copy_row(&mut dst[start..start + self.wo], row);
            if pads {
                let end = (start + self.wp).min(dst.len());
                dst[start + self.wo..end].fill(0.0);
            }
        }
        if pads {
            let gap = (base + self.ho * self.wp).min(dst.len());
            let end = (base + self.pp()).min(dst.len());
            dst[gap..end].fill(0.0);
        }
    }
}

/// `dst.copy_from_slice(src)`, inlined as a few vector moves for rows of up to 32 floats (the
/// row copies between planes and phase planes run once per row; as `memcpy` calls of 7–28
/// floats they cost more in call overhead than in moves).
#[inline(always)]
fn copy_row(dst: &mut [f32], src: &[f32]) {
    macro_rules! fixed {
        ($($n:literal)*) => {
            match (dst.len(), src.len()) {
                $(($n, $n) => {
                    let d: &mut [f32; $n] = dst.try_into().expect("length matched");
                    *d = src.try_into().expect("length matched");
                })*
                _ => dst.copy_from_slice(src),
            }
        };
    }
    fixed!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32)
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

/// Elements per block of the two tap loops: 4 AVX-512 registers (8 AVX2) of accumulators.
const TAP_BLOCK: usize = 64;

/// `acc[j] = Σₜ wk[t] · src[starts[t] + j]` for every `j` (taps summed in order from 0).
///
/// All taps of a block of outputs are summed in registers and stored once, instead of one
/// load-add-store pass over `acc` per tap.
#[inline(always)]
fn taps_gather<const FMA: bool>(acc: &mut [f32], src: &[f32], starts: &[usize], wk: &[f32]) {
    for (jb, out) in acc.chunks_mut(TAP_BLOCK).enumerate() {
        let j = jb * TAP_BLOCK;
        let mut a = [0f32; TAP_BLOCK];
        if let Ok(out) = <&mut [f32; TAP_BLOCK]>::try_from(&mut *out) {
            for (&s, &w) in starts.iter().zip(wk) {
                let x: &[f32; TAP_BLOCK] = src[s + j..s + j + TAP_BLOCK]
                    .try_into()
                    .expect("a full block");
                for i in 0..TAP_BLOCK {
                    a[i] = madd::<FMA>(w, x[i], a[i]);
                }
            }
            *out = a;
        } else {
            let b = out.len();
            for (&s, &w) in starts.iter().zip(wk) {
                for (ai, &xv) in a[..b].iter_mut().zip(&src[s + j..s + j + b]) {
                    *ai = madd::<FMA>(w, xv, *ai);
                }
            }
            out.copy_from_slice(&a[..b]);
        }
    }
}

/// The transpose of [`taps_gather`]: `dst[p] = Σₜ wk[t] · src[p − starts[t]]` over the taps
/// with `0 ≤ p − starts[t] < src.len()` (taps summed in order from 0); `dst` is fully written.
#[inline(always)]
fn taps_scatter<const FMA: bool>(dst: &mut [f32], src: &[f32], starts: &[usize], wk: &[f32]) {
    let span = src.len();
    let (Some(&min_s), Some(&max_s)) = (starts.iter().min(), starts.iter().max()) else {
        dst.fill(0.0);
        return;
    };
    for (jb, out) in dst.chunks_mut(TAP_BLOCK).enumerate() {
        let j = jb * TAP_BLOCK;
        let b = out.len();
        let mut a = [0f32; TAP_BLOCK];
        if b == TAP_BLOCK && j >= max_s && j + TAP_BLOCK <= min_s + span {
            // Inside every tap's range (most blocks): accumulators stay in registers.
            for (&s, &w) in starts.iter().zip(wk) {
                let x: &[f32; TAP_BLOCK] = src[j - s..j - s + TAP_BLOCK]
                    .try_into()
                    .expect("a full block");
                for i in 0..TAP_BLOCK {
                    a[i] = madd::<FMA>(w, x[i], a[i]);
                }
            }
            out.copy_from_slice(&a);
            continue;
        }
        for (&s, &w) in starts.iter().zip(wk) {
            // Block positions p = j + i this tap reaches: s ≤ p < s + span.
            let lo = s.max(j);
            let hi = (s + span).min(j + b);
            if lo >= hi {
                continue;
            }
            if lo == j && hi == j + TAP_BLOCK {
                let x: &[f32; TAP_BLOCK] = src[j - s..j - s + TAP_BLOCK]
                    .try_into()
                    .expect("a full block");
                for i in 0..TAP_BLOCK {
                    a[i] = madd::<FMA>(w, x[i], a[i]);
                }
            } else {
                for (ai, &xv) in a[lo - j..hi - j].iter_mut().zip(&src[lo - s..hi - s]) {
                    *ai = madd::<FMA>(w, xv, *ai);
                }
            }
        }
        out.copy_from_slice(&a[..b]);
    }
}

/// `dw[t] += dot(a, b[starts[t]..][..a.len()])` for every tap `t`, each dot exactly as
/// [`dot`](super::common::dot) computes it (the same 16 lanes in the same order, tail, final sum), but up to 9
/// taps per pass over `a`: one dot is a single chain of dependent FMAs (latency-bound, and two
/// loads per FMA); interleaving the taps' chains fills the FMA pipe and loads each chunk of `a`
/// once for all of them.
#[inline(always)]
fn tap_dots<const FMA: bool>(a: &[f32], b: &[f32], starts: &[usize], dw: &mut [f32]) {
    let (mut starts, mut dw) = (starts, dw);
    while !starts.is_empty() {
        let t = match starts.len() {
            9.. => dots_n::<FMA, 9>(a, b, starts, dw),
            4.. => dots_n::<FMA, 4>(a, b, starts, dw),
            _ => dots_n::<FMA, 1>(a, b, starts, dw),
        };
        (starts, dw) = (&starts[t..], &mut dw[t..]);
    }
}

/// [`tap_dots`] for the first `T` taps; returns `T`.
#[inline(always)]
fn dots_n<const FMA: bool, const T: usize>(
    a: &[f32],
    b: &[f32],
    starts: &[usize],
    dw: &mut [f32],
) -> usize {
    let n = a.len();
    let bs: [&[f32]; T] = std::array::from_fn(|t| &b[starts[t]..starts[t] + n]);
    let mut acc = [[0f32; 16]; T];
    let full = n - n % 16;
    for j in (0..full).step_by(16) {
        let x: &[f32; 16] = a[j..j + 16].try_into().expect("a full chunk");
        for t in 0..T {
            let y: &[f32; 16] = bs[t][j..j + 16].try_into().expect("a full chunk");
            for i in 0..16 {
                acc[t][i] = madd::<FMA>(x[i], y[i], acc[t][i]);
            }
        }
    }
    for t in 0..T {
        let mut tail = 0f32;
        for (&x, &y) in a[full..].iter().zip(&bs[t][full..]) {
            tail = madd::<FMA>(x, y, tail);
        }
        dw[t] += acc[t].iter().sum::<f32>() + tail;
    }
    T
}

/// Forward of a group: writes its `nb` output planes (`out[k]` for image `n0 + k`).
#[inline(always)]
fn fwd_group_generic<const FMA: bool>(
    g: &Geom,
    grp: Group,
    x: &[f32],
    scratch: &mut [f32],
    pads: bool,
    wk: &[f32],
    out: &mut [&mut [f32]],
) {
    let nb = grp.nb;
    let (phases, rest) = scratch.split_at_mut(g.phases_len(nb));
    let acc = &mut rest[..g.span(nb)];
    for k in 0..nb {
        g.split_phases(
            grp.plane(g, x, k, g.in_plane()),
            &mut phases[k * g.pp()..],
            nb * g.pp(),
            pads,
        );
    }
    let starts: Vec<usize> = g.tap_starts(nb).collect();
    taps_gather::<FMA>(acc, phases, &starts, wk);
    for (k, oplane) in out.iter_mut().enumerate() {
        for (oy, orow) in oplane.chunks_exact_mut(g.wo).enumerate() {
            let at = (k * g.hp + oy) * g.wp;
            copy_row(orow, &acc[at..at + g.wo]);
        }
    }
}

simd_dispatch!(fn fwd_group = fwd_group_generic(g: &Geom, grp: Group, x: &[f32], scratch: &mut [f32], pads: bool, wk: &[f32], out: &mut [&mut [f32]]));

/// Both gradients of a group: adds its contribution to the channel's kernel gradient `dw`
/// (`kh * kw`) and writes its `nb` input-gradient planes (`dx[k]` for image `n0 + k`). The
/// output gradient is laid out once for both; the phase-plane gradients go to a second phase
/// buffer, so the input's keeps its zero padding for the next group.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_group_generic<const FMA: bool>(
    g: &Geom,
    grp: Group,
    x: &[f32],
    dy: &[f32],
    scratch: &mut [f32],
    pads: bool,
    wk: &[f32],
    dw: &mut [f32],
    dx: &mut [&mut [f32]],
) {
    let nb = grp.nb;
    let (phases, rest) = scratch.split_at_mut(g.phases_len(nb));
    let (grads, rest) = rest.split_at_mut(g.phases_len(nb));
    let dyw = &mut rest[..g.span(nb)];
    for k in 0..nb {
        g.split_phases(
            grp.plane(g, x, k, g.in_plane()),
            &mut phases[k * g.pp()..],
            nb * g.pp(),
            pads,
        );
        g.spread_rows(grp.plane(g, dy, k, g.out_plane()), dyw, k, pads);
    }
    let starts: Vec<usize> = g.tap_starts(nb).collect();
    tap_dots::<FMA>(dyw, phases, &starts, dw);
    taps_scatter::<FMA>(grads, dyw, &starts, wk);
    for (k, dplane) in dx.iter_mut().enumerate() {
        g.gather_phases(&grads[k * g.pp()..], nb * g.pp(), dplane);
    }
}

simd_dispatch!(#[allow(clippy::too_many_arguments)] fn backward_group = backward_group_generic(g: &Geom, grp: Group, x: &[f32], dy: &[f32], scratch: &mut [f32], pads: bool, wk: &[f32], dw: &mut [f32], dx: &mut [&mut [f32]]));

/// Whether to split channels over rayon's pool.
fn parallel(elems: usize) -> bool {
    elems >= PAR_MIN_ELEMS && rayon::current_num_threads() > 1
}

/// An NCHW buffer handed out a channel at a time: every (image, channel) plane is written in
/// place by the task that owns its channel, so no per-channel staging buffer is copied back.
struct Planes<'a> {
    ptr: *mut f32,
    len: usize,
    c: usize,
    plane: usize,
    _buf: PhantomData<&'a mut [f32]>,
}

// SAFETY: `Planes` only hands out planes through `channel`, whose contract keeps concurrent
// tasks on distinct channels, i.e. on disjoint memory.
unsafe impl Send for Planes<'_> {}
// SAFETY: as above.
unsafe impl Sync for Planes<'_> {}

impl<'a> Planes<'a> {
    fn new(buf: &'a mut [f32], c: usize, plane: usize) -> Self {
        Planes {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            c,
            plane,
            _buf: PhantomData,
        }
    }

    /// The planes of channel `c` for images `grp.n0 .. grp.n0 + grp.nb`.
    ///
    /// # Safety
    /// No other live slice may cover the same (image, channel) planes: callers give each
    /// channel to one task and each image range of it to one call at a time.
    // Handing out `&mut` from `&self` is the point: tasks share `Planes` and each takes its
    // own channel, which the safety contract (not the borrow checker) keeps disjoint.
    #[allow(clippy::mut_from_ref)]
    unsafe fn channel(&self, grp: Group) -> Vec<&mut [f32]> {
        (grp.n0..grp.n0 + grp.nb)
            .map(|n| {
                let start = (n * self.c + grp.c) * self.plane;
                assert!(
                    grp.c < self.c && start + self.plane <= self.len,
                    "plane inside the buffer"
                );
                // SAFETY: in bounds (asserted above); exclusive by the caller's contract.
                unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), self.plane) }
            })
            .collect()
    }
}

/// A task's scratch buffer (pooled: every element a group reads it first writes, padding
/// included, so stale contents never matter), and the group size whose layout's zero padding
/// it holds.
struct Scratch {
    buf: Pooled,
    padded_for: Option<usize>,
}

/// Asks for channel `c`'s planes of each NCHW tensor `(data, plane length)` in `ts` to be
/// brought into the cache. A channel's planes lie one image apart (`C·plane` floats): small
/// planes (7×7, 4×4: one to four cache lines each) are scattered reads the hardware prefetcher
/// does not follow, so the next channel's are requested while this one computes.
#[inline(always)]
fn prefetch_channel(g: &Geom, c: usize, ts: &[(&[f32], usize)]) {
    #[cfg(target_arch = "x86_64")]
    for &(t, plane) in ts {
        for n in 0..g.n {
            let start = (n * g.c + c) * plane;
            let Some(p) = t.get(start..start + plane) else {
                return;
            };
            for line in p.chunks(16) {
                // SAFETY: a prefetch is only a hint and never faults; the address is that of an
                // element of `t` anyway.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                        line.as_ptr().cast(),
                    )
                };
            }
        }
    }
}

/// Runs `f(group, scratch, pads)` for every channel and its image groups, over rayon's pool
/// when the tensor of `elems` elements is large enough (scratch sized for the `backward` or the
/// forward). `pads` says whether the group must write its buffers' zero padding: only when the
/// task's last group had another size (the padding sits where the layout of `nb` images puts
/// it, and the kernels never write there otherwise). `f` may write the group's planes of
/// channel `c` (and only those) through a [`Planes`].
fn for_each_channel_group(
    g: &Geom,
    elems: usize,
    backward: bool,
    ahead: &[(&[f32], usize)],
    f: impl Fn(Group, &mut [f32], bool) + Sync,
) {
    let gsz = g.group();
    let channel = |c: usize, s: &mut Scratch| {
        if c + 1 < g.c {
            prefetch_channel(g, c + 1, ahead);
        }
        for n0 in (0..g.n).step_by(gsz) {
            let nb = gsz.min(g.n - n0);
            f(Group { c, n0, nb }, &mut s.buf.0, s.padded_for != Some(nb));
            s.padded_for = Some(nb);
        }
    };
    let fresh = || Scratch {
        buf: Pooled::new(g.scratch_len(backward)),
        padded_for: None,
    };
    if parallel(elems) {
        (0..g.c)
            .into_par_iter()
            .for_each_init(fresh, |s, c| channel(c, s));
    } else {
        let mut scratch = fresh();
        for c in 0..g.c {
            channel(c, &mut scratch);
        }
    }
}

/// Forward: `(x [N,C,H,W], w [C,1,KH,KW]) -> y [N,C,Ho,Wo]`.
struct DwForward(Geom);

impl SliceOp2 for DwForward {
    const NAME: &'static str = "depthwise_conv2d";
    const OPERANDS: [&'static str; 2] = ["input", "weight"];

    fn run(&self, x: &[f32], wt: &[f32], _: (&Shape, &Shape)) -> Result<(Vec<f32>, Shape)> {
        let g = &self.0;
        let mut out = vec![0f32; g.out_len()];
        g.forward_into(x, wt, &mut out)?;
        Ok((out, Shape::from((g.n, g.c, g.ho, g.wo))))
    }

    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 2]> {
        let g = &self.0;
        let shapes = [(g.n, g.c, g.h, g.w).into(), (g.c, 1, g.kh, g.kw).into()];
        let [dx, dw] = packed_grads((x, w, grad), DwBackward(g.clone()), shapes)?;
        Ok([Some(dx), Some(dw)])
    }
}

/// Both gradients in one pass: `(x [N,C,H,W], w [C,1,KH,KW], dy [N,C,Ho,Wo])` → the flat
/// concatenation of `dx [N,C,H,W]` and `dw [C,1,KH,KW]` (split by views in `bwd`).
struct DwBackward(Geom);

impl SliceOp3 for DwBackward {
    const NAME: &'static str = "depthwise_conv2d_backward";
    const OPERANDS: [&'static str; 3] = ["input", "weight", "output gradient"];

    fn run(&self, x: &[f32], wt: &[f32], dy: &[f32], _: &Shape) -> Result<(Vec<f32>, Shape)> {
        let g = &self.0;
        let (nx, nw) = (g.in_len(), g.c * g.kh * g.kw);
        let mut out = vec![0f32; nx + nw];
        let (dx, dw) = out.split_at_mut(nx);
        g.backward_into(x, wt, dy, dx, dw)?;
        Ok(flat(out))
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
    let y = x.apply_op2(&w, Op2(DwForward(g)))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::common::dot;

    simd_dispatch!(fn tap_dots_dispatched = tap_dots(a: &[f32], b: &[f32], starts: &[usize], dw: &mut [f32]));
    simd_dispatch!(fn dot_dispatched = dot_into(a: &[f32], b: &[f32], out: &mut f32));

    #[inline(always)]
    fn dot_into<const FMA: bool>(a: &[f32], b: &[f32], out: &mut f32) {
        *out += dot::<FMA>(a, b);
    }

    /// The interleaved weight-gradient dots equal one `dot` per tap bit for bit (the trained
    /// models' rounding depends on it), for every tap count and ragged lengths.
    #[test]
    fn tap_dots_equal_one_dot_per_tap_bit_for_bit() {
        let b: Vec<f32> = (0..700u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) >> 8) as f32 / 16_777_216.0 - 0.5) * 3.0)
            .collect();
        for taps in 1..=13 {
            for len in [1, 15, 16, 17, 47, 64, 100, 513] {
                let a = &b[3..3 + len];
                let starts: Vec<usize> = (0..taps).map(|t| (t * 13) % 150).collect();
                let init: Vec<f32> = (0..taps).map(|t| t as f32 * 0.25 - 1.0).collect();
                let mut got = init.clone();
                tap_dots_dispatched(a, &b, &starts, &mut got);
                for (t, &s) in starts.iter().enumerate() {
                    let mut want = init[t];
                    dot_dispatched(a, &b[s..s + len], &mut want);
                    assert_eq!(
                        got[t].to_bits(),
                        want.to_bits(),
                        "taps {taps} len {len} tap {t}"
                    );
                }
            }
        }
    }
}
