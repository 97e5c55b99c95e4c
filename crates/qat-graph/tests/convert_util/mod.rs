//! Shared by the `convert*` tests: small training runs and the per-layer comparison of the
//! int8 model (`run_traced`) with the QAT graph's eval fake-quant forward (`forward_traced`).

#![allow(dead_code)]

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use qat_graph::convert::Conversion;
use qat_graph::{QatGraph, Sgd, SgdConfig};
use qat_runtime::{QuantizedModel, ValueData};

/// Seeded N(0, 1) data of shape `dims`.
pub fn randn(seed: u64, dims: &[usize]) -> Tensor {
    let n: usize = dims.iter().product();
    let mut rng = qat_graph::seeded_rng(seed);
    let v = qat_graph::params::normal_vec(&mut rng, n, 0.0, 1.0);
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// A few SGD steps (MSE to random targets) with observers and live BN, then BN frozen and
/// observers off: the state `convert` expects.
pub fn train(q: &QatGraph, in_dims: &[usize], out_dims: &[usize], steps: usize, seed: u64) {
    let mut opt = Sgd::new(
        q.trainable(),
        SgdConfig {
            lr: 0.01,
            momentum: 0.9,
            ..SgdConfig::default()
        },
    )
    .unwrap();
    for s in 0..steps as u64 {
        let x = randn(seed * 1000 + s, in_dims);
        let t = randn(seed * 1000 + 500 + s, out_dims);
        let y = q.forward_t(&x, true).unwrap();
        let loss = (y - t).unwrap().sqr().unwrap().mean_all().unwrap();
        opt.backward_step(&loss).unwrap();
    }
    q.freeze_bn_stats();
    q.enable_observers(false);
}

/// Per value: elements, exactly equal, max difference in quantization steps.
#[derive(Debug, Clone)]
pub struct LayerStat {
    pub node: String,
    pub n: usize,
    pub equal: usize,
    pub max_steps: f64,
}

impl LayerStat {
    pub fn frac(&self) -> f64 {
        self.equal as f64 / self.n as f64
    }
}

/// NCHW (or `[N, F]`) fake-quant values → NHWC order, as f32.
fn to_nhwc(t: &Tensor) -> Vec<f32> {
    let t = t.to_dtype(DType::F32).unwrap();
    let t = if t.rank() == 4 {
        t.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap()
    } else {
        t
    };
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Compare every node the conversion maps to a runtime value. Quantized values: the fake-quant
/// value divided by the scale plus the zero point (rounded half to even) against the int8
/// value, in steps. Float values: relative difference (reported as `max_steps` = max |Δ| /
/// max |ref|).
pub fn compare(
    q: &QatGraph,
    model: &QuantizedModel,
    conv: &Conversion,
    x: &Tensor,
) -> Vec<LayerStat> {
    let fq = q.forward_traced(&[x], false).unwrap();
    let fq: HashMap<String, Tensor> = fq.into_iter().collect();
    let n = x.dim(0).unwrap();
    let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let trace = model.run_traced(&xv, n).unwrap();
    let rt: HashMap<&str, &ValueData> = trace.iter().map(|t| (t.name.as_str(), &t.data)).collect();
    let mut names: Vec<(&String, &String)> = conv.values.iter().collect();
    names.sort();
    let mut out = Vec::new();
    for (node, value) in names {
        let want = to_nhwc(
            fq.get(node)
                .unwrap_or_else(|| panic!("no fake-quant value {node}")),
        );
        let got = rt
            .get(value.as_str())
            .unwrap_or_else(|| panic!("no runtime value {value} for {node}"));
        let mut st = LayerStat {
            node: node.clone(),
            n: want.len(),
            equal: 0,
            max_steps: 0.0,
        };
        match got {
            ValueData::U8 { data, qparams } => {
                assert_eq!(data.len(), want.len(), "{node}: sizes differ");
                for (&g, &w) in data.iter().zip(&want) {
                    let wq = (w as f64 / qparams.scale as f64).round_ties_even()
                        + qparams.zero_point as f64;
                    let d = (g as f64 - wq).abs();
                    st.equal += (d == 0.0) as usize;
                    st.max_steps = st.max_steps.max(d);
                }
            }
            ValueData::F32(data) => {
                assert_eq!(data.len(), want.len(), "{node}: sizes differ");
                let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs())) as f64;
                for (&g, &w) in data.iter().zip(&want) {
                    let d = (g as f64 - w as f64).abs() / scale;
                    st.equal += (d <= 1e-5) as usize;
                    st.max_steps = st.max_steps.max(d);
                }
            }
        }
        out.push(st);
    }
    out
}

