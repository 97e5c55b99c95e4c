//! Train-mode BatchNorm2d (batch statistics) as a fused forward and a fused backward.
//!
//! candle's composition (means, broadcast subtract / divide / multiply / add) makes about ten
//! full passes forward and more backward; this forward reads `x` three times (mean, variance,
//! normalize) and the backward twice (two per-channel sums, then `dx`).

use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use candle_core::{bail, Device, Result, Shape, Tensor};
use rayon::prelude::*;

use super::common::{dims4, f32_contiguous, lock_state, output, simd_dispatch, sum, PAR_MIN_ELEMS};
use super::slice_op::{flat, packed_grads, Op3, SliceOp3};

/// What [`batch_norm_train`] returns.
#[derive(Debug, Clone)]
pub struct BatchNormTrainOutput {
    /// The normalized, scaled and shifted output, `[N, C, H, W]` (with autograd).
    pub y: Tensor,
    /// Batch mean per channel, `[C]` (no autograd: for the running-mean update).
    pub mean: Tensor,
    /// Biased batch variance per channel (the one used to normalize), `[C]`, no autograd.
    pub var: Tensor,
    /// Unbiased batch variance (`var · M / (M − 1)`, `M = N·H·W`), `[C]`, no autograd: PyTorch
    /// updates `running_var` with this one.
    pub var_unbiased: Tensor,
}

impl BatchNormTrainOutput {
    /// `y` with the batch statistics its forward computed (`var` biased, over `d.count()`
    /// values per channel; the unbiased one is derived here).
    pub(super) fn from_stats(y: Tensor, mean: &[f32], var: &[f32], d: Dims) -> Result<Self> {
        let m = d.count() as f32;
        let unbiased: Vec<f32> = var.iter().map(|v| v * m / (m - 1.0)).collect();
        Ok(BatchNormTrainOutput {
            y,
            mean: Tensor::from_slice(mean, d.c, &Device::Cpu)?,
            var: Tensor::from_slice(var, d.c, &Device::Cpu)?,
            var_unbiased: Tensor::from_vec(unbiased, d.c, &Device::Cpu)?,
        })
    }
}

/// Per-channel statistics saved by the forward for the backward.
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) mean: Vec<f32>,
    invstd: Vec<f32>,
    pub(super) var: Vec<f32>,
    /// The bias the forward used (with an activation the backward recomputes `a·x + b`).
    beta: Vec<f32>,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Dims {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) plane: usize,
}

impl Dims {
    pub(super) fn count(&self) -> usize {
        self.n * self.plane
    }
}

/// Plane `i` (image-major, channel-minor) of an NCHW buffer.
fn plane_of(v: &[f32], d: Dims, i: usize) -> &[f32] {
    &v[i * d.plane..(i + 1) * d.plane]
}

/// How a BatchNorm input (and its gradient) stores its `N·C` planes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum PlaneOrder {
    /// NCHW: plane `n·C + c` at position `n·C + c`.
    #[default]
    ImageMajor,
    /// `[C, N, H, W]`: plane `n·C + c` at position `c·N + n` (what one GEMM over the batch
    /// leaves, see `pointwise::forward_gemm`).
    ChannelMajor,
}

impl PlaneOrder {
    /// The storage position of NCHW plane `i`.
    #[inline(always)]
    fn at(self, d: Dims, i: usize) -> usize {
        match self {
            PlaneOrder::ImageMajor => i,
            PlaneOrder::ChannelMajor => (i % d.c) * d.n + i / d.c,
        }
    }

    /// The NCHW plane stored at position `j` (the inverse of [`PlaneOrder::at`]).
    #[inline(always)]
    fn nchw(self, d: Dims, j: usize) -> usize {
        match self {
            PlaneOrder::ImageMajor => j,
            PlaneOrder::ChannelMajor => (j % d.n) * d.c + j / d.n,
        }
    }
}

/// Runs `f(c)` for every channel, in parallel when the tensor is big.
pub(super) fn per_channel<T: Send>(d: Dims, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    if d.n * d.c * d.plane < PAR_MIN_ELEMS {
        (0..d.c).map(f).collect()
    } else {
        (0..d.c).into_par_iter().map(&f).collect()
    }
}

