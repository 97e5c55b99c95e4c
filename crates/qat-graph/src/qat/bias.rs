//! The int8 model's bias rounding, simulated in the QAT graph's eval forward.
//!
//! `convert` folds BN into each conv / linear and rounds the folded bias to i32 at scale
//! `input scale · weight scale[c]`; the fake-quant forward keeps it in float (so does
//! PyTorch's). The rounding moves channel `c`'s output by up to half of its requantization
//! multiplier, in output steps, so on a layer with a large multiplier (a depthwise one) about
//! 1% of the outputs land on the other side of a rounding boundary: the largest per-layer
//! difference left between the fake-quant forward and the int8 model. Eval adds exactly that
//! shift, per channel; training keeps PyTorch's forward (the shift is a constant there, and
//! with live BN there is no folded bias yet).

use candle_core::Tensor;

use super::QatGraph;
use crate::convert::weighted::lower_bias;
use crate::error::Result;
use crate::ir::{Act, NodeId};

/// `y` (node `id`'s eval output, its fused activation applied) shifted by the int8 model's
/// bias rounding, channel by channel, the activation re-applied. `y` unchanged where there
/// is nothing to simulate: fake quantization off on the weight or the input, no bias, or a
/// node `convert` would refuse (its observers never saw data, asymmetric weights).
pub(crate) fn with_int8_bias(qat: &QatGraph, id: NodeId, y: Tensor) -> Result<Tensor> {
    let g = qat.graph();
    let q = &qat.nodes()[id.0];
    let input_fq = qat.value_fq(g.node(id).inputs[0]);
    let weight_on = match &q.weight_fq {
        Some(fq) => fq.fake_quant_enabled()?,
        None => false,
    };
    let input_on = match input_fq {
        Some(fq) => fq.fake_quant_enabled()?,
        None => false,
    };
    if !(weight_on && input_on) {
        return Ok(y);
    }
    let Ok(Some(l)) = lower_bias(qat, id) else {
        return Ok(y);
    };
    let in_scale = l.input.qparams.scale as f64;
    let shift: Vec<f32> = l
        .bias
        .iter()
        .zip(&l.bias_i32)
        .zip(&l.weight_scales)
        .map(|((&b, &bq), &ws)| (bq as f64 * in_scale * ws as f64) as f32 - b)
        .collect();
    let mut dims = vec![1; y.rank()];
    dims[1] = shift.len();
    let shift = Tensor::from_vec(shift, dims, y.device())?;
    let y = y.broadcast_add(&shift)?;
    Ok(match l.act {
        None => y,
        Some(Act::ReLU) => y.relu()?,
        Some(Act::ReLU6) => y.clamp(0f32, 6f32)?,
    })
}
