//! QAT Conv+BN / Linear+BN: the BatchNorm folded into the fake-quantized weight the way
//! PyTorch's `torch.ao.nn.intrinsic.qat` modules do it (`conv_fused.py`,
//! `_forward_approximate`):
//!
//! ```text
//! running_std  = sqrt(running_var + eps)
//! scale_factor = gamma / running_std
//! y0   = conv(x, weight_fake_quant(weight * scale_factor[c]), zero bias)
//! y1   = y0 / scale_factor[c] (+ bias)
//! out  = batch_norm(y1)   // batch stats + running-stat update in train mode,
//!                         // running stats when frozen or in eval
//! ```
//!
//! Dividing by the scale factor undoes the folding in float, so in train mode the real BN
//! normalises with batch statistics while the convolution already sees the weights as they
//! will be quantized after folding.

use candle_core::{Tensor, Var};
use qat_fakequant::RangeFeed;

use crate::error::{GraphError, Result};
use crate::ir::{Act, BnCfg, Conv2dCfg};
use crate::ops;
use crate::prims::{self, OpsPath};
use crate::qat::fq::FqModule;

/// The variables of one BatchNorm (shared with the graph's `VarMap`).
#[derive(Debug, Clone)]
pub struct BnVars {
    pub name: String,
    pub cfg: BnCfg,
    pub weight: Var,
    pub bias: Var,
    pub running_mean: Var,
    pub running_var: Var,
    pub num_batches_tracked: Var,
}

/// Which statistics the folded BatchNorm normalises with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BnStats {
    /// Batch statistics; running statistics updated (train mode, BN live).
    Batch,
    /// Running statistics, nothing updated (eval mode, or `freeze_bn_stats`).
    Running,
}

/// The folded forward (see the module docs). `op(x, w)` is the convolution or linear map
/// without bias; `bias` is the conv / linear bias, added after un-scaling.
pub fn folded_bn_forward(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    bn: &BnVars,
    stats: BnStats,
    weight_fq: Option<&FqModule>,
    op: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    folded_bn_act_forward(
        x,
        weight,
        bias,
        bn,
        stats,
        weight_fq,
        None,
        OpsPath::default(),
        op,
    )
}

/// [`folded_bn_forward`] then the optional activation (ReLU / ReLU6, on `path`), which the
/// fast path computes inside the batch-statistics BatchNorm op (no activation tensor, no extra
/// autograd node; the same values and gradients).
#[allow(clippy::too_many_arguments)]
pub fn folded_bn_act_forward(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    bn: &BnVars,
    stats: BnStats,
    weight_fq: Option<&FqModule>,
    act: Option<Act>,
    path: OpsPath,
    op: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (scale_factor, scaled) = folded_weight(weight, bn, weight_fq)?;
    let y = op(x, &scaled)?;
    batch_norm_prescaled(bn, &y, Some((&scale_factor, bias)), stats, (act, path))
}