/// Runs `f(plane_index, plane)` over all planes of `out`, in parallel when big.
fn per_plane<E: Send>(out: &mut [E], d: Dims, f: impl Fn(usize, &mut [E]) + Sync) {
    if d.plane == 0 {
        return;
    }
    if out.len() < PAR_MIN_ELEMS {
        out.chunks_exact_mut(d.plane)
            .enumerate()
            .for_each(|(i, o)| f(i, o));
    } else {
        out.par_chunks_exact_mut(d.plane)
            .enumerate()
            .for_each(|(i, o)| f(i, o));
    }
}

/// [`sum`] compiled for the best vector extension (called from a closure, `sum` would be
/// baseline SSE code; the arithmetic, hence the result, is the same on every extension).
#[inline(always)]
fn plane_sum_generic<const FMA: bool>(x: &[f32], out: &mut f32) {
    *out = sum(x);
}

simd_dispatch!(pub(super) fn plane_sum = plane_sum_generic(x: &[f32], out: &mut f32));

/// `Σ (x − mean)²` over a slice, vectorizable.
#[inline(always)]
fn sq_dev_generic<const FMA: bool>(x: &[f32], mean: f32, out: &mut f64) {
    let mut acc = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for ch in &mut chunks {
        for i in 0..16 {
            let d = ch[i] - mean;
            acc[i] = super::common::madd::<FMA>(d, d, acc[i]);
        }
    }
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    *out = acc.iter().sum::<f32>() as f64 + tail as f64;
}

simd_dispatch!(pub(super) fn sq_dev = sq_dev_generic(x: &[f32], mean: f32, out: &mut f64));

/// `Σ dy` and `Σ dy·(x − mean)` over a slice (centred first: no cancellation for large means).
#[inline(always)]
fn grad_sums_generic<const FMA: bool>(dy: &[f32], x: &[f32], mean: f32, out: &mut (f64, f64)) {
    let mut acc = [0f32; 16];
    let mut cd = dy.chunks_exact(16);
    let mut cx = x.chunks_exact(16);
    for (g, v) in (&mut cd).zip(&mut cx) {
        for i in 0..16 {
            acc[i] = super::common::madd::<FMA>(g[i], v[i] - mean, acc[i]);
        }
    }
    let tail: f32 = cd
        .remainder()
        .iter()
        .zip(cx.remainder())
        .map(|(g, v)| g * (v - mean))
        .sum();
    *out = (sum(dy) as f64, acc.iter().sum::<f32>() as f64 + tail as f64);
}

simd_dispatch!(pub(super) fn grad_sums = grad_sums_generic(dy: &[f32], x: &[f32], mean: f32, out: &mut (f64, f64)));

/// `o = a·x + b` element-wise (normalize-and-affine in one FMA per element).
#[inline(always)]
fn affine_generic<const FMA: bool>(o: &mut [MaybeUninit<f32>], x: &[f32], a: f32, b: f32) {
    for (o, &x) in o.iter_mut().zip(x) {
        o.write(super::common::madd::<FMA>(a, x, b));
    }
}

simd_dispatch!(pub(super) fn affine = affine_generic(o: &mut [MaybeUninit<f32>], x: &[f32], a: f32, b: f32));

/// `o = clamp(a·x + b, lo, hi)` with the comparisons of [`super::activation`]'s clamp (NaN
/// passes through).
#[inline(always)]
fn affine_clamp_generic<const FMA: bool>(
    o: &mut [MaybeUninit<f32>],
    x: &[f32],
    a: f32,
    b: f32,
    lo: f32,
    hi: f32,
) {
    for (o, &x) in o.iter_mut().zip(x) {
        let z = super::common::madd::<FMA>(a, x, b);
        o.write(if z < lo {
            lo
        } else if z > hi {
            hi
        } else {
            z
        });
    }
}

simd_dispatch!(pub(super) fn affine_clamp = affine_clamp_generic(o: &mut [MaybeUninit<f32>], x: &[f32], a: f32, b: f32, lo: f32, hi: f32));

/// The activation fused after the normalization: `clamp(z, min, max)` with PyTorch's gradient
/// (passed only where `min < z < max`; `max = +inf` is ReLU, whose gradient `z = +inf` keeps).
#[derive(Clone, Copy, Debug)]
pub(super) struct Act {
    min: f32,
    max: f32,
}

