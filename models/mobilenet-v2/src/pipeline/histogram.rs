//! Weight and activation histograms with the quantization range each fake-quant chose, for a
//! few representative layers (first, middle, last). Stored in `metrics.json`; the plots are
//! drawn from there.
//!
//! Weights are shown in quantization steps of their own output channel (the weight divided by
//! its per-channel scale, after folding BatchNorm as the QAT forward does), so every channel
//! shares one axis and the range is the dtype's `[qmin, qmax]`. Activations are the float
//! values (fake quantization switched off while tracing) with the real range
//! `[(qmin − zp)·s, (qmax − zp)·s]`.

use candle_core::{DType, Tensor};
use qat_graph::{Op, QatGraph};
use serde::{Deserialize, Serialize};

use super::error::{PipelineError, Result};

const BINS: usize = 80;

/// A histogram of one tensor with its quantization range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangeHistogram {
    /// The node.
    pub layer: String,
    /// `weight` or `activation`.
    pub kind: String,
    /// Which model's qparams (`PTQ`, `QAT`).
    pub stage: String,
    /// Axis unit (`steps` for weights, `value` for activations).
    pub unit: String,
    /// Bins are uniform over `[lo, hi]`.
    pub lo: f32,
    pub hi: f32,
    pub counts: Vec<u64>,
    /// The representable range `[low, high]`.
    pub range: [f32; 2],
    /// Share of values outside `range` (clipped by quantization).
    pub clipped: f64,
}

/// Bin `values` over a span covering them and `range`.
pub fn histogram(
    layer: &str,
    kind: &str,
    stage: &str,
    unit: &str,
    values: &[f32],
    range: [f32; 2],
) -> Result<RangeHistogram> {
    if values.iter().any(|v| !v.is_finite()) || values.is_empty() {
        return Err(PipelineError::Invalid(format!(
            "{layer}: {kind} histogram needs finite values ({} given)",
            values.len()
        )));
    }
    let (mut lo, mut hi) = (range[0], range[1]);
    for &v in values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    // Leave a margin so the range markers never sit on the frame.
    let pad = (hi - lo).max(1e-6) * 0.04;
    let (lo, hi) = (lo - pad, hi + pad);
    let mut counts = vec![0u64; BINS];
    let w = (hi - lo) / BINS as f32;
    let mut outside = 0usize;
    for &v in values {
        let b = (((v - lo) / w) as usize).min(BINS - 1);
        counts[b] += 1;
        if v < range[0] || v > range[1] {
            outside += 1;
        }
    }
    Ok(RangeHistogram {
        layer: layer.into(),
        kind: kind.into(),
        stage: stage.into(),
        unit: unit.into(),
        lo,
        hi,
        counts,
        range,
        clipped: outside as f64 / values.len() as f64,
    })
}

fn pick3<T: Clone>(v: &[T]) -> Vec<T> {
    match v.len() {
        0..=3 => v.to_vec(),
        n => vec![v[0].clone(), v[n / 2].clone(), v[n - 1].clone()],
    }
}

fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// Weight histograms (in steps) of the first, middle and last quantized weighted layers.
pub fn weight_histograms(qat: &QatGraph, stage: &str) -> Result<Vec<RangeHistogram>> {
    let g = qat.graph();
    let vars = qat.module().state_dict();
    let weighted: Vec<usize> = (0..g.len())
        .filter(|&i| qat.nodes()[i].weight_fq.is_some())
        .collect();
    let mut out = Vec::new();
    for i in pick3(&weighted) {
        let node = &g.nodes()[i];
        let fq = qat.nodes()[i].weight_fq.as_ref().expect("filtered");
        let get = |k: String| {
            vars.get(&k)
                .cloned()
                .ok_or_else(|| PipelineError::Invalid(format!("no parameter {k}")))
        };
        let mut w = get(format!("{}.weight", node.name))?;
        if let Op::ConvBn { bn, .. } | Op::LinearBn { bn, .. } = &node.op {
            // The QAT forward quantizes w·γ/√(running_var + ε) (PyTorch's folding).
            let gamma = get(format!("{}.weight", bn.name))?;
            let var = get(format!("{}.running_var", bn.name))?;
            let f = (gamma / (var + bn.cfg.eps)?.sqrt()?)?;
            let mut shape = vec![1; w.rank()];
            shape[0] = f.elem_count();
            w = w.broadcast_mul(&f.reshape(shape)?)?;
        }
        let (scale, _) = fq.qparams()?;
        let oc = w.dim(0)?;
        let per = w.elem_count() / oc;
        let wv = flat(&w)?;
        let steps: Vec<f32> = wv
            .iter()
            .enumerate()
            .map(|(k, v)| v / scale[if scale.len() == 1 { 0 } else { k / per }])
            .collect();
        let (qmin, qmax) = fq.spec().dtype.range();
        out.push(histogram(
            &node.name,
            "weight",
            stage,
            "steps",
            &steps,
            [qmin as f32, qmax as f32],
        )?);
    }
    Ok(out)
}

/// Activation histograms of the first, middle and last quantized outputs on `x`. Switches
/// fake quantization and observers off while tracing and restores fake quantization after
/// (observers stay off: call this on a calibrated / trained graph).
pub fn activation_histograms(
    qat: &QatGraph,
    x: &Tensor,
    stage: &str,
) -> Result<Vec<RangeHistogram>> {
    let g = qat.graph();
    let with_fq: Vec<usize> = (0..g.len())
        .filter(|&i| {
            let n = &qat.nodes()[i];
            n.output_fq.is_some()
                && !n.is_quant_stub
                && !matches!(g.nodes()[i].op, Op::Input { .. })
        })
        .collect();
    let chosen = pick3(&with_fq);
    let fq_on: Vec<bool> = qat
        .fake_quants()
        .map(|f| f.fake_quant_enabled())
        .collect::<qat_graph::Result<_>>()?;
    qat.enable_observers(false);
    qat.enable_fake_quant(false);
    let traced = qat.forward_traced(&[x], false);
    for (f, on) in qat.fake_quants().zip(fq_on) {
        f.enable_fake_quant(on);
    }
    let traced = traced?;
    let mut out = Vec::new();
    for i in chosen {
        let name = &g.nodes()[i].name;
        let fq = qat.nodes()[i].output_fq.as_ref().expect("filtered");
        let t = traced
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| PipelineError::Invalid(format!("{name} is missing from the trace")))?;
        let (s, z) = fq.qparams()?;
        let (qmin, qmax) = fq.spec().dtype.range();
        let range = [(qmin - z[0]) as f32 * s[0], (qmax - z[0]) as f32 * s[0]];
        out.push(histogram(
            name,
            "activation",
            stage,
            "value",
            &flat(t)?,
            range,
        )?);
    }
    Ok(out)
}
