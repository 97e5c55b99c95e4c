//! Per-channel scale (or divide) and shift of NCHW tensors, `y = x·s[c] + b[c]` or
//! `y = x / s[c] + b[c]`, with a one-pass backward.
//!
//! Eval-mode BatchNorm, frozen QAT BatchNorm and the QAT Conv+BN folding (`conv / scale_factor`)
//! are these ops. As candle broadcasts they cost a copy per broadcast operand forward, and their
//! backward reduces the gradient over batch and space with candle's generic strided `sum`
//! (a third of a QAT step). Here the forward is one pass and the backward one pass for `dx`
//! plus two vectorized per-plane sums (`Σ dy`, `Σ dy·x`) for the parameter gradients.

use candle_core::{bail, Result, Shape, Tensor};
use rayon::prelude::*;

use super::common::{dims4, f32_contiguous, simd_dispatch, PAR_MIN_ELEMS};
use super::slice_op::{flat, packed_grads, Op3, SliceOp3};

#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    c: usize,
    plane: usize,
}

/// `y = x·s + b` (or `x / s + b`) over one plane, without FMA so the rounding equals candle's
/// separate multiply / divide and add.
#[inline(always)]
fn fwd_plane_generic<const FMA: bool>(o: &mut [f32], x: &[f32], s: f32, b: f32, divide: bool) {
    if divide {
        for (o, &v) in o.iter_mut().zip(x) {
            *o = v / s + b;
        }
    } else {
        for (o, &v) in o.iter_mut().zip(x) {
            *o = v * s + b;
        }
    }
}

simd_dispatch!(pub(super) fn fwd_plane = fwd_plane_generic(o: &mut [f32], x: &[f32], s: f32, b: f32, divide: bool));

/// `dx = dy·s` (or `dy / s`) over one plane, returning `(Σ dy, Σ dy·x)` from the same pass.
#[inline(always)]
fn bwd_plane_generic<const FMA: bool>(
    o: &mut [f32],
    dy: &[f32],
    x: &[f32],
    s: f32,
    divide: bool,
) -> (f64, f64) {
    let (mut sg, mut sgx) = ([0f32; 16], [0f32; 16]);
    let mut co = o.chunks_exact_mut(16);
    let mut cg = dy.chunks_exact(16);
    let mut cx = x.chunks_exact(16);
    for ((o, g), v) in (&mut co).zip(&mut cg).zip(&mut cx) {
        for i in 0..16 {
            o[i] = if divide { g[i] / s } else { g[i] * s };
            sg[i] += g[i];
            sgx[i] = super::common::madd::<FMA>(g[i], v[i], sgx[i]);
        }
    }
    let (mut tg, mut tgx) = (0f32, 0f32);
    for ((o, &g), &v) in co
        .into_remainder()
        .iter_mut()
        .zip(cg.remainder())
        .zip(cx.remainder())
    {
        *o = if divide { g / s } else { g * s };
        tg += g;
        tgx = super::common::madd::<FMA>(g, v, tgx);
    }
    (
        sg.iter().sum::<f32>() as f64 + tg as f64,
        sgx.iter().sum::<f32>() as f64 + tgx as f64,
    )
}

pub(super) fn bwd_plane(o: &mut [f32], dy: &[f32], x: &[f32], s: f32, divide: bool) -> (f64, f64) {
    let mut r = (0f64, 0f64);
    bwd_plane_into(o, dy, x, s, divide, &mut r);
    r
}

#[inline(always)]
fn bwd_plane_into_generic<const FMA: bool>(
    o: &mut [f32],
    dy: &[f32],
    x: &[f32],
    s: f32,
    divide: bool,
    out: &mut (f64, f64),
) {
    *out = bwd_plane_generic::<FMA>(o, dy, x, s, divide);
}

simd_dispatch!(fn bwd_plane_into = bwd_plane_into_generic(o: &mut [f32], dy: &[f32], x: &[f32], s: f32, divide: bool, out: &mut (f64, f64)));

