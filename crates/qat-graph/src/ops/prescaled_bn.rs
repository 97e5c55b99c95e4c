//! Train-mode BatchNorm2d of a per-channel divided and shifted input, `BN(x / s[c] + b[c])`, as
//! one op: the QAT Conv+BN un-scaling (`conv / scale_factor (+ bias)`) followed by the real
//! BatchNorm with batch statistics (PyTorch's `_forward_approximate`).
//!
//! The divided tensor `z` is never a tensor: forward and backward each compute one channel's
//! `z` (all images, `N·H·W` floats, cache-resident; the same rounding as
//! [`super::channel_div_nchw`]) and run every pass of that channel on it, so the pair costs one
//! output tensor and one autograd node instead of two of each. The backward chains the
//! BatchNorm gradient `dz` into `dx = dz / s`, `ds = −Σ dz·x / s²`, `db = Σ dz`.

use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use candle_core::{bail, Result, Shape, Tensor};
use qat_fakequant::{FusedMovingAvgObsFakeQuantize, RangeFeed};
use rayon::prelude::*;

use super::batch_norm::{
    affine, affine_clamp, check, grad_sums, sq_dev, Act, BatchNormTrainOutput, Dims,
};
use super::channel::fwd_plane;
use super::common::{
    f32_contiguous, lock_state, madd, output, simd_dispatch, sum, Pooled, PAR_MIN_ELEMS,
};
use super::out_fq::{affine_range, observe_and_apply, FqGate, Range};
use super::slice_op::{flat, packed_grads, Op3, SliceOp3};

/// Per-channel statistics of `z`, saved by the forward for the backward.
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) mean: Vec<f32>,
    invstd: Vec<f32>,
    pub(super) var: Vec<f32>,
    /// The output fake-quant the forward applied (its gradient mask joins the activation's).
    pub(super) fq: Option<FqGate>,
}

/// `z = x / s + b` for plane `i` of `x` into `z`.
fn z_plane(z: &mut [f32], x: &[f32], d: Dims, i: usize, s: &[f32], b: &[f32]) {
    let c = i % d.c;
    fwd_plane(z, &x[i * d.plane..(i + 1) * d.plane], s[c], b[c], true);
}

/// Runs `f(c, planes, work) -> T` for every channel, where `planes` are the channel's `N`
/// planes of the NCHW buffer `out` (image order, written in place: no channel buffer copied
/// back), and returns the results in channel order. `work` is `N·H·W` floats of
/// unspecified contents, one pooled buffer per task reused channel after channel (a fresh
/// zeroed channel-sized buffer per channel cost an allocation and a memset of the whole
/// tensor per pass). Channels run on rayon's pool when big and more than one thread is there.
fn per_channel_out<T: Send, E: Send>(
    d: Dims,
    out: &mut [E],
    f: impl Fn(usize, &mut [&mut [E]], &mut [f32]) -> T + Sync,
) -> Vec<T> {
    let parallel = out.len() >= PAR_MIN_ELEMS && rayon::current_num_threads() > 1;
    let mut chans: Vec<Vec<&mut [E]>> = (0..d.c).map(|_| Vec::with_capacity(d.n)).collect();
    if d.plane > 0 {
        for (i, p) in out.chunks_exact_mut(d.plane).enumerate() {
            chans[i % d.c].push(p);
        }
    }
    let work_len = d.n * d.plane;
    let run =
        |work: &mut Pooled, (c, mut planes): (usize, Vec<&mut [E]>)| f(c, &mut planes, &mut work.0);
    if parallel {
        chans
            .into_par_iter()
            .enumerate()
            .map_init(|| Pooled::new(work_len), run)
            .collect()
    } else {
        let mut work = Pooled::new(work_len);
        chans
            .into_iter()
            .enumerate()
            .map(|ch| run(&mut work, ch))
            .collect()
    }
}

/// What the backward passes `dy` through before the BatchNorm's gradient: the activation's
/// gradient mask and the output fake-quant's straight-through mask, each at the value the
/// forward computed (the pre-activation `a·z + b` recomputed with its rounding).
#[derive(Clone, Copy, Debug)]
pub(super) struct Gate {
    pub(super) act: Option<Act>,
    pub(super) fq: Option<FqGate>,
}

