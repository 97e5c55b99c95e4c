//! The tensor primitives the executor uses, on two interchangeable paths: candle's own ops
//! ([`OpsPath::Candle`], the reference) and this crate's fast CPU training ops
//! ([`OpsPath::Fast`], `crate::ops`). Tests run both and compare.

use candle_core::{Result, Tensor};

use crate::ir::{Act, Conv2dCfg};

/// Which implementation of the hot primitives the executor uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpsPath {
    /// Plain candle ops (slow depthwise conv, slow backward; the reference).
    Candle,
    /// `crate::ops` custom ops on the CPU where one exists for the case (depthwise conv, 1×1
    /// conv as a GEMM, bias add, ReLU / ReLU6, train-mode BatchNorm2d fused with its ReLU /
    /// ReLU6, per-channel affine), candle otherwise.
    #[default]
    Fast,
}

/// A 2-D convolution with optional bias.
pub(crate) fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    c: &Conv2dCfg,
    path: OpsPath,
) -> Result<Tensor> {
    let fast = path == OpsPath::Fast && x.device().is_cpu();
    if fast && c.is_depthwise() {
        return crate::ops::depthwise_conv2d_dilated(x, w, b, c.stride, c.padding, c.dilation);
    }
    if fast && c.kernel == [1, 1] && c.groups == 1 && c.padding == 0 {
        return crate::ops::conv1x1(x, w, b, c.stride);
    }
    let y = x.conv2d(w, c.padding, c.stride, c.dilation, c.groups)?;
    match b {
        Some(b) if fast => crate::ops::bias_add_nchw(&y, b),
        Some(b) => y.broadcast_add(&b.reshape((1, c.out_channels, 1, 1))?),
        None => Ok(y),
    }
}

/// `max(x, 0)`.
pub(crate) fn relu(x: &Tensor, path: OpsPath) -> Result<Tensor> {
    if path == OpsPath::Fast && x.device().is_cpu() {
        // Gradient 0 at x = 0 like PyTorch (candle's relu gives 1 there).
        return crate::ops::relu(x);
    }
    x.relu()
}

/// `min(max(x, 0), 6)`.
pub(crate) fn relu6(x: &Tensor, path: OpsPath) -> Result<Tensor> {
    if path == OpsPath::Fast && x.device().is_cpu() {
        return crate::ops::relu6(x);
    }
    x.clamp(0f32, 6f32)
}

/// `x * relu6(x + 3) / 6`.
pub(crate) fn hardswish(x: &Tensor) -> Result<Tensor> {
    let gate = ((x + 3.0)?.clamp(0f32, 6f32)? / 6.0)?;
    x * gate
}

/// Per-channel `x * scale + shift` where channels are axis 1 of a rank-2 or rank-4 tensor, on
/// the default path.
pub(crate) fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    channel_affine_on(x, scale, shift, OpsPath::default())
}

/// [`channel_affine`] on an explicit path (fast: one op whose backward is one pass, instead of
/// two broadcasts whose backward reduces with candle's strided sums).
pub(crate) fn channel_affine_on(
    x: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    path: OpsPath,
) -> Result<Tensor> {
    if path == OpsPath::Fast && x.device().is_cpu() {
        return with_nchw(x, |x4| {
            crate::ops::channel_affine_nchw(x4, scale, Some(shift))
        });
    }
    let shape = channel_shape(x)?;
    x.broadcast_mul(&scale.reshape(shape.as_slice())?)?
        .broadcast_add(&shift.reshape(shape.as_slice())?)
}

/// Per-channel `x / divisor (+ shift)` (channels on axis 1, rank 2 or 4) on the fast path: the
/// QAT Conv+BN un-scaling `conv / scale_factor + bias`.
pub(crate) fn channel_div(x: &Tensor, divisor: &Tensor, shift: Option<&Tensor>) -> Result<Tensor> {
    if x.device().is_cpu() {
        return with_nchw(x, |x4| crate::ops::channel_div_nchw(x4, divisor, shift));
    }
    let shape = channel_shape(x)?;
    let y = x.broadcast_div(&divisor.reshape(shape.as_slice())?)?;
    match shift {
        Some(b) => y.broadcast_add(&b.reshape(shape.as_slice())?),
        None => Ok(y),
    }
}

/// Per-output-channel `w * scale[o]` of a conv `[O, I, KH, KW]` or linear `[O, I]` weight (the
/// QAT BN folding), as one fast op on the CPU.
pub(crate) fn weight_channel_scale(w: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let o = w.dim(0)?;
    if w.device().is_cpu() && w.rank() >= 2 {
        // [O, rest] is NCHW with N = 1, C = O, H = rest, W = 1: the same per-channel op.
        let w4 = w.reshape((1, o, w.elem_count() / o.max(1), 1))?;
        return crate::ops::channel_affine_nchw(&w4, scale, None)?.reshape(w.shape());
    }
    let mut shape = vec![1; w.rank()];
    shape[0] = o;
    w.broadcast_mul(&scale.reshape(shape.as_slice())?)
}