impl Act {
    /// `clamp(·, min, max)`; errors on NaN bounds or `min > max`.
    pub(super) fn new(min: f32, max: f32, op: &str) -> Result<Act> {
        if min.is_nan() || max.is_nan() || min > max {
            bail!("{op}: need min <= max, got min {min}, max {max}")
        }
        Ok(Act { min, max })
    }

    #[inline(always)]
    pub(super) fn passes(&self, z: f32) -> bool {
        // Non-short-circuit `&` / `|`: branch-free, so the loops using it vectorize.
        (z > self.min) & ((z < self.max) | (self.max == f32::INFINITY))
    }
}

/// [`grad_sums_generic`] with the activation's gradient mask applied to `dy` first; the
/// pre-activation `z = a·x + b` is recomputed exactly as the forward computed it.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn grad_sums_act_generic<const FMA: bool>(
    dy: &[f32],
    x: &[f32],
    mean: f32,
    (a, b): (f32, f32),
    act: Act,
    out: &mut (f64, f64),
) {
    let mut acc = [0f32; 16];
    let mut accg = [0f32; 16];
    let mut cd = dy.chunks_exact(16);
    let mut cx = x.chunks_exact(16);
    for (g, v) in (&mut cd).zip(&mut cx) {
        for i in 0..16 {
            let z = super::common::madd::<FMA>(a, v[i], b);
            let gi = if act.passes(z) { g[i] } else { 0.0 };
            accg[i] += gi;
            acc[i] = super::common::madd::<FMA>(gi, v[i] - mean, acc[i]);
        }
    }
    let (mut tg, mut tx) = (0f32, 0f32);
    for (&g, &v) in cd.remainder().iter().zip(cx.remainder()) {
        let z = super::common::madd::<FMA>(a, v, b);
        let gi = if act.passes(z) { g } else { 0.0 };
        tg += gi;
        tx += gi * (v - mean);
    }
    *out = (
        accg.iter().sum::<f32>() as f64 + tg as f64,
        acc.iter().sum::<f32>() as f64 + tx as f64,
    );
}

simd_dispatch!(fn grad_sums_act = grad_sums_act_generic(dy: &[f32], x: &[f32], mean: f32, ab: (f32, f32), act: Act, out: &mut (f64, f64)));

/// [`dx_generic`] with the activation's gradient mask on `dy`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn dx_act_generic<const FMA: bool>(
    o: &mut [f32],
    dy: &[f32],
    x: &[f32],
    (k, m, q): (f32, f32, f32),
    (a, b): (f32, f32),
    act: Act,
) {
    for ((o, &g), &x) in o.iter_mut().zip(dy).zip(x) {
        let z = super::common::madd::<FMA>(a, x, b);
        let g = if act.passes(z) { g } else { 0.0 };
        *o = super::common::madd::<FMA>(k, g, super::common::madd::<FMA>(m, x, q));
    }
}

simd_dispatch!(pub(super) fn dx_act = dx_act_generic(o: &mut [f32], dy: &[f32], x: &[f32], kmq: (f32, f32, f32), ab: (f32, f32), act: Act));

/// `dx = k·dy + m·x + q` element-wise.
#[inline(always)]
fn dx_generic<const FMA: bool>(o: &mut [f32], dy: &[f32], x: &[f32], k: f32, m: f32, q: f32) {
    for ((o, &g), &x) in o.iter_mut().zip(dy).zip(x) {
        *o = super::common::madd::<FMA>(k, g, super::common::madd::<FMA>(m, x, q));
    }
}

simd_dispatch!(pub(super) fn dx_kernel = dx_generic(o: &mut [f32], dy: &[f32], x: &[f32], k: f32, m: f32, q: f32));

/// The forward of train-mode BatchNorm (+ activation) on the NCHW data `x`: the output and the
/// statistics the backward needs.
pub(super) fn forward_core(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    d: Dims,
    eps: f64,
    act: Option<Act>,
) -> (Vec<f32>, Stats) {
    forward_core_in(x, PlaneOrder::ImageMajor, gamma, beta, d, eps, act)
}