/// [`folded_bn_act_forward`] of the convolution `conv`. With batch statistics on the fast CPU
/// path a 1×1 or depthwise convolution and the BatchNorm (+ activation) run as one op
/// (`prims::conv_bn_act_train_prescaled`): the same values and gradients, without the
/// convolution's output as an autograd tensor.
///
/// With `out_fq` (the node's activation fake-quant), batch statistics and the fast CPU path,
/// that op (or, after another convolution, the BatchNorm op) also observes its output and
/// fake-quantizes it in place: the second value is then `true` and the output is the
/// fake-quantized one (the same values, gradients and observer state as the module's own
/// `forward` after the op); otherwise it is `false` and the module is left to the caller.
#[allow(clippy::too_many_arguments)]
pub fn folded_conv_bn_act_forward(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    bn: &BnVars,
    stats: BnStats,
    weight_fq: Option<&FqModule>,
    act: Option<Act>,
    path: OpsPath,
    conv: &Conv2dCfg,
    out_fq: Option<&RangeFeed>,
) -> Result<(Tensor, bool)> {
    let (scale_factor, scaled) = folded_weight(weight, bn, weight_fq)?;
    let fast = stats == BnStats::Batch && path == OpsPath::Fast;
    let fast = fast && x.device().is_cpu() && x.rank() == 4;
    let pre = (&scale_factor, bias);
    let (gamma, beta) = (bn.weight.as_tensor(), bn.bias.as_tensor());
    let eps = bn.cfg.eps;
    if let (Some(feed), true) = (out_fq, fast) {
        let bounds = act.map(act_bounds);
        let pointwise = conv.kernel == [1, 1] && conv.groups == 1;
        let pointwise = pointwise && conv.padding == 0 && conv.stride == 1;
        let o = if pointwise {
            let (x, w) = (x, &scaled);
            ops::conv1x1_bn_act_fq_train_prescaled(
                x, w, pre.0, pre.1, gamma, beta, eps, bounds, feed,
            )?
        } else if conv.is_depthwise() {
            let geom = (conv.stride, conv.padding, conv.dilation);
            ops::depthwise_bn_act_fq_train_prescaled(
                x, &scaled, pre.0, pre.1, gamma, beta, eps, geom, bounds, feed,
            )?
        } else {
            let y = prims::conv2d(x, &scaled, None, conv, path)?;
            let per_channel = y.elem_count() / y.dim(1)?;
            if per_channel < 2 {
                return Err(one_value_per_channel(bn, &y));
            }
            ops::batch_norm_act_fq_train_prescaled(
                &y, pre.0, pre.1, gamma, beta, eps, bounds, feed,
            )?
        };
        update_running_stats(bn, o.y.elem_count() / o.y.dim(1)?, &o.mean, &o.var)?;
        return Ok((o.y, true));
    }
    if stats == BnStats::Batch {
        let fused = prims::conv_bn_act_train_prescaled(
            x,
            &scaled,
            pre,
            (gamma, beta),
            eps,
            conv,
            act,
            path,
        )?;
        if let Some((y, mean, var)) = fused {
            update_running_stats(bn, y.elem_count() / y.dim(1)?, &mean, &var)?;
            return Ok((y, false));
        }
    }
    let y = prims::conv2d(x, &scaled, None, conv, path)?;
    let y = batch_norm_prescaled(bn, &y, Some(pre), stats, (act, path))?;
    Ok((y, false))
}

/// The clamp bounds of an activation.
fn act_bounds(a: Act) -> (f32, f32) {
    match a {
        Act::ReLU => (0.0, f32::INFINITY),
        Act::ReLU6 => (0.0, 6.0),
    }
}

fn one_value_per_channel(bn: &BnVars, x: &Tensor) -> GraphError {
    GraphError::node(
        &bn.name,
        format!(
            "train-mode BatchNorm needs more than 1 value per channel, got input {:?}",
            x.dims()
        ),
    )
}

/// The BN scale factor `γ / √(running_var + ε)` and the weight scaled by it per output channel,
/// through the weight fake-quant when there is one.
fn folded_weight(
    weight: &Tensor,
    bn: &BnVars,
    weight_fq: Option<&FqModule>,
) -> Result<(Tensor, Tensor)> {
    let running_std = (bn.running_var.as_detached_tensor() + bn.cfg.eps)?.sqrt()?;
    let scale_factor = bn.weight.as_tensor().div(&running_std)?;
    let scaled = prims::weight_channel_scale(weight, &scale_factor)?;
    let scaled = match weight_fq {
        Some(fq) => fq.forward(&scaled)?,
        None => scaled,
    };
    Ok((scale_factor, scaled))
}

/// BatchNorm over axis 1 with batch or running statistics (PyTorch's train / eval rules:
/// running variance updated with the unbiased batch variance, `num_batches_tracked` + 1).
pub fn batch_norm(bn: &BnVars, x: &Tensor, stats: BnStats) -> Result<Tensor> {
    batch_norm_prescaled(bn, x, None, stats, (None, OpsPath::default()))
}