/// Print the stats and assert: quantized values at most `max_steps` off and at least 99 %
/// exactly equal; float values within `float_tol` relative; `report_only` values printed.
pub fn assert_parity(
    label: &str,
    stats: &[LayerStat],
    float_nodes: &[&str],
    float_tol: f64,
    max_steps: f64,
    report_only: &[&str],
) {
    for s in stats {
        let kind = if float_nodes.contains(&s.node.as_str()) {
            "(f32, relative)"
        } else if report_only.contains(&s.node.as_str()) {
            "steps (reported only)"
        } else {
            "steps"
        };
        println!(
            "{label}: {:<24} n={:<6} equal {:>7.3}%  max {:.3} {kind}",
            s.node,
            s.n,
            100.0 * s.frac(),
            s.max_steps,
        );
    }
    for s in stats {
        if float_nodes.contains(&s.node.as_str()) {
            assert!(
                s.max_steps <= float_tol,
                "{label}: float {} off by {}",
                s.node,
                s.max_steps
            );
        } else if !report_only.contains(&s.node.as_str()) {
            assert!(
                s.max_steps <= max_steps,
                "{label}: {} is {} steps off",
                s.node,
                s.max_steps
            );
            assert!(
                s.frac() >= 0.99,
                "{label}: {} only {:.4} equal",
                s.node,
                s.frac()
            );
        }
    }
}

fn var(q: &QatGraph, name: &str) -> candle_core::Var {
    q.module().varmap().data().lock().unwrap()[name].clone()
}

/// u8 NHWC runtime data → the dequantized NCHW (or `[N, F]`) tensor of graph shape `shape`.
fn dequant_nchw(data: &[u8], qp: qat_core::QParams, n: usize, shape: &[usize]) -> Tensor {
    let v: Vec<f32> = data
        .iter()
        .map(|&u| qat_core::dequantize(u as i32, qp))
        .collect();
    match *shape {
        [c, h, w] => Tensor::from_vec(v, (n, h, w, c), &Device::Cpu)
            .unwrap()
            .permute((0, 3, 1, 2))
            .unwrap()
            .contiguous()
            .unwrap(),
        [f] => Tensor::from_vec(v, (n, f), &Device::Cpu).unwrap(),
        _ => panic!("shape {shape:?}"),
    }
}

