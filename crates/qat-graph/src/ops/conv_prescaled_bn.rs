//! The live QAT Conv+BN(+ReLU / ReLU6) as one autograd op: a 1×1 or depthwise convolution by
//! the (folded, fake-quantized) weight, then train-mode BatchNorm of its un-scaled output
//! `u / s[c] + b[c]` ([`batch_norm_act_train_prescaled`](super::batch_norm_act_train_prescaled)).
//!
//! As two ops, the convolution's output `u` is an autograd node: candle's backward gives its
//! gradient a zero-filled tensor and adds the BatchNorm's input gradient into it before the
//! convolution's backward reads it. Here `u` stays inside the op (kept by the forward for the
//! backward) and the BatchNorm backward writes straight into the buffer the convolution's
//! backward reads — what [`super::conv_bn`] does for the float model. The kernels are those of
//! the two ops, so values and gradients equal theirs bit for bit.

use std::sync::{Arc, Mutex};

use candle_core::{bail, Result, Shape, Tensor};
use qat_fakequant::{FusedMovingAvgObsFakeQuantize, RangeFeed};

use super::batch_norm::{check_dims, Act, BatchNormTrainOutput};
use super::common::{dims4, f32_contiguous, lock_state, recycle, scratch};
use super::conv_bn::{conv_grads, pointwise, Conv};
use super::depthwise::Geom as DwGeom;
use super::out_fq::observe_and_apply;
use super::prescaled_bn::{backward_core, forward_core, Stats};
use super::slice_op::{flat, Op3, SliceOp3};

/// What the forward keeps for the backward.
#[derive(Default)]
struct Saved {
    /// The convolution's output, NCHW.
    u: Vec<f32>,
    stats: Stats,
    /// `[γ | s | β | b]`.
    params: Vec<f32>,
}

impl Drop for Saved {
    fn drop(&mut self) {
        recycle(std::mem::take(&mut self.u));
    }
}

/// `(x, w, [γ | s | β | b]) -> y`, keeping `u`, the statistics and the parameters in `saved`.
struct Forward {
    conv: Conv,
    /// Output dims `[N, O, Ho, Wo]`.
    out: (usize, usize, usize, usize),
    eps: f64,
    act: Option<(Act, f32, f32)>,
    /// The output fake-quant applied to `y` in place.
    fq: Option<RangeFeed>,
    saved: Arc<Mutex<Saved>>,
}

impl SliceOp3 for Forward {
    const NAME: &'static str = "conv_bn_act_train_prescaled";
    const OPERANDS: [&'static str; 3] = ["input", "weight", "BatchNorm parameters"];

    fn run(&self, x: &[f32], w: &[f32], p: &[f32], _: &Shape) -> Result<(Vec<f32>, Shape)> {
        let d = self.conv.bn();
        if x.len() != self.conv.x_len() || w.len() != self.conv.w_len() || p.len() != 4 * d.c {
            bail!("{}: operand sizes do not match", Self::NAME)
        }
        let u = self.conv.forward(x, w)?;
        let (gs, bb) = p.split_at(2 * d.c);
        let observe = self.fq.is_some();
        let (mut y, mut stats, range) = forward_core(&u, gs, bb, d, self.eps, self.act, observe);
        if let Some(feed) = &self.fq {
            match observe_and_apply(feed, &mut y, range) {
                Ok(gate) => stats.fq = gate,
                Err(e) => {
                    recycle(u);
                    return Err(e);
                }
            }
        }
        *lock_state(&self.saved, Self::NAME)? = Saved {
            u,
            stats,
            params: p.to_vec(),
        };
        Ok((y, Shape::from(self.out)))
    }

    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        _p: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let backward = Backward {
            conv: self.conv.clone(),
            act: self.act.map(|a| a.0),
            saved: self.saved.clone(),
        };
        conv_grads((x, w, grad), backward, 4 * self.conv.bn().c)
    }
}

/// `(x, w, dy) -> [dx | dw | dγ | ds | dβ | db]`, flat.
struct Backward {
    conv: Conv,
    act: Option<Act>,
    saved: Arc<Mutex<Saved>>,
}

