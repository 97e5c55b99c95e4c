//! The lowering of a quantized Conv2d / Linear node (see [`LoweredWeighted`]), in steps, so
//! that the folded bias's integer form can be computed on its own (O(channels)) without
//! quantizing the weight tensor: the QAT graph's eval forward needs it per call
//! (`qat::bias`), and it must be bit-identical to what `convert` computes, so both run the
//! same steps.

use candle_core::Tensor;
use qat_core::QScheme;

use super::lower::{act_q, check_fake_quant, value_q, ActQ, AsymmetricWeights, LowerOptions};
use super::lower::{LoweredWeighted, WeightedKind};
use super::params::{finite, read, to_vec, var};
use crate::error::{GraphError, Result};
use crate::ir::{Act, FusedBn, NodeId, Op};
use crate::qat::{FqModule, QatGraph};

/// What a weighted node is made of.
struct Parts<'a> {
    name: &'a str,
    kind: WeightedKind,
    bn: Option<&'a FusedBn>,
    act: Option<Act>,
    has_bias: bool,
    out_channels: usize,
    weight_fq: &'a FqModule,
}

/// The per-channel weight scales after refitting (see [`AsymmetricWeights::Refit`]).
struct ChannelScales {
    /// The fake-quant's scale and zero point of channel `c` (per-tensor ones replicated).
    scale: Vec<f32>,
    zero_point: Vec<i32>,
    refit_channels: Vec<usize>,
    /// `scale`, doubled on refit channels: the int8 weights' scales.
    weight_scales: Vec<f32>,
}

/// The folded bias of a weighted node in float and in i32, and what it is scaled by.
pub(crate) struct LoweredBias {
    pub bias: Vec<f32>,
    pub bias_i32: Vec<i32>,
    pub weight_scales: Vec<f32>,
    pub input: ActQ,
    pub act: Option<Act>,
}

fn parts<'a>(qat: &'a QatGraph, id: NodeId) -> Result<Parts<'a>> {
    let node = qat.graph().node(id);
    let name = node.name.as_str();
    let (kind, bn, act, has_bias) = match &node.op {
        Op::Conv2d(c) => (WeightedKind::Conv2d(*c), None, None, c.bias),
        Op::ConvAct { conv, act } => (WeightedKind::Conv2d(*conv), None, Some(*act), conv.bias),
        Op::ConvBn { conv, bn, act } => (WeightedKind::Conv2d(*conv), Some(bn), *act, conv.bias),
        Op::Linear(l) => (WeightedKind::Linear(*l), None, None, l.bias),
        Op::LinearAct { linear, act } => {
            (WeightedKind::Linear(*linear), None, Some(*act), linear.bias)
        }
        Op::LinearBn { linear, bn } => (WeightedKind::Linear(*linear), Some(bn), None, linear.bias),
        op => {
            return Err(GraphError::node(
                name,
                format!("{} is not a weighted op", op.type_name()),
            ))
        }
    };
    let out_channels = match kind {
        WeightedKind::Conv2d(c) => c.out_channels,
        WeightedKind::Linear(l) => l.out_features,
    };
    let weight_fq = qat.nodes()[id.0].weight_fq.as_ref().ok_or_else(|| {
        GraphError::node(name, "quantized weighted node without a weight_fake_quant")
    })?;
    check_fake_quant(weight_fq)?;
    Ok(Parts {
        name,
        kind,
        bn,
        act,
        has_bias,
        out_channels,
        weight_fq,
    })
}