/// [`batch_norm`] of `x / divisor (+ shift)` when `pre` is `(divisor, shift)` (the folded
/// conv's un-scaling; one fused op with batch statistics on the CPU), then `act` on its path
/// (inside that op when the path is the default one).
fn batch_norm_prescaled(
    bn: &BnVars,
    x: &Tensor,
    pre: Option<(&Tensor, Option<&Tensor>)>,
    stats: BnStats,
    (act, path): (Option<Act>, OpsPath),
) -> Result<Tensor> {
    let eps = bn.cfg.eps;
    if stats == BnStats::Running {
        let rstd = (bn.running_var.as_detached_tensor() + eps)?.sqrt()?;
        let scale = bn.weight.as_tensor().div(&rstd)?;
        let shift = (bn.bias.as_tensor() - (bn.running_mean.as_detached_tensor() * &scale)?)?;
        if let Some((d, b)) = pre.filter(|_| fused_frozen_tail(x, act, path)) {
            // Un-scaling, affine and activation as one op: the same values and gradients
            // without two intermediate autograd tensors.
            let bounds = act.map(act_bounds);
            return Ok(crate::ops::channel_div_affine_act_nchw(
                x, d, b, &scale, &shift, bounds,
            )?);
        }
        let x = &match pre {
            Some((d, b)) => prims::channel_div(x, d, b)?,
            None => x.clone(),
        };
        let y = prims::channel_affine(x, &scale, &shift)?;
        return Ok(prims::apply_act(y, act, path)?);
    }
    let per_channel = x.elem_count() / x.dim(1)?;
    if per_channel < 2 {
        return Err(one_value_per_channel(bn, x));
    }
    let (gamma, beta) = (bn.weight.as_tensor(), bn.bias.as_tensor());
    // The BatchNorm always runs on the default path; the activation joins it only there.
    let (y, mean, var) = if path == OpsPath::default() {
        prims::batch_norm_act_train_prescaled(x, pre, (gamma, beta), eps, act, path)?
    } else {
        let (y, mean, var) =
            prims::batch_norm_train_prescaled(x, pre, gamma, beta, eps, OpsPath::default())?;
        (prims::apply_act(y, act, path)?, mean, var)
    };
    update_running_stats(bn, per_channel, &mean, &var)?;
    Ok(y)
}

/// PyTorch's running-statistics update after a train-mode BatchNorm whose batch statistics
/// `mean` / biased `var` were taken over `per_channel` values per channel (running variance
/// from the unbiased batch variance, `num_batches_tracked` + 1).
fn update_running_stats(
    bn: &BnVars,
    per_channel: usize,
    mean: &Tensor,
    var: &Tensor,
) -> Result<()> {
    let m = bn.cfg.momentum;
    let unbias = per_channel as f64 / (per_channel - 1) as f64;
    let rm = ((bn.running_mean.as_detached_tensor() * (1.0 - m))? + (mean.detach() * m)?)?;
    let rv = ((bn.running_var.as_detached_tensor() * (1.0 - m))? + (var.detach() * (m * unbias))?)?;
    bn.running_mean.set(&rm)?;
    bn.running_var.set(&rv)?;
    let count = bn.num_batches_tracked.as_tensor().to_scalar::<i64>()?;
    let dev = bn.num_batches_tracked.device().clone();
    bn.num_batches_tracked.set(&Tensor::new(count + 1, &dev)?)?;
    Ok(())
}

/// Whether the frozen tail (un-scaling, affine, activation) of `x` runs as the one fused CPU
/// op: rank-4 CPU tensors, and the activation (if any) on the fast path, whose gradient rule
/// the fused op shares.
fn fused_frozen_tail(x: &Tensor, act: Option<Act>, path: OpsPath) -> bool {
    x.device().is_cpu() && x.rank() == 4 && (act.is_none() || path == OpsPath::Fast)
}
