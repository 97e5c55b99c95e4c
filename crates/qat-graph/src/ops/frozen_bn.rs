//! The frozen QAT Conv+BN tail as one op: `y = act((x / s[c] + b[c]) · a[c] + t[c])`, i.e.
//! the un-scaling of the folded conv (`conv / scale_factor (+ bias)`), BatchNorm with running
//! statistics as its per-channel affine (`a = γ / σ`, `t = β − μ·a`), then ReLU / ReLU6 / clamp.
//!
//! As three ops ([`super::channel_div_nchw`], [`super::channel_affine_nchw`], [`super::clamp`])
//! the two intermediate tensors are autograd nodes: two more outputs forward, and backward two
//! zero-filled gradient tensors that candle adds into, plus two more full passes. Here the
//! intermediates live in registers: the forward is one pass, the backward one pass per plane
//! that recomputes them, masks `dy` by the activation, and writes `dx` and the four per-plane
//! sums. The per-element arithmetic and the summation order (16 lanes per plane, planes summed
//! image by image in f64) are those of the three ops, so values and gradients equal theirs bit
//! for bit.

use candle_core::{bail, Result, Shape, Tensor};
use rayon::prelude::*;

use super::common::{dims4, f32_contiguous, madd, simd_dispatch, PAR_MIN_ELEMS};
use super::slice_op::{flat, packed_grads, Op2, SliceOp2, SliceOp3};

#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    c: usize,
    plane: usize,
}

/// `clamp(·, min, max)` with PyTorch's gradient rule (passed only where `min < v < max`).
#[derive(Clone, Copy, Debug)]
struct Act {
    min: f32,
    max: f32,
}

impl Act {
    /// The clamp of [`super::clamp`]: NaN passes through.
    #[inline(always)]
    fn apply(&self, v: f32) -> f32 {
        if v < self.min {
            self.min
        } else if v > self.max {
            self.max
        } else {
            v
        }
    }
    #[inline(always)]
    fn passes(&self, v: f32) -> bool {
        // Non-short-circuit `&` / `|`: branch-free, so the loops using it vectorize.
        (v > self.min) & ((v < self.max) | (self.max == f32::INFINITY))
    }
}

/// One channel's coefficients: divisor, shift, scale, bias.
#[derive(Clone, Copy)]
struct Coef {
    s: f32,
    b: f32,
    a: f32,
    t: f32,
}

/// Forward of one plane. `x / s + b` then `· a + t` as two roundings each (no FMA), as the
/// separate channel ops compute them.
#[inline(always)]
fn fwd_plane_generic<const FMA: bool>(o: &mut [f32], x: &[f32], k: Coef, act: Option<Act>) {
    match act {
        None => {
            for (o, &v) in o.iter_mut().zip(x) {
                *o = (v / k.s + k.b) * k.a + k.t;
            }
        }
        Some(act) => {
            for (o, &v) in o.iter_mut().zip(x) {
                *o = act.apply((v / k.s + k.b) * k.a + k.t);
            }
        }
    }
}

simd_dispatch!(fn fwd_plane = fwd_plane_generic(o: &mut [f32], x: &[f32], k: Coef, act: Option<Act>));

/// Per-plane sums of the backward: `Σ g`, `Σ g·z` (the affine's), `Σ dz`, `Σ dz·x` (the
/// divide's), where `g` is the masked output gradient, `z = x / s + b`, `dz = g·a`.
type Sums = [f64; 4];

/// Backward of one plane: `dx = (mask(dy)·a) / s`, returning its [`Sums`] with the 16-lane
/// accumulation of the channel ops' backward.
#[inline(always)]
fn bwd_plane_generic<const FMA: bool>(
    o: &mut [f32],
    dy: &[f32],
    x: &[f32],
    k: Coef,
    act: Option<Act>,
    out: &mut Sums,
) {
    #[inline(always)]
    fn elem<const FMA: bool>(g: f32, v: f32, k: Coef, act: Option<Act>) -> (f32, f32, f32) {
        let z = v / k.s + k.b;
        let g = match act {
            Some(act) if !act.passes(z * k.a + k.t) => 0.0,
            _ => g,
        };
        (g, z, g * k.a)
    }
    let (mut sg, mut sgz, mut sd, mut sdx) = ([0f32; 16], [0f32; 16], [0f32; 16], [0f32; 16]);
    let mut co = o.chunks_exact_mut(16);
    let mut cg = dy.chunks_exact(16);
    let mut cx = x.chunks_exact(16);
    for ((o, g), v) in (&mut co).zip(&mut cg).zip(&mut cx) {
        for i in 0..16 {
            let (g, z, dz) = elem::<FMA>(g[i], v[i], k, act);
            sg[i] += g;
            sgz[i] = madd::<FMA>(g, z, sgz[i]);
            o[i] = dz / k.s;
            sd[i] += dz;
            sdx[i] = madd::<FMA>(dz, v[i], sdx[i]);
        }
    }
    let (mut tg, mut tgz, mut td, mut tdx) = (0f32, 0f32, 0f32, 0f32);
    for ((o, &g), &v) in co
        .into_remainder()
        .iter_mut()
        .zip(cg.remainder())
        .zip(cx.remainder())
    {
        let (g, z, dz) = elem::<FMA>(g, v, k, act);
        tg += g;
        tgz = madd::<FMA>(g, z, tgz);
        *o = dz / k.s;
        td += dz;
        tdx = madd::<FMA>(dz, v, tdx);
    }
    let total = |acc: &[f32; 16], tail: f32| acc.iter().sum::<f32>() as f64 + tail as f64;
    *out = [
        total(&sg, tg),
        total(&sgz, tgz),
        total(&sd, td),
        total(&sdx, tdx),
    ];
}