/// Runs a rank-4 op on a rank-4 tensor, or on a rank-2 `[N, C]` one viewed as `[N, C, 1, 1]`.
fn with_nchw(x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    match *x.dims() {
        [_, _, _, _] => f(x),
        [n, c] => f(&x.reshape((n, c, 1, 1))?)?.reshape((n, c)),
        ref d => candle_core::bail!(
            "per-channel op on a rank-{} tensor (expected 2 or 4)",
            d.len()
        ),
    }
}

/// BatchNorm with batch statistics: returns `(y, batch_mean, biased_batch_var)` with the
/// statistics as `[C]` tensors. Channels are axis 1 of a rank-2 or rank-4 input.
pub(crate) fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    path: OpsPath,
) -> Result<(Tensor, Tensor, Tensor)> {
    if path == OpsPath::Fast && x.device().is_cpu() && x.rank() == 4 {
        let o = crate::ops::batch_norm_train(x, gamma, beta, eps)?;
        return Ok((o.y, o.mean, o.var));
    }
    let c = x.dim(1)?;
    let reduce: Vec<usize> = (0..x.rank()).filter(|&d| d != 1).collect();
    let mean = x.mean_keepdim(reduce.as_slice())?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(reduce.as_slice())?;
    let inv_std = (var.clone() + eps)?.sqrt()?.recip()?;
    let shape = channel_shape(x)?;
    let scale = inv_std.broadcast_mul(&gamma.reshape(shape.as_slice())?)?;
    let y = xc
        .broadcast_mul(&scale)?
        .broadcast_add(&beta.reshape(shape.as_slice())?)?;
    Ok((y, mean.reshape(c)?, var.reshape(c)?))
}

/// [`batch_norm_train`] then the optional activation; on the fast path one fused op
/// ([`crate::ops::batch_norm_act_train`]) with the same values and gradients.
pub(crate) fn batch_norm_act_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    act: Option<Act>,
    path: OpsPath,
) -> Result<(Tensor, Tensor, Tensor)> {
    let bounds = match act {
        None => return batch_norm_train(x, gamma, beta, eps, path),
        Some(Act::ReLU) => (0f32, f32::INFINITY),
        Some(Act::ReLU6) => (0f32, 6f32),
    };
    if path == OpsPath::Fast && x.device().is_cpu() && x.rank() == 4 {
        let o = crate::ops::batch_norm_act_train(x, gamma, beta, eps, bounds.0, bounds.1)?;
        return Ok((o.y, o.mean, o.var));
    }
    let (y, mean, var) = batch_norm_train(x, gamma, beta, eps, path)?;
    let y = match act {
        Some(Act::ReLU) => relu(&y, path)?,
        _ => relu6(&y, path)?,
    };
    Ok((y, mean, var))
}

/// A convolution without bias then train-mode BatchNorm and the optional activation as one op
/// when the convolution is 1×1 (groups 1, stride 1, no padding: [`crate::ops::conv1x1_bn_act_train`])
/// or depthwise ([`crate::ops::depthwise_bn_act_train`]): the convolution's output is no autograd
/// node. Returns `(y, batch_mean, biased_batch_var)`, or `None` off the fast CPU path or for
/// other convolutions (the caller composes).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_bn_act_train(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    c: &Conv2dCfg,
    act: Option<Act>,
    path: OpsPath,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    if path != OpsPath::Fast || !x.device().is_cpu() || x.rank() != 4 {
        return Ok(None);
    }
    let bounds = act.map(|a| match a {
        Act::ReLU => (0f32, f32::INFINITY),
        Act::ReLU6 => (0f32, 6f32),
    });
    let pointwise = c.kernel == [1, 1] && c.groups == 1 && c.padding == 0 && c.stride == 1;
    let o = if pointwise {
        match bounds {
            None => crate::ops::conv1x1_bn_train(x, w, gamma, beta, eps)?,
            Some((lo, hi)) => crate::ops::conv1x1_bn_act_train(x, w, gamma, beta, eps, lo, hi)?,
        }
    } else if c.is_depthwise() {
        let geom = (c.stride, c.padding, c.dilation);
        crate::ops::depthwise_bn_act_train(x, w, gamma, beta, eps, geom, bounds)?
    } else {
        return Ok(None);
    };
    Ok(Some((o.y, o.mean, o.var)))
}

