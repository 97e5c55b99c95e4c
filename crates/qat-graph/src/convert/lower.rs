//! Per-node lowering: the integer form of each node of a [`QatGraph`], computed from the
//! fake-quant modules' **current** qparams (nothing is re-observed) and the eval-mode
//! (running-statistics) BatchNorm fold.
//!
//! This is what [`convert`](crate::convert()) hands to the runtime's builder, and what an
//! integer-exact simulation of the QAT graph needs: the i8 weights, per-channel weight
//! scales, the folded bias (f32 and i32), the u8 qparams of every input and of the output, and
//! the clamp the requantization applies.
//!
//! # The u8 domain
//!
//! The runtime holds every quantized activation as u8. An activation fake-quant with an
//! unsigned dtype maps as is; a signed one (`qint8`, `[-128, 127]` or narrower) is shifted by
//! +128 (zero point and range alike), which represents the same real values. The fake-quant's
//! range (`[0, 127]` under `reduce_range`) becomes [`ActQ::range`], and every op that
//! produces a value clamps to it ([`Activation::Clamp`] when it is narrower than `[0, 255]`),
//! so the int8 model saturates exactly where the fake-quant did.
//!
//! # BN folding (eval / frozen statistics)
//!
//! ```text
//! sf[c]    = gamma[c] / sqrt(running_var[c] + eps)          (f32, the QAT forward's ops)
//! w_q      = quantize(w · sf[c], weight_fake_quant qparams)  (integers of the fake-quant weight)
//! bias[c]  = (beta[c] - running_mean[c] · sf[c]) + b[c] · sf[c]   (b = 0 without a conv bias)
//! ```

use candle_core::DType;
use qat_core::QParams;
use qat_runtime::Activation;

use crate::error::{GraphError, Result};
use crate::ir::{Act, Conv2dCfg, LinearCfg, NodeId, Op};
use crate::qat::{FqModule, QatGraph};

/// What to do with a weight fake-quant whose zero point is not 0 on some channel, so that
/// its integers `q - zp` need 9 bits (the runtime's weights are i8, zero point 0).
///
/// PyTorch's fused per-channel "symmetric" weight fake-quant does this to every channel whose
/// weights share one sign: it quantizes `[0, max]` (or `[min, 0]`) affinely, zero point
/// −128 (or 127) — 209 channels of the golden MobileNetV2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AsymmetricWeights {
    /// Re-express such a channel symmetrically at twice its scale:
    /// `k = clamp(round_half_even((q - zp) / 2), -128, 127)`. Its weights then differ from
    /// the fake-quant's by at most half a (fake-quant) step; listed in
    /// [`LoweredWeighted::refit_channels`].
    #[default]
    Refit,
    /// `Err` naming the weight fake-quant.
    Refuse,
}

/// Options of the lowering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LowerOptions {
    pub asymmetric_weights: AsymmetricWeights,
}

/// A quantized activation value as the runtime holds it (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActQ {
    /// Scale and zero point in the u8 domain (a signed dtype's zero point shifted by +128).
    pub qparams: QParams,
    /// The fake-quant's `[quant_min, quant_max]` in the u8 domain.
    pub range: (i32, i32),
}

/// The weighted op of a [`LoweredWeighted`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightedKind {
    /// Weight OIHW `[out][in / groups][kh][kw]`.
    Conv2d(Conv2dCfg),
    /// Weight `[out][in]`.
    Linear(LinearCfg),
}

/// The integer form of a quantized Conv2d / Linear node (fused with BN and / or an
/// activation or not).
///
/// The int8 model computes, per output channel `c` and output position,
/// `acc = Σ (x_u8 - input.zero_point) · weight[c, ..] + bias_i32[c]` and then
/// `requantize(acc, requant_multiplier(input.scale, weight_scales[c], output.scale),
/// output.zero_point, clamp.0, clamp.1)` ([`qat_core::requantize`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LoweredWeighted {
    pub kind: WeightedKind,
    /// The integer values `q - zp` of the weight fake-quant's output (BN folded in first):
    /// exactly the weights the QAT forward convolves with, divided by their scale (halved on
    /// `refit_channels`).
    pub weight: Vec<i8>,
    /// One per output channel (a per-tensor weight fake-quant's scale replicated; twice the
    /// fake-quant's scale on a refit channel).
    pub weight_scales: Vec<f32>,
    /// Output channels whose weight fake-quant has a zero point that puts `q - zp` outside
    /// i8 (see [`AsymmetricWeights::Refit`]): their weights are `round_half_even((q - zp) / 2)`
    /// at twice the scale, so they differ from the fake-quant weight by half a step on odd
    /// integers. Empty for symmetric weights.
    pub refit_channels: Vec<usize>,
    /// The folded float bias (`None`: no conv bias and no BN).
    pub bias: Option<Vec<f32>>,
    /// `bias` quantized at scale `input.scale · weight_scales[c]`, round half to even in
    /// f64 (the runtime builder's rule for an f32 bias).
    pub bias_i32: Option<Vec<i32>>,
    /// The qparams of the value the node reads.
    pub input: ActQ,
    /// The node's `activation_post_process`.
    pub output: ActQ,
    /// The fused ReLU / ReLU6, if any.
    pub act: Option<Act>,
    /// The requantization bounds in the u8 domain: the activation's bounds intersected with
    /// `output.range`.
    pub clamp: (i32, i32),
}