simd_dispatch!(fn bwd_plane = bwd_plane_generic(o: &mut [f32], dy: &[f32], x: &[f32], k: Coef, act: Option<Act>, out: &mut Sums));

/// The coefficients of channel `c` from the packed `[s | b | a | t]`.
fn coef(p: &[f32], c: usize, nc: usize) -> Coef {
    Coef {
        s: p[c],
        b: p[nc + c],
        a: p[2 * nc + c],
        t: p[3 * nc + c],
    }
}

/// `(x [N,C,H,W], [s | b | a | t] (4C)) -> y`.
struct Forward {
    d: Dims,
    act: Option<Act>,
}

impl SliceOp2 for Forward {
    const NAME: &'static str = "channel_div_affine_act_nchw";
    const OPERANDS: [&'static str; 2] = ["input", "coefficients"];

    fn run(&self, x: &[f32], p: &[f32], (sx, _): (&Shape, &Shape)) -> Result<(Vec<f32>, Shape)> {
        let d = self.d;
        if x.len() != d.n * d.c * d.plane || p.len() != 4 * d.c {
            bail!("{}: operand sizes do not match", Self::NAME)
        }
        let mut y = vec![0f32; x.len()];
        if d.plane > 0 {
            let run = |(i, o): (usize, &mut [f32])| {
                let xp = &x[i * d.plane..(i + 1) * d.plane];
                fwd_plane(o, xp, coef(p, i % d.c, d.c), self.act);
            };
            if y.len() < PAR_MIN_ELEMS {
                y.chunks_exact_mut(d.plane).enumerate().for_each(run);
            } else {
                y.par_chunks_exact_mut(d.plane).enumerate().for_each(run);
            }
        }
        Ok((y, sx.clone()))
    }

    fn grads(
        &self,
        x: &Tensor,
        p: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 2]> {
        let backward = Backward {
            d: self.d,
            act: self.act,
        };
        let shapes = [x.shape().clone(), (4 * self.d.c).into()];
        let [dx, dp] = packed_grads((x, grad, p), backward, shapes)?;
        Ok([Some(dx), Some(dp)])
    }
}

/// `(x, dy, [s | b | a | t]) -> [dx | ds | db | da | dt]`, flat.
struct Backward {
    d: Dims,
    act: Option<Act>,
}

impl SliceOp3 for Backward {
    const NAME: &'static str = "channel_div_affine_act_nchw_backward";
    const OPERANDS: [&'static str; 3] = ["input", "output gradient", "coefficients"];

    fn run(&self, x: &[f32], dy: &[f32], p: &[f32], _: &Shape) -> Result<(Vec<f32>, Shape)> {
        let d = self.d;
        if dy.len() != x.len() || x.len() != d.n * d.c * d.plane || p.len() != 4 * d.c {
            bail!(
                "{}: gradient or coefficients do not match the input",
                Self::NAME
            )
        }
        let plane = |i: usize| i * d.plane..(i + 1) * d.plane;
        let mut out = vec![0f32; x.len() + 4 * d.c];
        let (dx, tail) = out.split_at_mut(x.len());
        let run = |(i, o): (usize, &mut [f32])| {
            let mut s = [0f64; 4];
            bwd_plane(
                o,
                &dy[plane(i)],
                &x[plane(i)],
                coef(p, i % d.c, d.c),
                self.act,
                &mut s,
            );
            s
        };
        let plane_sums: Vec<Sums> = if d.plane == 0 {
            vec![[0.0; 4]; d.n * d.c]
        } else if x.len() < PAR_MIN_ELEMS {
            dx.chunks_exact_mut(d.plane).enumerate().map(run).collect()
        } else {
            dx.par_chunks_exact_mut(d.plane)
                .enumerate()
                .map(run)
                .collect()
        };
        for c in 0..d.c {
            // Images summed in order, as the channel ops' backward sums them.
            let [sg, sgz, sd, sdx] = (0..d.n).fold([0f64; 4], |acc, n| {
                let s = plane_sums[n * d.c + c];
                [acc[0] + s[0], acc[1] + s[1], acc[2] + s[2], acc[3] + s[3]]
            });
            let sc = p[c] as f64;
            // d(x / s)/ds = −x / s².
            tail[c] = (-sdx / (sc * sc)) as f32;
            tail[d.c + c] = sd as f32;
            tail[2 * d.c + c] = sgz as f32;
            tail[3 * d.c + c] = sg as f32;
        }
        Ok(flat(out))
    }
}

/// `y = act((x / divisor[c] + shift[c]) · scale[c] + bias[c])` on NCHW f32 `x` — the frozen
/// QAT Conv+BN tail — as one op with autograd to every input: values and gradients equal
/// [`channel_div_nchw`](super::channel_div_nchw), then
/// [`channel_affine_nchw`](super::channel_affine_nchw), then (with `act = Some((min, max))`;
/// ReLU6: `(0, 6)`, ReLU: `(0, +inf)`) [`clamp`](super::clamp). `divisor`, `shift` (optional:
/// zero), `scale`, `bias` are `[C]`. Errors on a non-rank-4 input, `[C]` shape mismatches,
/// `min > max` or NaN bounds, non-f32 / non-CPU tensors.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[[[2f32, 8.0]], [[-3.0, 3.0]]]], &Device::Cpu)?;
/// let s = Tensor::new(&[2f32, 1.0], &Device::Cpu)?;
/// let a = Tensor::new(&[1f32, 2.0], &Device::Cpu)?;
/// let t = Tensor::new(&[0f32, 1.0], &Device::Cpu)?;
/// let y = qat_graph::ops::channel_div_affine_act_nchw(&x, &s, None, &a, &t, Some((0.0, 6.0)))?;
/// assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, [1.0, 4.0, 0.0, 6.0]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn channel_div_affine_act_nchw(
    x: &Tensor,
    divisor: &Tensor,
    shift: Option<&Tensor>,
    scale: &Tensor,
    bias: &Tensor,
    act: Option<(f32, f32)>,
) -> Result<Tensor> {
    const OP: &str = "channel_div_affine_act_nchw";
    let (n, c, h, w) = dims4(x, OP, "input")?;
    for (t, what) in [(divisor, "divisor"), (scale, "scale"), (bias, "bias")]
        .into_iter()
        .chain(shift.map(|b| (b, "shift")))
    {
        if t.dims() != [c] {
            bail!("{OP}: {what} must have shape [{c}], got {:?}", t.dims())
        }
    }
    let act = match act {
        Some((min, max)) if min.is_nan() || max.is_nan() || min > max => {
            bail!("{OP}: need min <= max, got min {min}, max {max}")
        }
        Some((min, max)) => Some(Act { min, max }),
        None => None,
    };
    let x = f32_contiguous(x, OP, "input")?;
    let zeros;
    let shift = match shift {
        Some(b) => b,
        None => {
            zeros = Tensor::zeros(c, x.dtype(), x.device())?;
            &zeros
        }
    };
    let parts = [divisor, shift, scale, bias]
        .iter()
        .map(|t| f32_contiguous(t, OP, "coefficient"))
        .collect::<Result<Vec<_>>>()?;
    let p = Tensor::cat(&parts, 0)?;
    let d = Dims { n, c, plane: h * w };
    x.apply_op2(&p, Op2(Forward { d, act }))
}

/// [`channel_div_affine_act_nchw`] as the three ops it fuses, each as candle broadcasts
/// ([`channel_div_nchw_slow`](super::channel_div_nchw_slow),
/// [`channel_affine_nchw_slow`](super::channel_affine_nchw_slow),
/// [`clamp_slow`](super::clamp_slow)): the reference for tests.
pub fn channel_div_affine_act_nchw_slow(
    x: &Tensor,
    divisor: &Tensor,
    shift: Option<&Tensor>,
    scale: &Tensor,
    bias: &Tensor,
    act: Option<(f32, f32)>,
) -> Result<Tensor> {
    let z = super::channel_div_nchw_slow(x, divisor, shift)?;
    let y = super::channel_affine_nchw_slow(&z, scale, Some(bias))?;
    match act {
        Some((min, max)) => super::clamp_slow(&y, min, max),
        None => Ok(y),
    }
}