impl SliceOp3 for Backward {
    const NAME: &'static str = "conv_bn_act_train_prescaled_backward";
    const OPERANDS: [&'static str; 3] = ["input", "weight", "output gradient"];

    fn run(&self, x: &[f32], w: &[f32], dy: &[f32], _: &Shape) -> Result<(Vec<f32>, Shape)> {
        let d = self.conv.bn();
        let (nx, nw, nu) = (self.conv.x_len(), self.conv.w_len(), d.n * d.c * d.plane);
        let saved = lock_state(&self.saved, Self::NAME)?;
        if x.len() != nx
            || w.len() != nw
            || saved.u.len() != nu
            || dy.len() != nu
            || saved.params.len() != 4 * d.c
            || saved.stats.mean.len() != d.c
        {
            bail!(
                "{}: saved state or gradient do not match the input",
                Self::NAME
            )
        }
        // `backward_core` writes every element of `du`.
        let mut du = scratch(nu);
        let mut out = vec![0f32; nx + nw + 4 * d.c];
        let (dx, rest) = out.split_at_mut(nx);
        let (dw, dp) = rest.split_at_mut(nw);
        backward_core(
            &saved.u,
            dy,
            &saved.params,
            &saved.stats,
            d,
            self.act,
            &mut du,
            dp,
        );
        self.conv.backward(x, w, &du, dx, dw)?;
        recycle(du);
        Ok(flat(out))
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    conv: Conv,
    x: &Tensor,
    w: &Tensor,
    (divisor, shift): (&Tensor, Option<&Tensor>),
    (gamma, beta): (&Tensor, &Tensor),
    eps: f64,
    (act, fq): (Option<(f32, f32)>, Option<&RangeFeed>),
    op: &str,
) -> Result<BatchNormTrainOutput> {
    if eps.is_nan() || eps < 0.0 {
        bail!("{op}: eps must be >= 0, got {eps}")
    }
    let act = match act {
        Some((min, max)) => Some((Act::new(min, max, op)?, min, max)),
        None => None,
    };
    let bn = conv.bn();
    let out = match &conv {
        Conv::Pointwise { .. } => {
            let (_, _, h, wd) = dims4(x, op, "input")?;
            (bn.n, bn.c, h, wd)
        }
        Conv::Depthwise(g) => g.out_dims(),
    };
    // The BatchNorm checks (shapes of γ / β, more than one value per channel) on the
    // convolution's output shape.
    let d = check_dims(out, gamma, beta, op)?;
    if divisor.dims() != [d.c] || shift.is_some_and(|b| b.dims() != [d.c]) {
        bail!("{op}: divisor and shift must have shape [{}]", d.c)
    }
    let x = f32_contiguous(x, op, "input")?;
    let w = f32_contiguous(w, op, "weight")?;
    let zeros;
    let shift = match shift {
        Some(b) => b,
        None => {
            zeros = Tensor::zeros(d.c, x.dtype(), x.device())?;
            &zeros
        }
    };
    let parts = [gamma, divisor, beta, shift]
        .iter()
        .map(|t| f32_contiguous(t, op, "BatchNorm parameter"))
        .collect::<Result<Vec<_>>>()?;
    let p = Tensor::cat(&parts, 0)?;
    let saved = Arc::new(Mutex::new(Saved::default()));
    let y = x.apply_op3(
        &w,
        &p,
        Op3(Forward {
            conv,
            out,
            eps,
            act,
            fq: fq.cloned(),
            saved: saved.clone(),
        }),
    )?;
    let st = lock_state(&saved, op)?;
    BatchNormTrainOutput::from_stats(y, &st.stats.mean, &st.stats.var, d)
}

/// 1×1 convolution (groups 1, stride 1, no padding, no bias) of NCHW `x` `[N, C, H, W]` by
/// `w` `[O, C, 1, 1]`, then train-mode BatchNorm2d of `conv / divisor[o] + shift[o]` and, with
/// `act = Some((min, max))` (ReLU6: `(0, 6)`), `clamp(·, min, max)`: the live QAT Conv+BN(+act)
/// as one op. Values, statistics and gradients (to `x`, `w`, `divisor`, `shift`, `gamma`,
/// `beta`) equal [`conv1x1`](super::conv1x1) then
/// [`batch_norm_act_train_prescaled`](super::batch_norm_act_train_prescaled) (or
/// [`batch_norm_train_prescaled`](super::batch_norm_train_prescaled)) bit for bit. Errors as
/// those do.
#[allow(clippy::too_many_arguments)]
pub fn conv1x1_bn_act_train_prescaled(
    x: &Tensor,
    w: &Tensor,
    divisor: &Tensor,
    shift: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    act: Option<(f32, f32)>,
) -> Result<BatchNormTrainOutput> {
    const OP: &str = "conv1x1_bn_act_train_prescaled";
    let conv = pointwise(x, w, OP)?;
    run(
        conv,
        x,
        w,
        (divisor, shift),
        (gamma, beta),
        eps,
        (act, None),
        OP,
    )
}

/// [`conv1x1_bn_act_train_prescaled`] with the output's activation fake-quant in the same op,
/// as [`batch_norm_act_fq_train_prescaled`](super::batch_norm_act_fq_train_prescaled) adds it
/// to the BatchNorm: values, gradients and the observer's state equal the op followed by the
/// module's `forward` bit for bit ([`conv_bn_act_fq_train_prescaled_slow`]).
#[allow(clippy::too_many_arguments)]
pub fn conv1x1_bn_act_fq_train_prescaled(
    x: &Tensor,
    w: &Tensor,
    divisor: &Tensor,
    shift: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    act: Option<(f32, f32)>,
    fq: &RangeFeed,
) -> Result<BatchNormTrainOutput> {
    const OP: &str = "conv1x1_bn_act_fq_train_prescaled";
    let conv = pointwise(x, w, OP)?;
    let epilogue = (act, Some(fq));
    run(
        conv,
        x,
        w,
        (divisor, shift),
        (gamma, beta),
        eps,
        epilogue,
        OP,
    )
}

/// [`conv1x1_bn_act_train_prescaled`] with a depthwise convolution (`groups = C`, weight
/// `[C, 1, KH, KW]`, `(stride, padding, dilation)` as in
/// [`depthwise_conv2d_dilated`](super::depthwise_conv2d_dilated)) in place of the 1×1 one.
#[allow(clippy::too_many_arguments)]
pub fn depthwise_bn_act_train_prescaled(
    x: &Tensor,
    w: &Tensor,
    divisor: &Tensor,
    shift: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    (stride, padding, dilation): (usize, usize, usize),
    act: Option<(f32, f32)>,
) -> Result<BatchNormTrainOutput> {
    const OP: &str = "depthwise_bn_act_train_prescaled";
    let g = DwGeom::new(x.dims(), w.dims(), stride, padding, dilation)?;
    run(
        Conv::Depthwise(g),
        x,
        w,
        (divisor, shift),
        (gamma, beta),
        eps,
        (act, None),
        OP,
    )
}

/// [`depthwise_bn_act_train_prescaled`] with the output's activation fake-quant in the same
/// op, as [`conv1x1_bn_act_fq_train_prescaled`].
#[allow(clippy::too_many_arguments)]
pub fn depthwise_bn_act_fq_train_prescaled(
    x: &Tensor,
    w: &Tensor,
    divisor: &Tensor,
    shift: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    (stride, padding, dilation): (usize, usize, usize),
    act: Option<(f32, f32)>,
    fq: &RangeFeed,
) -> Result<BatchNormTrainOutput> {
    const OP: &str = "depthwise_bn_act_fq_train_prescaled";
    let g = DwGeom::new(x.dims(), w.dims(), stride, padding, dilation)?;
    let (conv, epilogue) = (Conv::Depthwise(g), (act, Some(fq)));
    run(
        conv,
        x,
        w,
        (divisor, shift),
        (gamma, beta),
        eps,
        epilogue,
        OP,
    )
}

/// [`conv1x1_bn_act_train_prescaled`] (`geom = None`) or [`depthwise_bn_act_train_prescaled`]
/// (`geom = Some((stride, padding, dilation))`) as candle ops:
/// [`conv1x1_slow`](super::conv1x1_slow) or
/// [`depthwise_conv2d_slow`](super::depthwise_conv2d_slow), then
/// [`batch_norm_train_prescaled_slow`](super::batch_norm_train_prescaled_slow) or
/// [`batch_norm_act_train_prescaled_slow`](super::batch_norm_act_train_prescaled_slow): the
/// reference for tests.
#[allow(clippy::too_many_arguments)]
pub fn conv_bn_act_train_prescaled_slow(
    x: &Tensor,
    w: &Tensor,
    geom: Option<(usize, usize, usize)>,
    divisor: &Tensor,
    shift: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    act: Option<(f32, f32)>,
) -> Result<BatchNormTrainOutput> {
    let u = match geom {
        None => super::conv1x1_slow(x, w, None, 1)?,
        Some((s, p, d)) => super::depthwise_conv2d_slow(x, w, None, s, p, d)?,
    };
    match act {
        None => super::batch_norm_train_prescaled_slow(&u, divisor, shift, gamma, beta, eps),
        Some((min, max)) => super::batch_norm_act_train_prescaled_slow(
            &u, divisor, shift, gamma, beta, eps, min, max,
        ),
    }
}

/// [`conv1x1_bn_act_fq_train_prescaled`] (`geom = None`) or
/// [`depthwise_bn_act_fq_train_prescaled`] as candle ops and the module it fuses (the
/// reference for tests): [`conv_bn_act_train_prescaled_slow`], then `fq.forward`.
#[allow(clippy::too_many_arguments)]
pub fn conv_bn_act_fq_train_prescaled_slow(
    x: &Tensor,
    w: &Tensor,
    geom: Option<(usize, usize, usize)>,
    divisor: &Tensor,
    shift: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    act: Option<(f32, f32)>,
    fq: &FusedMovingAvgObsFakeQuantize,
) -> Result<BatchNormTrainOutput> {
    let o = conv_bn_act_train_prescaled_slow(x, w, geom, divisor, shift, gamma, beta, eps, act)?;
    Ok(BatchNormTrainOutput {
        y: fq.forward(&o.y)?,
        ..o
    })
}