/// The integer form of one node.
#[derive(Debug, Clone, PartialEq)]
pub enum Lowered {
    /// A quantized graph input: f32 quantized with `output` on entry.
    Input { output: ActQ },
    /// Conv2d / Linear (+BN, +ReLU / ReLU6).
    Weighted(Box<LoweredWeighted>),
    /// Quantized `a + b` (+ReLU / ReLU6), requantized to `output` and clamped to `clamp`.
    Add {
        a: ActQ,
        b: ActQ,
        output: ActQ,
        act: Option<Act>,
        clamp: (i32, i32),
    },
    /// Global average pool; the output keeps the input's qparams (the QAT graph puts no
    /// fake-quant after it).
    GlobalAvgPool { input: ActQ },
    /// A ReLU / ReLU6 standing alone after a quantized value: a clamp of that value to
    /// `clamp` (u8), qparams unchanged.
    Clamp {
        input: ActQ,
        act: Act,
        clamp: (i32, i32),
    },
    /// Flatten / Dropout / Identity on a quantized value: the value itself.
    PassThrough { input: ActQ },
    /// A node the QConfig left in float. `quant_stub`: the qparams of its value where it
    /// enters quantized consumers (its `activation_post_process`), if any.
    Float { quant_stub: Option<ActQ> },
}

impl ActQ {
    /// The runtime activation for an output with these qparams and a fused `act`: the plain
    /// variant when the range is the full `[0, 255]`, else an explicit [`Activation::Clamp`].
    pub fn activation(&self, act: Option<Act>) -> Activation {
        let base = runtime_act(act);
        if self.range == (0, 255) {
            base
        } else {
            let (lo, hi) = self.clamp_for(act);
            Activation::Clamp {
                qmin: lo as u8,
                qmax: hi as u8,
            }
        }
    }

    /// The u8 bounds of an output with these qparams after `act`, within `range`.
    pub fn clamp_for(&self, act: Option<Act>) -> (i32, i32) {
        let (lo, hi) = runtime_act(act).bounds(self.qparams);
        let (lo, hi) = (lo.max(self.range.0), hi.min(self.range.1));
        (lo, hi.max(lo))
    }
}

fn runtime_act(act: Option<Act>) -> Activation {
    match act {
        None => Activation::None,
        Some(Act::ReLU) => Activation::Relu,
        Some(Act::ReLU6) => Activation::Relu6,
    }
}

/// `Err` unless every observer of `fq` has seen data (finite, non-empty `min_val` /
/// `max_val`) and its qparams are usable.
pub fn check_fake_quant(fq: &FqModule) -> Result<()> {
    let err = |m: String| GraphError::node(fq.name(), m);
    for (k, t) in fq.state()? {
        if !(k.ends_with(".min_val") || k.ends_with(".max_val")) {
            continue;
        }
        let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        if v.is_empty() || v.iter().any(|x| !x.is_finite()) {
            return Err(err(format!(
                "the observer never saw data ({} = {v:?}): train or calibrate before convert",
                k.rsplit('.').next().unwrap_or(&k)
            )));
        }
    }
    let (scales, zps) = fq.qparams()?;
    if scales.is_empty() || scales.len() != zps.len() {
        return Err(err(format!(
            "{} scales and {} zero points",
            scales.len(),
            zps.len()
        )));
    }
    if let Some((i, s)) = scales
        .iter()
        .enumerate()
        .find(|(_, s)| !(s.is_finite() && **s > 0.0))
    {
        return Err(err(format!("scale [{i}] = {s} must be finite and > 0")));
    }
    let (lo, hi) = fq.spec().dtype.range();
    if let Some((i, z)) = zps
        .iter()
        .enumerate()
        .find(|(_, z)| !(lo..=hi).contains(*z))
    {
        return Err(err(format!(
            "zero point [{i}] = {z} is outside the dtype range [{lo}, {hi}]"
        )));
    }
    Ok(())
}

/// The [`ActQ`] of an activation fake-quant module (per-tensor only).
pub fn act_q(fq: &FqModule) -> Result<ActQ> {
    check_fake_quant(fq)?;
    let spec = fq.spec();
    if spec.scheme.is_per_channel() {
        return Err(GraphError::node(
            fq.name(),
            "per-channel activation quantization has no int8 form (the runtime holds one scale per value)",
        ));
    }
    let (s, z) = fq.qparams()?;
    let shift = if spec.dtype.is_unsigned() { 0 } else { 128 };
    let (lo, hi) = spec.dtype.range();
    if lo + shift < 0 || hi + shift > 255 {
        return Err(GraphError::node(
            fq.name(),
            format!("activation range [{lo}, {hi}] does not fit u8"),
        ));
    }
    Ok(ActQ {
        qparams: QParams {
            scale: s[0],
            zero_point: z[0] + shift,
        },
        range: (lo + shift, hi + shift),
    })
}