/// [`forward_core`] on an input whose planes are stored in `order` (the output is NCHW). The
/// arithmetic is the same for both orders: every plane's sums, in the same channel and image
/// order.
pub(super) fn forward_core_in(
    x: &[f32],
    order: PlaneOrder,
    gamma: &[f32],
    beta: &[f32],
    d: Dims,
    eps: f64,
    act: Option<Act>,
) -> (Vec<f32>, Stats) {
    let m = d.count() as f64;
    let plane = |i: usize| {
        let j = order.at(d, i);
        &x[j * d.plane..(j + 1) * d.plane]
    };
    let stats: Vec<(f32, f32)> = per_channel(d, |c| {
        let total: f64 = (0..d.n)
            .map(|n| {
                let mut s = 0f32;
                plane_sum(plane(n * d.c + c), &mut s);
                s as f64
            })
            .sum();
        let mean = (total / m) as f32;
        let mut var = 0f64;
        for n in 0..d.n {
            let mut s = 0f64;
            sq_dev(plane(n * d.c + c), mean, &mut s);
            var += s;
        }
        (mean, (var / m) as f32)
    });
    let mean: Vec<f32> = stats.iter().map(|s| s.0).collect();
    let var: Vec<f32> = stats.iter().map(|s| s.1).collect();
    let invstd: Vec<f32> = var
        .iter()
        .map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32)
        .collect();
    let write = |i: usize, o: &mut [MaybeUninit<f32>]| {
        let c = i % d.c;
        let a = gamma[c] * invstd[c];
        let b = beta[c] - a * mean[c];
        match act {
            None => affine(o, plane(i), a, b),
            Some(act) => affine_clamp(o, plane(i), a, b, act.min, act.max),
        }
    };
    // The callers size `x` from `d`; were it otherwise, planes would miss output elements.
    assert_eq!(x.len(), d.n * d.c * d.plane, "input size matches its dims");
    // SAFETY: `per_plane` hands every plane of `y` (`x.len()` = N·C·H·W floats in planes of
    // H·W) to `write`, whose kernels write each element of the plane.
    let y = unsafe { output(x.len(), |y| per_plane(y, d, write)) };
    let stats = Stats {
        mean,
        invstd,
        var,
        beta: if act.is_some() {
            beta.to_vec()
        } else {
            Vec::new()
        },
    };
    (y, stats)
}

/// The backward of [`forward_core`]: writes `dx` (the size of `x`), `dgamma` and `dbeta` (`C`
/// each) from the saved statistics. The caller checks that `st` and `dy` match `x`.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_core(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    st: &Stats,
    d: Dims,
    act: Option<Act>,
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let order = PlaneOrder::ImageMajor;
    backward_core_in(x, order, dy, gamma, st, d, act, dx, dgamma, dbeta);
}

/// [`backward_core`] with `x` and `dx` stored in `order` (`dy` is NCHW); the same arithmetic.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_core_in(
    x: &[f32],
    order: PlaneOrder,
    dy: &[f32],
    gamma: &[f32],
    st: &Stats,
    d: Dims,
    act: Option<Act>,
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let m = d.count() as f64;
    // The forward's affine coefficients, to recompute the pre-activation bit for bit.
    let ab = |c: usize| {
        let a = gamma[c] * st.invstd[c];
        (a, st.beta[c] - a * st.mean[c])
    };
    // Per channel: Σdy and Σdy·(x − mean) (dy masked by the activation's gradient).
    let sums: Vec<(f64, f64)> = per_channel(d, |c| {
        let (mut sdy, mut sdyxc) = (0f64, 0f64);
        for n in 0..d.n {
            let mut s = (0f64, 0f64);
            let i = n * d.c + c;
            let (dyp, xp) = (plane_of(dy, d, i), plane_of(x, d, order.at(d, i)));
            match act {
                None => grad_sums(dyp, xp, st.mean[c], &mut s),
                Some(act) => grad_sums_act(dyp, xp, st.mean[c], ab(c), act, &mut s),
            }
            sdy += s.0;
            sdyxc += s.1;
        }
        (sdy, sdyxc)
    });
    // dx = γ·σ⁻¹·(dy − Σdy/M − x̂·Σdy·x̂/M), with x̂ = (x − μ)·σ⁻¹, expanded to k·dy + m·x + q.
    per_plane(dx, d, |j, o| {
        let i = order.nchw(d, j);
        let c = i % d.c;
        let (sdy, sdyxc) = sums[c];
        let inv = st.invstd[c] as f64;
        let k = gamma[c] as f64 * inv;
        let mx = -k * sdyxc * inv * inv / m;
        let q = -k * sdy / m - mx * st.mean[c] as f64;
        let (dyp, xp) = (plane_of(dy, d, i), plane_of(x, d, j));
        match act {
            None => dx_kernel(o, dyp, xp, k as f32, mx as f32, q as f32),
            Some(act) => dx_act(o, dyp, xp, (k as f32, mx as f32, q as f32), ab(c), act),
        }
    });
    for (c, &(sdy, sdyxc)) in sums.iter().enumerate() {
        dgamma[c] = (sdyxc * st.invstd[c] as f64) as f32;
        dbeta[c] = sdy as f32;
    }
}