/// Runs `f(plane_index, plane)` over the planes of `out`, in parallel when big.
fn per_plane(out: &mut [f32], plane: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if plane == 0 {
        return;
    }
    if out.len() < PAR_MIN_ELEMS {
        out.chunks_exact_mut(plane)
            .enumerate()
            .for_each(|(i, o)| f(i, o));
    } else {
        out.par_chunks_exact_mut(plane)
            .enumerate()
            .for_each(|(i, o)| f(i, o));
    }
}

/// `(x [N,C,H,W], s [C], b [C]) -> y`.
struct ChannelAffine {
    d: Dims,
    divide: bool,
}

impl SliceOp3 for ChannelAffine {
    const NAME: &'static str = "channel_affine_nchw";
    const OPERANDS: [&'static str; 3] = ["input", "scale", "shift"];

    fn run(&self, x: &[f32], s: &[f32], b: &[f32], shape: &Shape) -> Result<(Vec<f32>, Shape)> {
        let d = self.d;
        let mut y = vec![0f32; x.len()];
        per_plane(&mut y, d.plane, |i, o| {
            let c = i % d.c;
            fwd_plane(
                o,
                &x[i * d.plane..(i + 1) * d.plane],
                s[c],
                b[c],
                self.divide,
            );
        });
        Ok((y, shape.clone()))
    }

    fn grads(
        &self,
        x: &Tensor,
        s: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let backward = ChannelAffineBackward {
            d: self.d,
            divide: self.divide,
        };
        let c = Shape::from(self.d.c);
        let shapes = [x.shape().clone(), c.clone(), c];
        let [dx, ds, db] = packed_grads((x, grad, s), backward, shapes)?;
        Ok([Some(dx), Some(ds), Some(db)])
    }
}

/// `(x, dy, s) -> [dx (N·C·H·W) | ds (C) | db (C)]`, flat.
struct ChannelAffineBackward {
    d: Dims,
    divide: bool,
}

impl SliceOp3 for ChannelAffineBackward {
    const NAME: &'static str = "channel_affine_nchw_backward";
    const OPERANDS: [&'static str; 3] = ["input", "output gradient", "scale"];

    fn run(&self, x: &[f32], dy: &[f32], s: &[f32], _: &Shape) -> Result<(Vec<f32>, Shape)> {
        let d = self.d;
        if dy.len() != x.len() || s.len() != d.c {
            bail!("{}: gradient or scale does not match the input", Self::NAME)
        }
        let plane = |i: usize| i * d.plane..(i + 1) * d.plane;
        let mut out = vec![0f32; x.len() + 2 * d.c];
        let (dx, tail) = out.split_at_mut(x.len());
        // One pass per (image, channel) plane writes dx and returns that plane's sums.
        let run = |(i, o): (usize, &mut [f32])| {
            bwd_plane(o, &dy[plane(i)], &x[plane(i)], s[i % d.c], self.divide)
        };
        let plane_sums: Vec<(f64, f64)> = if d.plane == 0 {
            vec![(0.0, 0.0); d.n * d.c]
        } else if x.len() < PAR_MIN_ELEMS {
            dx.chunks_exact_mut(d.plane).enumerate().map(run).collect()
        } else {
            dx.par_chunks_exact_mut(d.plane)
                .enumerate()
                .map(run)
                .collect()
        };
        let sums: Vec<(f64, f64)> = (0..d.c)
            .map(|c| {
                (0..d.n).fold((0f64, 0f64), |(a, b), n| {
                    let p = plane_sums[n * d.c + c];
                    (a + p.0, b + p.1)
                })
            })
            .collect();
        for (c, &(sg, sgx)) in sums.iter().enumerate() {
            let sc = s[c] as f64;
            // d(x / s)/ds = −x / s².
            tail[c] = if self.divide {
                (-sgx / (sc * sc)) as f32
            } else {
                sgx as f32
            };
            tail[d.c + c] = sg as f32;
        }
        Ok(flat(out))
    }
}

fn check(x: &Tensor, s: &Tensor, b: Option<&Tensor>, op: &str) -> Result<Dims> {
    let (n, c, h, w) = dims4(x, op, "input")?;
    if s.dims() != [c] {
        bail!("{op}: scale must have shape [{c}], got {:?}", s.dims())
    }
    if let Some(b) = b {
        if b.dims() != [c] {
            bail!("{op}: shift must have shape [{c}], got {:?}", b.dims())
        }
    }
    Ok(Dims { n, c, plane: h * w })
}

fn apply(
    x: &Tensor,
    s: &Tensor,
    b: Option<&Tensor>,
    divide: bool,
    op: &'static str,
) -> Result<Tensor> {
    let d = check(x, s, b, op)?;
    let x = f32_contiguous(x, op, "input")?;
    let s = f32_contiguous(s, op, "scale")?;
    let b = match b {
        Some(b) => f32_contiguous(b, op, "shift")?,
        None => Tensor::zeros(d.c, x.dtype(), x.device())?,
    };
    x.apply_op3(&s, &b, Op3(ChannelAffine { d, divide }))
}

/// `y[n, c, h, w] = x[n, c, h, w] · scale[c] + shift[c]` on NCHW f32 tensors (shift optional),
/// with autograd to all inputs. The rounding equals candle's `broadcast_mul` then
/// `broadcast_add`. Errors on a non-rank-4 input, `[C]` shape mismatches, non-f32 / non-CPU
/// tensors.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::ones((1, 2, 2, 2), candle_core::DType::F32, &Device::Cpu)?;
/// let s = Tensor::new(&[2f32, 3.0], &Device::Cpu)?;
/// let y = qat_graph::ops::channel_affine_nchw(&x, &s, Some(&s))?;
/// assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, [4.0, 4.0, 4.0, 4.0, 6.0, 6.0, 6.0, 6.0]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn channel_affine_nchw(x: &Tensor, scale: &Tensor, shift: Option<&Tensor>) -> Result<Tensor> {
    apply(x, scale, shift, false, "channel_affine_nchw")
}

/// `y[n, c, h, w] = x[n, c, h, w] / divisor[c] + shift[c]` (shift optional), with autograd;
/// rounding as candle's `broadcast_div` then `broadcast_add`. Errors as
/// [`channel_affine_nchw`].
pub fn channel_div_nchw(x: &Tensor, divisor: &Tensor, shift: Option<&Tensor>) -> Result<Tensor> {
    apply(x, divisor, shift, true, "channel_div_nchw")
}

fn slow(x: &Tensor, s: &Tensor, b: Option<&Tensor>, divide: bool, op: &str) -> Result<Tensor> {
    let d = check(x, s, b, op)?;
    let s = s.reshape((1, d.c, 1, 1))?;
    let y = if divide {
        x.broadcast_div(&s)?
    } else {
        x.broadcast_mul(&s)?
    };
    match b {
        Some(b) => y.broadcast_add(&b.reshape((1, d.c, 1, 1))?),
        None => Ok(y),
    }
}

/// [`channel_affine_nchw`] as candle broadcasts (the reference for tests).
pub fn channel_affine_nchw_slow(
    x: &Tensor,
    scale: &Tensor,
    shift: Option<&Tensor>,
) -> Result<Tensor> {
    slow(x, scale, shift, false, "channel_affine_nchw_slow")
}

/// [`channel_div_nchw`] as candle broadcasts (the reference for tests).
pub fn channel_div_nchw_slow(
    x: &Tensor,
    divisor: &Tensor,
    shift: Option<&Tensor>,
) -> Result<Tensor> {
    slow(x, divisor, shift, true, "channel_div_nchw_slow")
}