/// Ops that pass a quantized value through unchanged in qparams (no fake-quant after them).
fn passes_through(op: &Op) -> bool {
    matches!(
        op,
        Op::ReLU
            | Op::ReLU6
            | Op::GlobalAvgPool
            | Op::AvgPool2d(_)
            | Op::MaxPool2d(_)
            | Op::Flatten
            | Op::Dropout { .. }
            | Op::Identity
    )
}

/// The qparams of the value node `id` hands to its quantized consumers: its
/// `activation_post_process` (output fake-quant or quant stub), or, for ops that keep their
/// input's qparams (ReLU, pools, Flatten, Dropout, Identity), their input's.
pub fn value_q(qat: &QatGraph, id: NodeId) -> Result<ActQ> {
    let g = qat.graph();
    let mut cur = id;
    loop {
        let node = g.node(cur);
        let q = &qat.nodes()[cur.0];
        if let Some(fq) = &q.output_fq {
            return act_q(fq);
        }
        if q.config.is_some() && passes_through(&node.op) {
            cur = node.inputs[0];
            continue;
        }
        return Err(GraphError::node(
            &node.name,
            format!(
                "{} produces no quantized value (no activation_post_process)",
                node.op.type_name()
            ),
        ));
    }
}

/// The integer form of node `id` (see [`Lowered`]). `Err`, naming the node (or its
/// fake-quant module), for an op with no int8 form (MaxPool, AvgPool2d, Concat, BatchNorm or
/// Hardswish left quantized, ...), an observer that never saw data, non-finite weights or BN
/// statistics, bad scales, or (with [`AsymmetricWeights::Refuse`]) weight integers that do
/// not fit i8.
pub fn lower_node(qat: &QatGraph, id: NodeId) -> Result<Lowered> {
    lower_node_with(qat, id, &LowerOptions::default())
}

/// [`lower_node`] with explicit options.
pub fn lower_node_with(qat: &QatGraph, id: NodeId, opts: &LowerOptions) -> Result<Lowered> {
    let g = qat.graph();
    if id.0 >= g.len() {
        return Err(GraphError::Graph(format!(
            "node #{} does not exist (graph has {} nodes)",
            id.0,
            g.len()
        )));
    }
    let node = g.node(id);
    let q = &qat.nodes()[id.0];
    if q.config.is_none() {
        let quant_stub = match &q.output_fq {
            Some(fq) => Some(act_q(fq)?),
            None => None,
        };
        return Ok(Lowered::Float { quant_stub });
    }
    let unsupported = || {
        Err(GraphError::node(
            &node.name,
            format!(
                "{} has no int8 form in the runtime (leave it in float with a QConfig override)",
                node.op.type_name()
            ),
        ))
    };
    Ok(match &node.op {
        Op::Input { .. } => {
            let fq = q.output_fq.as_ref().ok_or_else(|| {
                GraphError::node(
                    &node.name,
                    "quantized input without an activation_post_process",
                )
            })?;
            Lowered::Input { output: act_q(fq)? }
        }
        Op::Conv2d(_)
        | Op::ConvAct { .. }
        | Op::ConvBn { .. }
        | Op::Linear(_)
        | Op::LinearAct { .. }
        | Op::LinearBn { .. } => {
            Lowered::Weighted(Box::new(super::weighted::lower_weighted(qat, id, opts)?))
        }
        Op::Add | Op::AddAct { .. } => {
            let act = match &node.op {
                Op::AddAct { act } => Some(*act),
                _ => None,
            };
            let fq = q.output_fq.as_ref().ok_or_else(|| {
                GraphError::node(
                    &node.name,
                    "quantized add without an activation_post_process",
                )
            })?;
            let output = act_q(fq)?;
            Lowered::Add {
                a: value_q(qat, node.inputs[0])?,
                b: value_q(qat, node.inputs[1])?,
                output,
                act,
                clamp: output.clamp_for(act),
            }
        }
        Op::GlobalAvgPool => Lowered::GlobalAvgPool {
            input: value_q(qat, node.inputs[0])?,
        },
        Op::ReLU | Op::ReLU6 => {
            let act = if node.op == Op::ReLU {
                Act::ReLU
            } else {
                Act::ReLU6
            };
            let input = value_q(qat, node.inputs[0])?;
            Lowered::Clamp {
                input,
                act,
                clamp: input.clamp_for(Some(act)),
            }
        }
        Op::Flatten | Op::Dropout { .. } | Op::Identity => Lowered::PassThrough {
            input: value_q(qat, node.inputs[0])?,
        },
        Op::BatchNorm2d(_)
        | Op::BatchNorm1d(_)
        | Op::BnAct { .. }
        | Op::Hardswish
        | Op::Concat { .. }
        | Op::AvgPool2d(_)
        | Op::MaxPool2d(_) => return unsupported(),
    })
}