/// `(x [N,C,H,W], gamma [C], beta [C]) -> y`, saving the statistics in `stats`.
struct BnForward {
    d: Dims,
    eps: f64,
    act: Option<Act>,
    stats: Arc<Mutex<Stats>>,
}

impl SliceOp3 for BnForward {
    const NAME: &'static str = "batch_norm_train";
    const OPERANDS: [&'static str; 3] = ["input", "weight", "bias"];

    fn run(
        &self,
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        shape: &Shape,
    ) -> Result<(Vec<f32>, Shape)> {
        let (y, stats) = forward_core(x, gamma, beta, self.d, self.eps, self.act);
        *lock_state(&self.stats, Self::NAME)? = stats;
        Ok((y, shape.clone()))
    }

    fn grads(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let backward = BnBackward {
            d: self.d,
            act: self.act,
            stats: self.stats.clone(),
        };
        let c = Shape::from(self.d.c);
        let shapes = [x.shape().clone(), c.clone(), c];
        let [dx, dgamma, dbeta] = packed_grads((x, grad, gamma), backward, shapes)?;
        Ok([Some(dx), Some(dgamma), Some(dbeta)])
    }
}

/// `(x, dy, gamma) -> [dx (N·C·H·W) | dgamma (C) | dbeta (C)]`, flat.
struct BnBackward {
    d: Dims,
    act: Option<Act>,
    stats: Arc<Mutex<Stats>>,
}

impl SliceOp3 for BnBackward {
    const NAME: &'static str = "batch_norm_train_backward";
    const OPERANDS: [&'static str; 3] = ["input", "output gradient", "weight"];

    fn run(&self, x: &[f32], dy: &[f32], gamma: &[f32], _: &Shape) -> Result<(Vec<f32>, Shape)> {
        let st = lock_state(&self.stats, Self::NAME)?;
        let d = self.d;
        if st.mean.len() != d.c || dy.len() != x.len() {
            bail!(
                "{}: statistics or gradient do not match the input",
                Self::NAME
            )
        }
        let mut out = vec![0f32; x.len() + 2 * d.c];
        let (dx, tail) = out.split_at_mut(x.len());
        let (dgamma, dbeta) = tail.split_at_mut(d.c);
        backward_core(x, dy, gamma, &st, d, self.act, dx, dgamma, dbeta);
        Ok(flat(out))
    }
}

pub(super) fn check(x: &Tensor, gamma: &Tensor, beta: &Tensor, op: &str) -> Result<Dims> {
    check_dims(dims4(x, op, "input")?, gamma, beta, op)
}

/// [`check`] for an input of NCHW dims `(n, c, h, w)`.
pub(super) fn check_dims(
    (n, c, h, w): (usize, usize, usize, usize),
    gamma: &Tensor,
    beta: &Tensor,
    op: &str,
) -> Result<Dims> {
    for (t, what) in [(gamma, "weight"), (beta, "bias")] {
        if t.dims() != [c] {
            bail!("{op}: {what} must have shape [{c}], got {:?}", t.dims())
        }
    }
    if n * h * w < 2 {
        bail!(
            "{op}: expected more than 1 value per channel when training, got input {:?}",
            [n, c, h, w]
        )
    }
    Ok(Dims { n, c, plane: h * w })
}

/// Train-mode BatchNorm2d on NCHW `x` with batch statistics, as PyTorch's `F.batch_norm(...,
/// training=True)`: `y = (x − mean) / sqrt(var + eps) · weight + bias` with the biased batch
/// variance. `weight` / `bias` are `[C]` (pass ones / zeros for a non-affine BN). Gradients flow
/// to `x`, `weight` and `bias`; the returned statistics carry none. Update running stats with
/// `running = (1 − momentum)·running + momentum·batch`, using `var_unbiased` for the variance.
///
/// Errors on wrong ranks / shapes, non-f32 inputs, and a single value per channel.
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<BatchNormTrainOutput> {
    bn_train(x, weight, bias, eps, None, "batch_norm_train")
}

/// [`batch_norm_train`] followed by `clamp(·, min, max)` in the same pass (ReLU: `max = +inf`,
/// ReLU6: `0, 6`), with PyTorch's activation gradient (passed only where `min < z < max` for
/// the normalized value `z`) folded into the BatchNorm backward: no activation tensor, no extra
/// autograd node. Values and gradients equal [`batch_norm_train`] then
/// [`clamp`](super::clamp). Errors as [`batch_norm_train`], and on `min > max` or NaN bounds.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[[[-1f32, 2.0]], [[5.0, 9.0]]]], &Device::Cpu)?;
/// let (g, b) = (Tensor::ones(2, candle_core::DType::F32, &Device::Cpu)?, Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu)?);
/// let o = qat_graph::ops::batch_norm_act_train(&x, &g, &b, 1e-5, 0.0, 6.0)?;
/// assert_eq!(o.y.flatten_all()?.to_vec1::<f32>()?[0], 0.0);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn batch_norm_act_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    min: f32,
    max: f32,
) -> Result<BatchNormTrainOutput> {
    const OP: &str = "batch_norm_act_train";
    bn_train(x, weight, bias, eps, Some(Act::new(min, max, OP)?), OP)
}

/// [`batch_norm_act_train`] as candle ops: [`batch_norm_train_slow`] then
/// [`clamp_slow`](super::clamp_slow) (the reference for tests and benches).
pub fn batch_norm_act_train_slow(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    min: f32,
    max: f32,
) -> Result<BatchNormTrainOutput> {
    let o = batch_norm_train_slow(x, weight, bias, eps)?;
    Ok(BatchNormTrainOutput {
        y: super::clamp_slow(&o.y, min, max)?,
        ..o
    })
}

fn bn_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    act: Option<Act>,
    op_name: &str,
) -> Result<BatchNormTrainOutput> {
    let d = check(x, weight, bias, op_name)?;
    if eps.is_nan() || eps < 0.0 {
        bail!("{op_name}: eps must be >= 0, got {eps}")
    }
    let x = f32_contiguous(x, op_name, "input")?;
    let weight = f32_contiguous(weight, op_name, "weight")?;
    let bias = f32_contiguous(bias, op_name, "bias")?;
    let stats = Arc::new(Mutex::new(Stats::default()));
    let y = x.apply_op3(
        &weight,
        &bias,
        Op3(BnForward {
            d,
            eps,
            act,
            stats: stats.clone(),
        }),
    )?;
    let st = lock_state(&stats, op_name)?;
    BatchNormTrainOutput::from_stats(y, &st.mean, &st.var, d)
}

/// [`batch_norm_train`] as a composition of candle ops (the reference for tests and benches).
pub fn batch_norm_train_slow(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<BatchNormTrainOutput> {
    let d = check(x, weight, bias, "batch_norm_train_slow")?;
    let c = d.c;
    let mean = x.mean_keepdim(3)?.mean_keepdim(2)?.mean_keepdim(0)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc
        .sqr()?
        .mean_keepdim(3)?
        .mean_keepdim(2)?
        .mean_keepdim(0)?;
    let y = xc
        .broadcast_div(&(&var + eps)?.sqrt()?)?
        .broadcast_mul(&weight.reshape((1, c, 1, 1))?)?
        .broadcast_add(&bias.reshape((1, c, 1, 1))?)?;
    let m = d.count() as f64;
    let var = var.flatten_all()?.detach();
    Ok(BatchNormTrainOutput {
        y,
        mean: mean.flatten_all()?.detach(),
        var_unbiased: (&var * (m / (m - 1.0)))?,
        var,
    })
}