impl Gate {
    /// Whether `dy` reaches the BatchNorm unchanged.
    fn is_open(&self) -> bool {
        self.act.is_none() && self.fq.is_none()
    }
}

/// Evaluates `$body` with `$f` bound to the gate `(dy, z) -> dy'` of `$gate` (`$ab` the
/// forward's affine), one closure per case so each loop inlines only what it applies: the
/// activation passes `dy` where the pre-activation is inside its bounds (the output fake-quant
/// then sees that same value, which the clamp left alone), else 0.
macro_rules! with_gate {
    ($gate:expr, $ab:expr, $fma:ident, |$f:ident| $body:expr) => {{
        let (a, b): (f32, f32) = $ab;
        let pre = move |v: f32| madd::<$fma>(a, v, b);
        let gate: Gate = $gate;
        match (gate.act, gate.fq) {
            (None, None) => {
                let $f = |g: f32, _: f32| g;
                $body
            }
            (Some(act), None) => {
                let $f = move |g: f32, v: f32| if act.passes(pre(v)) { g } else { 0.0 };
                $body
            }
            (None, Some(fq)) => {
                let $f = move |g: f32, v: f32| fq.grad(g, pre(v));
                $body
            }
            (Some(act), Some(fq)) => {
                let $f = move |g: f32, v: f32| {
                    let p = pre(v);
                    if act.passes(p) {
                        fq.grad(g, p)
                    } else {
                        0.0
                    }
                };
                $body
            }
        }
    }};
}

/// [`grad_sums`] of `dy` through the gate (activation and fake-quant masks), without storing
/// the masked gradient: the same lanes, tails and additions as `grad_sums` on the gradient
/// the unfused ops would hand the BatchNorm, so the same sums bit for bit.
#[inline(always)]
fn grad_sums_mask_generic<const FMA: bool>(
    dy: &[f32],
    z: &[f32],
    mean: f32,
    ab: (f32, f32),
    gate: Gate,
    out: &mut (f64, f64),
) {
    *out = with_gate!(gate, ab, FMA, |f| gated_sums::<FMA>(dy, z, mean, f));
}

/// The sums of [`grad_sums_mask_generic`] for one gate.
#[inline(always)]
fn gated_sums<const FMA: bool>(
    dy: &[f32],
    z: &[f32],
    mean: f32,
    gate: impl Fn(f32, f32) -> f32,
) -> (f64, f64) {
    let (mut accg, mut acc) = ([0f32; 16], [0f32; 16]);
    let mut cd = dy.chunks_exact(16);
    let mut cz = z.chunks_exact(16);
    for (g, v) in (&mut cd).zip(&mut cz) {
        for i in 0..16 {
            let gi = gate(g[i], v[i]);
            accg[i] += gi;
            acc[i] = madd::<FMA>(gi, v[i] - mean, acc[i]);
        }
    }
    let tail = || cd.remainder().iter().zip(cz.remainder());
    let gsum_tail: f32 = tail().map(|(&g, &v)| gate(g, v)).sum();
    let prod_tail: f32 = tail().map(|(&g, &v)| gate(g, v) * (v - mean)).sum();
    (
        (accg.iter().sum::<f32>() + gsum_tail) as f64,
        acc.iter().sum::<f32>() as f64 + prod_tail as f64,
    )
}

simd_dispatch!(fn grad_sums_mask = grad_sums_mask_generic(dy: &[f32], z: &[f32], mean: f32, ab: (f32, f32), gate: Gate, out: &mut (f64, f64)));

/// The BatchNorm input gradient `dz = k·dy + m·z + q` (`dy` through the gate: masked by the
/// activation's gradient when there is one, as `batch_norm::dx_act` masks it, and by the
/// output fake-quant's) un-scaled, `dx = dz / s`,
/// returning `(Σ dz, Σ dz·x)`: `batch_norm::dx_kernel` / `dx_act` then the channel op's
/// backward (`channel::bwd_plane`) in one pass, without the `dz` plane between them. The same
/// per-element arithmetic and the same 16 lanes and tail for the sums: the same rounding.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn dz_div_generic<const FMA: bool>(
    o: &mut [f32],
    dy: &[f32],
    z: &[f32],
    x: &[f32],
    (k, m, q): (f32, f32, f32),
    ab: (f32, f32),
    gate: Gate,
    s: f32,
    out: &mut (f64, f64),
) {
    let bn = move |g: f32, zv: f32| madd::<FMA>(k, g, madd::<FMA>(m, zv, q));
    *out = with_gate!(gate, ab, FMA, |f| {
        dz_div_sums::<FMA>(o, dy, z, x, s, move |g, zv| bn(f(g, zv), zv))
    });
}