/// The BN fold with the running statistics: `sf = gamma / sqrt(running_var + eps)` (the
/// tensor ops of `folded_bn_forward`, so the weight scaled by it is bit-identical to the
/// one the QAT forward quantizes; `None` without BN) and the folded float bias.
fn fold(qat: &QatGraph, p: &Parts) -> Result<(Option<Tensor>, Option<Vec<f32>>)> {
    let b = if p.has_bias {
        Some(read(qat, p.name, "bias")?)
    } else {
        None
    };
    let Some(bn) = p.bn else {
        return Ok((None, b));
    };
    let get = |s: &str| var(qat, &format!("{}.{s}", bn.name));
    let (gamma, beta) = (get("weight")?, get("bias")?);
    let (mean, rvar) = (get("running_mean")?, get("running_var")?);
    for (what, v) in [
        ("BN weight", &gamma),
        ("BN bias", &beta),
        ("BN running_mean", &mean),
        ("BN running_var", &rvar),
    ] {
        finite(&bn.name, what, &to_vec(v.as_tensor())?)?;
    }
    let running_std = (rvar.as_detached_tensor() + bn.cfg.eps)?.sqrt()?;
    let sf = gamma.as_tensor().div(&running_std)?;
    let sf_v = to_vec(&sf)?;
    finite(&bn.name, "gamma / sqrt(running_var + eps)", &sf_v)?;
    let (beta, mean) = (to_vec(beta.as_tensor())?, to_vec(mean.as_tensor())?);
    let bias = (0..p.out_channels)
        .map(|c| {
            let shift = beta[c] - mean[c] * sf_v[c];
            match &b {
                Some(b) => shift + b[c] * sf_v[c],
                None => shift,
            }
        })
        .collect();
    Ok((Some(sf), Some(bias)))
}

fn channel_scales(p: &Parts, opts: &LowerOptions) -> Result<ChannelScales> {
    let (oc, wfq) = (p.out_channels, p.weight_fq);
    let spec = wfq.spec();
    let (scales, zps) = wfq.qparams()?;
    let per_channel = matches!(
        spec.scheme,
        QScheme::PerChannelAffine { .. } | QScheme::PerChannelSymmetric { .. }
    );
    if per_channel && scales.len() != oc {
        return Err(GraphError::node(
            wfq.name(),
            format!("{} scales for {oc} output channels", scales.len()),
        ));
    }
    let pick = |c: usize| if per_channel { c } else { 0 };
    let scale: Vec<f32> = (0..oc).map(|c| scales[pick(c)]).collect();
    let zero_point: Vec<i32> = (0..oc).map(|c| zps[pick(c)]).collect();
    let (wlo, whi) = spec.dtype.range();
    // Channel c's effective integers `q - zp` lie in [wlo - zp, whi - zp]: i8 as they are, or
    // (a nonzero zero point) halved at twice the scale, see `AsymmetricWeights::Refit`.
    let mut refit_channels = Vec::new();
    for (c, &zp) in zero_point.iter().enumerate() {
        if wlo - zp >= -128 && whi - zp <= 127 {
            continue;
        }
        if opts.asymmetric_weights == AsymmetricWeights::Refuse {
            return Err(GraphError::node(
                wfq.name(),
                format!(
                    "weight zero point [{c}] = {zp} ({:?}, range [{wlo}, {whi}]): the weight \
                     integers q - zp do not fit i8 (int8 weights are symmetric, zero point 0)",
                    spec.scheme
                ),
            ));
        }
        refit_channels.push(c);
    }
    let weight_scales: Vec<f32> = scale
        .iter()
        .enumerate()
        .map(|(c, &s)| {
            if refit_channels.binary_search(&c).is_ok() {
                2.0 * s
            } else {
                s
            }
        })
        .collect();
    finite(wfq.name(), "weight scale", &weight_scales)?;
    Ok(ChannelScales {
        scale,
        zero_point,
        refit_channels,
        weight_scales,
    })
}

/// `bias` at scale `input.scale · weight_scales[c]`, round half to even in f64.
fn quantize_bias(
    name: &str,
    bias: &[f32],
    in_scale: f32,
    weight_scales: &[f32],
) -> Result<Vec<i32>> {
    finite(name, "folded bias", bias)?;
    let mut out = Vec::with_capacity(bias.len());
    for (c, (&bv, &ws)) in bias.iter().zip(weight_scales).enumerate() {
        let v = (bv as f64 / (in_scale as f64 * ws as f64)).round_ties_even();
        if !(v >= i32::MIN as f64 && v <= i32::MAX as f64) {
            return Err(GraphError::node(
                name,
                format!("bias [{c}] = {bv} does not fit i32 at scale in·w = {in_scale}·{ws}"),
            ));
        }
        out.push(v as i32);
    }
    Ok(out)
}