/// Layer by layer in isolation: each quantized conv / linear / add / pool node of the QAT
/// graph is run (its eval fake-quant computation: weight fake-quant, BN folded with running
/// statistics, fused activation, output fake-quant) on the int8 model's own input values, and
/// compared with the int8 model's output of that node, in steps.
pub fn compare_isolated(
    q: &QatGraph,
    model: &QuantizedModel,
    conv: &Conversion,
    x: &Tensor,
) -> Vec<LayerStat> {
    use qat_graph::qat::{folded_bn_forward, BnStats, BnVars};
    use qat_graph::{Act, Op};
    let n = x.dim(0).unwrap();
    let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let trace = model.run_traced(&xv, n).unwrap();
    let rt: HashMap<&str, (&[u8], qat_core::QParams)> = trace
        .iter()
        .filter_map(|t| match &t.data {
            ValueData::U8 { data, qparams } => Some((t.name.as_str(), (data.as_slice(), *qparams))),
            ValueData::F32(_) => None,
        })
        .collect();
    let g = q.graph();
    let act = |y: Tensor, a: Option<Act>| match a {
        None => y,
        Some(Act::ReLU) => y.relu().unwrap(),
        Some(Act::ReLU6) => y.clamp(0f32, 6f32).unwrap(),
    };
    let mut out = Vec::new();
    for (i, node) in g.nodes().iter().enumerate() {
        let qn = &q.nodes()[i];
        if qn.config.is_none() || node.inputs.is_empty() {
            continue;
        }
        let input = |k: usize| -> Option<Tensor> {
            let p = node.inputs[k];
            let pn = &g.node(p).name;
            // A float producer's quantized value is its quant stub's.
            let v = conv
                .values
                .get(&format!("{pn}.quant"))
                .or_else(|| conv.values.get(pn))?;
            let (d, qp) = rt.get(v.as_str())?;
            Some(dequant_nchw(d, *qp, n, g.shape(p)))
        };
        let Some(x0) = input(0) else { continue };
        let w = || var(q, &format!("{}.weight", node.name));
        let b = |has: bool| has.then(|| var(q, &format!("{}.bias", node.name)).as_tensor().clone());
        let wfq = || qn.weight_fq.as_ref().unwrap();
        let conv_op = |c: qat_graph::Conv2dCfg| {
            move |x: &Tensor, w: &Tensor| -> qat_graph::Result<Tensor> {
                Ok(x.conv2d(w, c.padding, c.stride, c.dilation, c.groups)?)
            }
        };
        let y = match &node.op {
            Op::Conv2d(c) | Op::ConvAct { conv: c, .. } => {
                let a = match &node.op {
                    Op::ConvAct { act, .. } => Some(*act),
                    _ => None,
                };
                let wq = wfq().forward(w().as_tensor()).unwrap();
                let mut y = conv_op(*c)(&x0, &wq).unwrap();
                if let Some(b) = b(c.bias) {
                    y = y.broadcast_add(&b.reshape((1, (), 1, 1)).unwrap()).unwrap();
                }
                act(y, a)
            }
            Op::ConvBn {
                conv: c,
                bn,
                act: a,
            } => {
                let g = |s: &str| var(q, &format!("{}.{s}", bn.name));
                let bnv = BnVars {
                    name: bn.name.clone(),
                    cfg: bn.cfg,
                    weight: g("weight"),
                    bias: g("bias"),
                    running_mean: g("running_mean"),
                    running_var: g("running_var"),
                    num_batches_tracked: g("num_batches_tracked"),
                };
                let bias = b(c.bias);
                let y = folded_bn_forward(
                    &x0,
                    w().as_tensor(),
                    bias.as_ref(),
                    &bnv,
                    BnStats::Running,
                    Some(wfq()),
                    conv_op(*c),
                )
                .unwrap();
                act(y, *a)
            }
            Op::Linear(l) | Op::LinearAct { linear: l, .. } => {
                let a = match &node.op {
                    Op::LinearAct { act, .. } => Some(*act),
                    _ => None,
                };
                let wq = wfq().forward(w().as_tensor()).unwrap();
                let mut y = x0.matmul(&wq.t().unwrap()).unwrap();
                if let Some(b) = b(l.bias) {
                    y = y.broadcast_add(&b).unwrap();
                }
                act(y, a)
            }
            Op::Add | Op::AddAct { .. } => {
                let a = match &node.op {
                    Op::AddAct { act } => Some(*act),
                    _ => None,
                };
                let Some(x1) = input(1) else { continue };
                act((&x0 + &x1).unwrap(), a)
            }
            Op::GlobalAvgPool => x0.mean_keepdim((2, 3)).unwrap(),
            _ => continue,
        };
        let y = match &qn.output_fq {
            Some(f) => f.forward(&y).unwrap(),
            None => y,
        };
        let Some(v) = conv.values.get(&node.name) else {
            continue;
        };
        let (data, qp) = rt[v.as_str()];
        // The QAT graph does not fake-quantize after a pool: compare the int8 value with the
        // unrounded mean (it must be a rounding of it: within half a step).
        let unrounded = qn.output_fq.is_none();
        let want = to_nhwc(&y);
        assert_eq!(want.len(), data.len(), "{}: sizes", node.name);
        let mut st = LayerStat {
            node: node.name.clone(),
            n: want.len(),
            equal: 0,
            max_steps: 0.0,
        };
        for (&gq, &w) in data.iter().zip(&want) {
            let wq = w as f64 / qp.scale as f64 + qp.zero_point as f64;
            let (wq, tol) = if unrounded {
                (wq, 0.5 + 1e-3)
            } else {
                (wq.round_ties_even(), 0.0)
            };
            let d = (gq as f64 - wq).abs();
            st.equal += (d <= tol) as usize;
            st.max_steps = st.max_steps.max(d);
        }
        out.push(st);
    }
    out
}