simd_dispatch!(#[allow(clippy::too_many_arguments)] fn dz_div = dz_div_generic(o: &mut [f32], dy: &[f32], z: &[f32], x: &[f32], kmq: (f32, f32, f32), ab: (f32, f32), gate: Gate, s: f32, out: &mut (f64, f64)));

/// The body of [`dz_div_generic`] for one `dz(dy, z)`.
#[inline(always)]
fn dz_div_sums<const FMA: bool>(
    o: &mut [f32],
    dy: &[f32],
    z: &[f32],
    x: &[f32],
    s: f32,
    dz: impl Fn(f32, f32) -> f32,
) -> (f64, f64) {
    let (mut sg, mut sgx) = ([0f32; 16], [0f32; 16]);
    let mut co = o.chunks_exact_mut(16);
    let mut cd = dy.chunks_exact(16);
    let mut cz = z.chunks_exact(16);
    let mut cx = x.chunks_exact(16);
    for (((o, d), zc), v) in (&mut co).zip(&mut cd).zip(&mut cz).zip(&mut cx) {
        for i in 0..16 {
            let g = dz(d[i], zc[i]);
            o[i] = g / s;
            sg[i] += g;
            sgx[i] = madd::<FMA>(g, v[i], sgx[i]);
        }
    }
    let (mut tg, mut tgx) = (0f32, 0f32);
    let tails = cd
        .remainder()
        .iter()
        .zip(cz.remainder())
        .zip(cx.remainder());
    for (o, ((&d, &zv), &v)) in co.into_remainder().iter_mut().zip(tails) {
        let g = dz(d, zv);
        *o = g / s;
        tg += g;
        tgx = madd::<FMA>(g, v, tgx);
    }
    (
        sg.iter().sum::<f32>() as f64 + tg as f64,
        sgx.iter().sum::<f32>() as f64 + tgx as f64,
    )
}

/// The channel's `z = x / s + b` for all images (image-major) into `z`.
fn z_channel(z: &mut [f32], x: &[f32], d: Dims, c: usize, s: &[f32], b: &[f32]) {
    for (n, zp) in z.chunks_exact_mut(d.plane.max(1)).enumerate() {
        z_plane(zp, x, d, n * d.c + c, s, b);
    }
}

/// The forward on `x` (NCHW, `d`) with `gs = [γ | s]`, `bb = [β | b]`: the output, the
/// statistics of `z = x / s + b`, and with `observe` the output's range (else
/// [`Range::EMPTY`]).
pub(super) fn forward_core(
    x: &[f32],
    gs: &[f32],
    bb: &[f32],
    d: Dims,
    eps: f64,
    act: Option<(Act, f32, f32)>,
    observe: bool,
) -> (Vec<f32>, Stats, Range) {
    let (gamma, s) = gs.split_at(d.c);
    let (beta, b) = bb.split_at(d.c);
    let m = d.count() as f64;
    let mut stats = Vec::new();
    // Per channel: z once (cache-resident), its statistics, then y from it.
    let channel = |c: usize, yc: &mut [&mut [MaybeUninit<f32>]], work: &mut [f32]| {
        // `z_channel` writes every element of `z`.
        let z = &mut work[..d.n * d.plane];
        z_channel(z, x, d, c, s, b);
        let mean = (sum(z) as f64 / m) as f32;
        let mut var = 0f64;
        sq_dev(z, mean, &mut var);
        let var = (var / m) as f32;
        let invstd = (1.0 / (var as f64 + eps).sqrt()) as f32;
        let a = gamma[c] * invstd;
        let off = beta[c] - a * mean;
        let mut range = Range::EMPTY;
        for (yp, zp) in yc.iter_mut().zip(z.chunks_exact(d.plane.max(1))) {
            match act {
                _ if observe => affine_range(yp, zp, a, off, act.map(|a| (a.1, a.2)), &mut range),
                None => affine(yp, zp, a, off),
                Some((_, lo, hi)) => affine_clamp(yp, zp, a, off, lo, hi),
            }
        }
        (mean, var, invstd, range)
    };
    // The callers size `x` from `d`; were it otherwise, planes would miss output elements.
    assert_eq!(x.len(), d.n * d.c * d.plane, "input size matches its dims");
    // SAFETY: `per_channel_out` hands every (image, channel) plane of `y` (N·C·H·W floats in
    // planes of H·W) to `channel`, whose kernels write each element of each plane.
    let y = unsafe { output(x.len(), |y| stats = per_channel_out(d, y, channel)) };
    let mean: Vec<f32> = stats.iter().map(|s| s.0).collect();
    let var: Vec<f32> = stats.iter().map(|s| s.1).collect();
    let invstd: Vec<f32> = stats.iter().map(|s| s.2).collect();
    let range = stats.iter().fold(Range::EMPTY, |r, s| r.merge(s.3));
    let fq = None;
    (
        y,
        Stats {
            mean,
            invstd,
            var,
            fq,
        },
        range,
    )
}

/// `(x [N,C,H,W], [γ | s] (2C), [β | b] (2C)) -> y`.
struct Forward {
    d: Dims,
    eps: f64,
    /// The activation clamped after the affine (bounds kept for the forward's clamp).
    act: Option<(Act, f32, f32)>,
    /// The output fake-quant applied to `y` in place.
    fq: Option<RangeFeed>,
    stats: Arc<Mutex<Stats>>,
}

impl SliceOp3 for Forward {
    const NAME: &'static str = "batch_norm_train_prescaled";
    const OPERANDS: [&'static str; 3] = ["input", "weight and divisor", "bias and shift"];

    fn run(&self, x: &[f32], gs: &[f32], bb: &[f32], shape: &Shape) -> Result<(Vec<f32>, Shape)> {
        let observe = self.fq.is_some();
        let (mut y, mut stats, range) =
            forward_core(x, gs, bb, self.d, self.eps, self.act, observe);
        if let Some(feed) = &self.fq {
            stats.fq = observe_and_apply(feed, &mut y, range)?;
        }
        *lock_state(&self.stats, Self::NAME)? = stats;
        Ok((y, shape.clone()))
    }

    fn grads(
        &self,
        x: &Tensor,
        gs: &Tensor,
        bb: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        // The backward needs γ, s and b: pass [γ | s | β | b] as one tensor.
        let params = Tensor::cat(&[gs, bb], 0)?;
        let backward = Backward {
            d: self.d,
            act: self.act.map(|a| a.0),
            stats: self.stats.clone(),
        };
        let c2 = Shape::from(2 * self.d.c);
        let shapes = [x.shape().clone(), c2.clone(), c2];
        let [dx, dgs, dbb] = packed_grads((x, grad, &params), backward, shapes)?;
        Ok([Some(dx), Some(dgs), Some(dbb)])
    }
}

/// `(x, dy, [γ | s | β | b]) -> [dx | dγ | ds | dβ | db]`, flat.
struct Backward {
    d: Dims,
    act: Option<Act>,
    stats: Arc<Mutex<Stats>>,
}

impl SliceOp3 for Backward {
    const NAME: &'static str = "batch_norm_train_prescaled_backward";
    const OPERANDS: [&'static str; 3] = ["input", "output gradient", "parameters"];

    fn run(&self, x: &[f32], dy: &[f32], params: &[f32], _: &Shape) -> Result<(Vec<f32>, Shape)> {
        let st = lock_state(&self.stats, Self::NAME)?;
        let d = self.d;
        if st.mean.len() != d.c || dy.len() != x.len() || params.len() != 4 * d.c {
            bail!(
                "{}: statistics or gradient do not match the input",
                Self::NAME
            )
        }
        let mut out = vec![0f32; x.len() + 4 * d.c];
        let (dx, tail) = out.split_at_mut(x.len());
        backward_core(x, dy, params, &st, d, self.act, dx, tail);
        Ok(flat(out))
    }
}

/// The backward on `x` (checked by the caller against `d`, `st` and `params = [γ | s | β | b]`):
/// writes `dx` and `tail = [dγ | ds | dβ | db]`. `dy` passes the activation's gradient mask
/// and that of the output fake-quant the forward applied (`st.fq`).
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_core(
    x: &[f32],
    dy: &[f32],
    params: &[f32],
    st: &Stats,
    d: Dims,
    act: Option<Act>,
    dx: &mut [f32],
    tail: &mut [f32],
) {
    let (gamma, rest) = params.split_at(d.c);
    let (s, rest) = rest.split_at(d.c);
    let (beta, b) = rest.split_at(d.c);
    let m = d.count() as f64;
    let plane = |i: usize| i * d.plane..(i + 1) * d.plane;
    let gate = Gate { act, fq: st.fq };
    // Per channel: z once; Σdy and Σdy·(z − mean), with an activation of dy masked by its
    // gradient (pre-activation recomputed with the forward's coefficients); then
    // dz = k·dy + mz·z + q (the BatchNorm backward, masked alike) and dx = dz / s with Σdz and
    // Σdz·x. The same arithmetic as the unfused ops, so the same rounding.
    let sums: Vec<[f64; 4]> = per_channel_out(d, dx, |c, dxc, work| {
        // `z_channel` writes every element of `z`.
        let z = &mut work[..d.n * d.plane];
        z_channel(z, x, d, c, s, b);
        let a = gamma[c] * st.invstd[c];
        let ab = (a, beta[c] - a * st.mean[c]);
        let dyc = |n: usize| &dy[plane(n * d.c + c)];
        let (mut sdy, mut sdyzc) = (0f64, 0f64);
        for (n, zp) in z.chunks_exact(d.plane.max(1)).enumerate() {
            let mut o = (0f64, 0f64);
            if gate.is_open() {
                grad_sums(dyc(n), zp, st.mean[c], &mut o);
            } else {
                grad_sums_mask(dyc(n), zp, st.mean[c], ab, gate, &mut o);
            }
            sdy += o.0;
            sdyzc += o.1;
        }
        let inv = st.invstd[c] as f64;
        let k = gamma[c] as f64 * inv;
        let mz = -k * sdyzc * inv * inv / m;
        let q = -k * sdy / m - mz * st.mean[c] as f64;
        let (mut sdz, mut sdzx) = (0f64, 0f64);
        for (n, (zp, dxp)) in z
            .chunks_exact(d.plane.max(1))
            .zip(dxc.iter_mut())
            .enumerate()
        {
            let i = n * d.c + c;
            let kmq = (k as f32, mz as f32, q as f32);
            let mut o = (0f64, 0f64);
            dz_div(dxp, dyc(n), zp, &x[plane(i)], kmq, ab, gate, s[c], &mut o);
            sdz += o.0;
            sdzx += o.1;
        }
        [sdy, sdyzc, sdz, sdzx]
    });
    for (c, &[sdy, sdyzc, sdz, sdzx]) in sums.iter().enumerate() {
        let sc = s[c] as f64;
        tail[c] = (sdyzc * st.invstd[c] as f64) as f32;
        tail[d.c + c] = (-sdzx / (sc * sc)) as f32;
        tail[2 * d.c + c] = sdy as f32;
        tail[3 * d.c + c] = sdz as f32;
    }
}

/// Train-mode BatchNorm2d (batch statistics) of `z = x / divisor[c] + shift[c]` on NCHW `x`:
/// the same values and gradients as [`channel_div_nchw`](super::channel_div_nchw) followed by
/// [`batch_norm_train`](super::batch_norm_train), without storing `z`. The returned statistics
/// are those of `z` (for the running-stat update). `divisor`, `shift`, `weight`, `bias` are
/// `[C]` (`shift` optional); gradients flow to all of them and to `x`. Errors on wrong ranks /
/// shapes, non-f32 / non-CPU tensors, a negative eps, and a single value per channel.
pub fn batch_norm_train_prescaled(
    x: &Tensor,
    divisor: &Tensor,
    shift: Option<&Tensor>,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<BatchNormTrainOutput> {
    prescaled(
        x,
        divisor,
        shift,
        (weight, bias),
        eps,
        (None, None),
        "batch_norm_train_prescaled",
    )
}

/// [`batch_norm_train_prescaled`] followed by `clamp(·, min, max)` in the same pass (ReLU:
/// `max = +inf`, ReLU6: `0, 6`), PyTorch's activation gradient (passed only where
/// `min < y < max`) folded into the backward: the QAT Conv+BN+ReLU(6) un-scaling, BatchNorm
/// and activation as one op and one output tensor. Values equal the unfused sequence bit for
/// bit (the same affine, then the same clamp). Errors as [`batch_norm_train_prescaled`], and
/// on `min > max` or NaN bounds.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// let x = Tensor::new(&[[[[-1f32, 2.0]], [[5.0, 9.0]]]], &Device::Cpu)?;
/// let (one, zero) = (Tensor::ones(2, DType::F32, &Device::Cpu)?, Tensor::zeros(2, DType::F32, &Device::Cpu)?);
/// let o = qat_graph::ops::batch_norm_act_train_prescaled(&x, &one, None, &one, &zero, 1e-5, 0.0, 6.0)?;
/// assert_eq!(o.y.flatten_all()?.to_vec1::<f32>()?[0], 0.0);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_act_train_prescaled(
    x: &Tensor,
    divisor: &Tensor,
    shift: Option<&Tensor>,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    min: f32,
    max: f32,
) -> Result<BatchNormTrainOutput> {
    const OP: &str = "batch_norm_act_train_prescaled";
    let act = Some((Act::new(min, max, OP)?, min, max));
    prescaled(x, divisor, shift, (weight, bias), eps, (act, None), OP)
}

/// [`batch_norm_train_prescaled`] (`act = None`) or [`batch_norm_act_train_prescaled`]
/// (`act = Some((min, max))`) with the output's activation fake-quant in the same op: the
/// observer behind `fq` steps with the output's range (found in the pass that writes it) and
/// the output is fake-quantized in place with the qparams it returns; the backward applies the
/// straight-through mask with the activation's. Values, gradients and the observer's state
/// equal the op followed by that module's `forward` bit for bit
/// ([`batch_norm_act_fq_train_prescaled_slow`]). Errors as the op does, and where the module
/// would (non-finite outputs while its observer is on; nothing is updated then).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_act_fq_train_prescaled(
    x: &Tensor,
    divisor: &Tensor,
    shift: Option<&Tensor>,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    act: Option<(f32, f32)>,
    fq: &RangeFeed,
) -> Result<BatchNormTrainOutput> {
    const OP: &str = "batch_norm_act_fq_train_prescaled";
    let act = match act {
        Some((min, max)) => Some((Act::new(min, max, OP)?, min, max)),
        None => None,
    };
    prescaled(x, divisor, shift, (weight, bias), eps, (act, Some(fq)), OP)
}

fn prescaled(
    x: &Tensor,
    divisor: &Tensor,
    shift: Option<&Tensor>,
    (weight, bias): (&Tensor, &Tensor),
    eps: f64,
    (act, fq): (Option<(Act, f32, f32)>, Option<&RangeFeed>),
    op: &str,
) -> Result<BatchNormTrainOutput> {
    let d = check(x, weight, bias, op)?;
    if divisor.dims() != [d.c] || shift.is_some_and(|b| b.dims() != [d.c]) {
        bail!("{op}: divisor and shift must have shape [{}]", d.c)
    }
    if eps.is_nan() || eps < 0.0 {
        bail!("{op}: eps must be >= 0, got {eps}")
    }
    let x = f32_contiguous(x, op, "input")?;
    let shift = match shift {
        Some(b) => b.clone(),
        None => Tensor::zeros(d.c, x.dtype(), x.device())?,
    };
    let gs = f32_contiguous(&Tensor::cat(&[weight, divisor], 0)?, op, "weight / divisor")?;
    let bb = f32_contiguous(&Tensor::cat(&[bias, &shift], 0)?, op, "bias / shift")?;
    let stats = Arc::new(Mutex::new(Stats::default()));
    let y = x.apply_op3(
        &gs,
        &bb,
        Op3(Forward {
            d,
            eps,
            act,
            fq: fq.cloned(),
            stats: stats.clone(),
        }),
    )?;
    let st = lock_state(&stats, op)?;
    BatchNormTrainOutput::from_stats(y, &st.mean, &st.var, d)
}

/// [`batch_norm_train_prescaled`] as candle ops (the reference for tests):
/// [`channel_div_nchw_slow`](super::channel_div_nchw_slow) then
/// [`batch_norm_train_slow`](super::batch_norm_train_slow).
pub fn batch_norm_train_prescaled_slow(
    x: &Tensor,
    divisor: &Tensor,
    shift: Option<&Tensor>,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<BatchNormTrainOutput> {
    let z = super::channel_div_nchw_slow(x, divisor, shift)?;
    super::batch_norm_train_slow(&z, weight, bias, eps)
}

/// [`batch_norm_act_train_prescaled`] as candle ops (the reference for tests):
/// [`batch_norm_train_prescaled_slow`] then [`clamp_slow`](super::clamp_slow).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_act_train_prescaled_slow(
    x: &Tensor,
    divisor: &Tensor,
    shift: Option<&Tensor>,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    min: f32,
    max: f32,
) -> Result<BatchNormTrainOutput> {
    let o = batch_norm_train_prescaled_slow(x, divisor, shift, weight, bias, eps)?;
    Ok(BatchNormTrainOutput {
        y: super::clamp_slow(&o.y, min, max)?,
        ..o
    })
}

/// [`batch_norm_act_fq_train_prescaled`] as candle ops and the module it fuses (the
/// reference for tests): [`batch_norm_train_prescaled_slow`] or
/// [`batch_norm_act_train_prescaled_slow`], then `fq.forward`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_act_fq_train_prescaled_slow(
    x: &Tensor,
    divisor: &Tensor,
    shift: Option<&Tensor>,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    act: Option<(f32, f32)>,
    fq: &FusedMovingAvgObsFakeQuantize,
) -> Result<BatchNormTrainOutput> {
    let o = match act {
        None => batch_norm_train_prescaled_slow(x, divisor, shift, weight, bias, eps)?,
        Some((min, max)) => {
            batch_norm_act_train_prescaled_slow(x, divisor, shift, weight, bias, eps, min, max)?
        }
    };
    Ok(BatchNormTrainOutput {
        y: fq.forward(&o.y)?,
        ..o
    })
}

#[cfg(test)]
mod tests {
    use super::super::batch_norm::{dx_act, dx_kernel};
    use super::super::channel::bwd_plane;
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The fused pass against the two kernels it replaces (BatchNorm input gradient into a
    /// plane, then the channel divide's backward on it): the same bits for `dx` and the sums,
    /// for plane lengths around the 16-lane blocks (tails of 0–15) and every activation mask.
    #[test]
    fn dz_div_equals_dx_kernels_then_divide_backward_bit_for_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut v = |n: usize, scale: f32| -> Vec<f32> {
            (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
        };
        let acts = [
            None,
            Some(Act::new(0.0, 6.0, "t").unwrap()),
            Some(Act::new(0.0, f32::INFINITY, "t").unwrap()),
            Some(Act::new(-0.5, 1.25, "t").unwrap()),
        ];
        for len in [1, 7, 15, 16, 17, 33, 49, 196, 784] {
            let (dy, z, x) = (v(len, 2.0), v(len, 3.0), v(len, 5.0));
            let kmq = (0.7f32, -0.013f32, 0.021f32);
            let ab = (1.9f32, 0.4f32);
            for s in [0.37f32, -1.3, 3.0e-3] {
                for act in acts {
                    let mut dz = vec![0f32; len];
                    match act {
                        None => dx_kernel(&mut dz, &dy, &z, kmq.0, kmq.1, kmq.2),
                        Some(act) => dx_act(&mut dz, &dy, &z, kmq, ab, act),
                    }
                    let mut want = vec![0f32; len];
                    let want_sums = bwd_plane(&mut want, &dz, &x, s, true);
                    let mut got = vec![0f32; len];
                    let mut got_sums = (0f64, 0f64);
                    let gate = Gate { act, fq: None };
                    dz_div(&mut got, &dy, &z, &x, kmq, ab, gate, s, &mut got_sums);
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "dx, len {len} s {s} act {act:?}");
                    assert_eq!(
                        (got_sums.0.to_bits(), got_sums.1.to_bits()),
                        (want_sums.0.to_bits(), want_sums.1.to_bits()),
                        "sums, len {len} s {s} act {act:?}"
                    );
                }
            }
        }
    }
}
