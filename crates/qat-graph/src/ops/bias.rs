//! Per-channel bias add on NCHW tensors with a one-pass backward.
//!
//! `x.broadcast_add(b.reshape((1, C, 1, 1)))` backprops through candle's generic strided
//! reductions; here the bias gradient is one vectorized sum per (image, channel) plane.

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::common::{dims4, f32_contiguous, slice_f32, sum, PAR_MIN_ELEMS};
use super::slice_op::{Op2, SliceOp2};

/// `(x [N,C,H,W], b [C]) -> x + b[c]`.
struct BiasAdd {
    c: usize,
}

impl SliceOp2 for BiasAdd {
    const NAME: &'static str = "bias_add_nchw";
    const OPERANDS: [&'static str; 2] = ["input", "bias"];

    fn run(&self, x: &[f32], b: &[f32], (sx, _): (&Shape, &Shape)) -> Result<(Vec<f32>, Shape)> {
        let plane = x.len() / (sx.dims()[0] * self.c).max(1);
        let mut out = x.to_vec();
        if plane > 0 {
            let add = |(i, o): (usize, &mut [f32])| {
                let bv = b[i % self.c];
                o.iter_mut().for_each(|v| *v += bv);
            };
            if out.len() < PAR_MIN_ELEMS {
                out.chunks_exact_mut(plane).enumerate().for_each(add);
            } else {
                out.par_chunks_exact_mut(plane).enumerate().for_each(add);
            }
        }
        Ok((out, sx.clone()))
    }

    fn grads(
        &self,
        _x: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 2]> {
        let grad = grad.contiguous()?;
        let db = grad.apply_op1_no_bwd(&ChannelSum)?;
        Ok([Some(grad), Some(db)])
    }
}

/// `[N,C,H,W] -> [C]`: the sum over batch and space of each channel.
pub(crate) struct ChannelSum;

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "channel_sum_nchw"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(s, l, self.name(), "input")?;
        let (n, c, h, w) = match *l.dims() {
            [n, c, h, w] => (n, c, h, w),
            ref d => bail!("{}: input must have rank 4, got {d:?}", self.name()),
        };
        let plane = h * w;
        let sums: Vec<f32> = if plane == 0 {
            vec![0.0; c]
        } else {
            let planes: Vec<f32> = x.chunks_exact(plane).map(sum).collect();
            (0..c)
                .map(|ci| (0..n).map(|ni| planes[ni * c + ci]).sum())
                .collect()
        };
        Ok((CpuStorage::F32(sums), Shape::from(c)))
    }
}

/// Adds `b[c]` to every element of channel `c` of the NCHW tensor `x`, with autograd (the bias
/// gradient is the per-channel sum of the output gradient). `b` must be `[C]`, both f32.
pub fn bias_add_nchw(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "bias_add_nchw";
    let (_, c, _, _) = dims4(x, OP, "input")?;
    if b.dims() != [c] {
        bail!("{OP}: bias must have shape [{c}], got {:?}", b.dims())
    }
    let x = f32_contiguous(x, OP, "input")?;
    let b = f32_contiguous(b, OP, "bias")?;
    x.apply_op2(&b, Op2(BiasAdd { c }))
}

/// [`bias_add_nchw`] as a candle broadcast (the reference for tests and benches).
pub fn bias_add_nchw_slow(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (_, c, _, _) = dims4(x, "bias_add_nchw_slow", "input")?;
    x.broadcast_add(&b.reshape((1, c, 1, 1))?)
}