/// [`conv_bn_act_train`] with the BatchNorm on the un-scaled convolution output
/// `conv / divisor (+ shift)` (the live QAT Conv+BN, one op: [`crate::ops::conv1x1_bn_act_train_prescaled`]
/// or [`crate::ops::depthwise_bn_act_train_prescaled`]). Returns `(y, batch_mean, biased_batch_var)`,
/// or `None` off the fast CPU path or for other convolutions (the caller composes).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_bn_act_train_prescaled(
    x: &Tensor,
    w: &Tensor,
    (divisor, shift): (&Tensor, Option<&Tensor>),
    (gamma, beta): (&Tensor, &Tensor),
    eps: f64,
    c: &Conv2dCfg,
    act: Option<Act>,
    path: OpsPath,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    if path != OpsPath::Fast || !x.device().is_cpu() || x.rank() != 4 {
        return Ok(None);
    }
    let bounds = act.map(|a| match a {
        Act::ReLU => (0f32, f32::INFINITY),
        Act::ReLU6 => (0f32, 6f32),
    });
    let pointwise = c.kernel == [1, 1] && c.groups == 1 && c.padding == 0 && c.stride == 1;
    let o = if pointwise {
        crate::ops::conv1x1_bn_act_train_prescaled(x, w, divisor, shift, gamma, beta, eps, bounds)?
    } else if c.is_depthwise() {
        let geom = (c.stride, c.padding, c.dilation);
        crate::ops::depthwise_bn_act_train_prescaled(
            x, w, divisor, shift, gamma, beta, eps, geom, bounds,
        )?
    } else {
        return Ok(None);
    };
    Ok(Some((o.y, o.mean, o.var)))
}

/// [`batch_norm_train`] of `x / divisor (+ shift)` when `pre` is given; on the fast path one
/// op ([`crate::ops::batch_norm_train_prescaled`]) that never stores the divided tensor.
pub(crate) fn batch_norm_train_prescaled(
    x: &Tensor,
    pre: Option<(&Tensor, Option<&Tensor>)>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    path: OpsPath,
) -> Result<(Tensor, Tensor, Tensor)> {
    let Some((divisor, shift)) = pre else {
        return batch_norm_train(x, gamma, beta, eps, path);
    };
    if path == OpsPath::Fast && x.device().is_cpu() && x.rank() == 4 {
        let o = crate::ops::batch_norm_train_prescaled(x, divisor, shift, gamma, beta, eps)?;
        return Ok((o.y, o.mean, o.var));
    }
    batch_norm_train(&channel_div(x, divisor, shift)?, gamma, beta, eps, path)
}

/// [`batch_norm_train_prescaled`] then the optional activation; on the fast path one op
/// ([`crate::ops::batch_norm_act_train_prescaled`]) with the same values and gradients.
pub(crate) fn batch_norm_act_train_prescaled(
    x: &Tensor,
    pre: Option<(&Tensor, Option<&Tensor>)>,
    (gamma, beta): (&Tensor, &Tensor),
    eps: f64,
    act: Option<Act>,
    path: OpsPath,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (Some(a), Some((divisor, shift))) = (act, pre) else {
        let (y, mean, var) = batch_norm_train_prescaled(x, pre, gamma, beta, eps, path)?;
        return Ok((apply_act(y, act, path)?, mean, var));
    };
    if path == OpsPath::Fast && x.device().is_cpu() && x.rank() == 4 {
        let (lo, hi) = match a {
            Act::ReLU => (0f32, f32::INFINITY),
            Act::ReLU6 => (0f32, 6f32),
        };
        let o = crate::ops::batch_norm_act_train_prescaled(
            x, divisor, shift, gamma, beta, eps, lo, hi,
        )?;
        return Ok((o.y, o.mean, o.var));
    }
    let (y, mean, var) = batch_norm_train_prescaled(x, pre, gamma, beta, eps, path)?;
    Ok((apply_act(y, act, path)?, mean, var))
}

/// `x`, its ReLU or its ReLU6.
pub(crate) fn apply_act(x: Tensor, act: Option<Act>, path: OpsPath) -> Result<Tensor> {
    match act {
        Some(Act::ReLU) => relu(&x, path),
        Some(Act::ReLU6) => relu6(&x, path),
        None => Ok(x),
    }
}

fn channel_shape(x: &Tensor) -> Result<Vec<usize>> {
    let c = x.dim(1)?;
    Ok(match x.rank() {
        2 => vec![1, c],
        4 => vec![1, c, 1, 1],
        r => candle_core::bail!("per-channel op on a rank-{r} tensor (expected 2 or 4)"),
    })
}