/// The integer weights `q - zp` of the fold-scaled weight (halved on refit channels).
fn quantize_weight(p: &Parts, scaled: &[f32], cs: &ChannelScales) -> Vec<i8> {
    let (wlo, whi) = p.weight_fq.spec().dtype.range();
    let per_oc = scaled.len() / p.out_channels;
    scaled
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let c = i / per_oc;
            let (s, zp) = (cs.scale[c], cs.zero_point[c]);
            let e = qat_core::quantize_with_inv(x, qat_core::inv_scale(s), zp, wlo, whi) - zp;
            let k = if cs.refit_channels.binary_search(&c).is_ok() {
                ((e as f32 / 2.0).round_ties_even() as i32).clamp(-128, 127)
            } else {
                e
            };
            k as i8
        })
        .collect()
}

/// Lower a quantized Conv2d / Linear node (see [`LoweredWeighted`]).
pub(super) fn lower_weighted(
    qat: &QatGraph,
    id: NodeId,
    opts: &LowerOptions,
) -> Result<LoweredWeighted> {
    let p = parts(qat, id)?;
    let out_fq = qat.nodes()[id.0].output_fq.as_ref().ok_or_else(|| {
        GraphError::node(p.name, "quantized node without an activation_post_process")
    })?;
    let output = act_q(out_fq)?;
    let input = value_q(qat, qat.graph().node(id).inputs[0])?;
    let w = var(qat, &format!("{}.weight", p.name))?;
    let w = w.as_tensor();
    finite(p.name, "weight", &to_vec(w)?)?;
    let (sf, bias) = fold(qat, &p)?;
    let scaled = match &sf {
        None => w.clone(),
        Some(sf) => {
            let mut wshape = vec![1; w.rank()];
            wshape[0] = p.out_channels;
            w.broadcast_mul(&sf.reshape(wshape.as_slice())?)?
        }
    };
    let scaled = to_vec(&scaled)?;
    finite(p.name, "folded weight", &scaled)?;
    let cs = channel_scales(&p, opts)?;
    let weight = quantize_weight(&p, &scaled, &cs);
    let bias_i32 = match &bias {
        None => None,
        Some(b) => Some(quantize_bias(
            p.name,
            b,
            input.qparams.scale,
            &cs.weight_scales,
        )?),
    };
    Ok(LoweredWeighted {
        kind: p.kind,
        weight,
        weight_scales: cs.weight_scales,
        refit_channels: cs.refit_channels,
        bias,
        bias_i32,
        input,
        output,
        act: p.act,
        clamp: output.clamp_for(p.act),
    })
}

/// The folded bias of weighted node `id` as [`lower_weighted`] computes it (bit-identical:
/// the same steps, default options), without touching the weight tensor. `Ok(None)` for a
/// node with neither a bias nor a BN.
pub(crate) fn lower_bias(qat: &QatGraph, id: NodeId) -> Result<Option<LoweredBias>> {
    let p = parts(qat, id)?;
    let input = value_q(qat, qat.graph().node(id).inputs[0])?;
    let Some(bias) = fold(qat, &p)?.1 else {
        return Ok(None);
    };
    let cs = channel_scales(&p, &LowerOptions::default())?;
    let bias_i32 = quantize_bias(p.name, &bias, input.qparams.scale, &cs.weight_scales)?;
    Ok(Some(LoweredBias {
        bias,
        bias_i32,
        weight_scales: cs.weight_scales,
        input,
        act: p.act,
    }))
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::convert::{lower_node, Lowered};
    use crate::qconfig::{FakeQuantKind, FqSpec, NodeQConfig, ObserverKind};
    use crate::{prepare_qat_module, BnCfg, Conv2dCfg, Graph, GraphModule, LinearCfg, QConfig};
    use qat_core::QDType;

    /// Conv+BN+ReLU6, depthwise Conv+BN, Conv with a bias and no BN, Conv with neither, and a
    /// Linear head with a bias.
    fn graph() -> Graph {
        let mut g = Graph::new();
        let x = g.input("x", [3, 8, 8]).unwrap();
        let a = g
            .conv2d("c0", x, Conv2dCfg::new(3, 8, 3).padding(1).bias(false))
            .unwrap();
        let a = g.batch_norm2d("bn0", a, BnCfg::new(8)).unwrap();
        let a = g.relu6("r0", a).unwrap();
        let b = g
            .conv2d(
                "c1",
                a,
                Conv2dCfg::new(8, 8, 3).padding(1).groups(8).bias(false),
            )
            .unwrap();
        let b = g.batch_norm2d("bn1", b, BnCfg::new(8)).unwrap();
        let c = g.conv2d("c2", b, Conv2dCfg::new(8, 12, 1)).unwrap();
        let d = g
            .conv2d("c3", c, Conv2dCfg::new(12, 12, 1).bias(false))
            .unwrap();
        let p = g.global_avg_pool("pool", d).unwrap();
        let f = g.flatten("flatten", p).unwrap();
        let lin = LinearCfg {
            in_features: 12,
            out_features: 5,
            bias: true,
        };
        g.linear("fc", f, lin).unwrap();
        g
    }

    /// The bias-only lowering against the whole lowering of every weighted node, after a few
    /// observed train-mode forwards: default QAT, PyTorch's x86 preset, and quint8 affine
    /// weights (a nonzero zero point: every channel refit at twice the scale, which the
    /// bias's scale must follow).
    #[test]
    fn lower_bias_equals_the_full_lowering() {
        let affine = QConfig::uniform(NodeQConfig {
            activation: QConfig::default_qat().global().unwrap().activation,
            weight: FqSpec {
                kind: FakeQuantKind::FakeQuantize,
                observer: ObserverKind::MinMax,
                dtype: QDType::quint8(),
                scheme: QScheme::PerTensorAffine,
                eps: qat_core::DEFAULT_EPS,
            },
        });
        let presets = [
            (QConfig::default_qat(), 1, false),
            (QConfig::pytorch_x86(), 2, false),
            (affine, 3, true),
        ];
        for (qc, seed, refits) in presets {
            let m = GraphModule::new(crate::fuse(&graph()).unwrap(), seed, &Device::Cpu).unwrap();
            let q = prepare_qat_module(m, &qc).unwrap();
            for s in 0..3 {
                let x = Tensor::randn(0.5f32, 1.0, (4, 3, 8, 8), &Device::Cpu).unwrap();
                q.forward_t(&(x + s as f64).unwrap(), true).unwrap();
            }
            q.freeze_bn_stats();
            let (mut with_bias, mut without, mut refit) = (0, 0, 0);
            for id in (0..q.graph().len()).map(NodeId) {
                let Ok(Lowered::Weighted(full)) = lower_node(&q, id) else {
                    continue;
                };
                refit += full.refit_channels.len();
                match lower_bias(&q, id).unwrap() {
                    None => {
                        assert!(full.bias.is_none() && full.bias_i32.is_none());
                        without += 1;
                    }
                    Some(b) => {
                        assert_eq!(Some(&b.bias), full.bias.as_ref());
                        assert_eq!(Some(&b.bias_i32), full.bias_i32.as_ref());
                        assert_eq!(b.weight_scales, full.weight_scales);
                        assert_eq!(b.input, full.input);
                        assert_eq!(b.act, full.act);
                        with_bias += 1;
                    }
                }
            }
            assert_eq!((with_bias, without), (4, 1), "{qc:?}");
            assert_eq!(refit > 0, refits, "{qc:?}");
        }
    }
}
