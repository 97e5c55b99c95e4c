//! `convert`: small graphs prepared, trained a few SGD steps on random data, BN frozen and
//! observers off, converted; every layer of the int8 model (`run_traced`) against the QAT
//! graph's eval fake-quant forward (`forward_traced`): at most one quantization step off and
//! ≥ 99 % exactly equal. Presets: default QAT, PyTorch x86 (`reduce_range`: `[0, 127]`
//! activations), a float island by QConfig override, a standalone ReLU after Dropout.

mod convert_util;

use candle_core::Device;
use convert_util::{assert_parity, compare, compare_isolated, randn, train};
use qat_graph::convert::lower_graph;
use qat_graph::{
    convert, prepare_qat_module, BnCfg, Conv2dCfg, Graph, GraphModule, LinearCfg, QConfig,
    QatGraph, RunTensor,
};
use qat_runtime::{Activation, ModelOptions, Op as RtOp, QuantizedModel};

const IN: [usize; 4] = [8, 3, 12, 12];

/// Conv+BN+ReLU6 (stride 2), depthwise Conv+BN+ReLU6, pointwise Conv+BN, residual add,
/// Conv+ReLU → Dropout → ReLU (standalone), global pool, flatten, linear head.
fn graph() -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", [3, 12, 12]).unwrap();
    let a = g
        .conv2d(
            "features.0.0",
            x,
            Conv2dCfg::new(3, 16, 3).stride(2).padding(1).bias(false),
        )
        .unwrap();
    let a = g.batch_norm2d("features.0.1", a, BnCfg::new(16)).unwrap();
    let a = g.relu6("features.0.2", a).unwrap();
    let b = g
        .conv2d(
            "features.1.0",
            a,
            Conv2dCfg::new(16, 16, 3).padding(1).groups(16).bias(false),
        )
        .unwrap();
    let b = g.batch_norm2d("features.1.1", b, BnCfg::new(16)).unwrap();
    let b = g.relu6("features.1.2", b).unwrap();
    let c = g
        .conv2d("features.2.0", b, Conv2dCfg::new(16, 16, 1).bias(false))
        .unwrap();
    let c = g.batch_norm2d("features.2.1", c, BnCfg::new(16)).unwrap();
    let s = g.add("add", c, a).unwrap();
    let d = g
        .conv2d("features.3.0", s, Conv2dCfg::new(16, 24, 1))
        .unwrap();
    let d = g.relu("features.3.1", d).unwrap();
    let d = g.dropout("features.3.2", d, 0.2).unwrap();
    let d = g.relu("features.3.3", d).unwrap();
    let p = g.global_avg_pool("pool", d).unwrap();
    let f = g.flatten("flatten", p).unwrap();
    g.linear(
        "classifier",
        f,
        LinearCfg {
            in_features: 24,
            out_features: 10,
            bias: true,
        },
    )
    .unwrap();
    g
}

fn prepared(qc: &QConfig, seed: u64) -> QatGraph {
    let m = GraphModule::new(graph(), seed, &Device::Cpu).unwrap();
    prepare_qat_module(m, qc).unwrap()
}

fn trained(qc: &QConfig, seed: u64) -> QatGraph {
    let q = prepared(qc, seed);
    train(&q, &IN, &[IN[0], 10], 6, seed);
    q
}

fn check_flow(
    label: &str,
    qc: &QConfig,
    float_nodes: &[&str],
    float_tol: f64,
    seed: u64,
) -> QuantizedModel {
    let q = trained(qc, seed);
    let conv = lower_graph(&q).unwrap();
    let model = convert(&q).unwrap();
    let x = randn(seed + 77, &[64, IN[1], IN[2], IN[3]]);
    // Layer by layer on the int8 model's own inputs: the project's promise.
    let iso = compare_isolated(&q, &model, &conv, &x);
    assert!(
        iso.len() >= 5,
        "{label}: only {} layers compared",
        iso.len()
    );
    // (The pool's int8 value is compared with the unrounded fake-quant mean: "equal" there
    // means within half a step, and its max is at most 0.5.)
    assert_parity(&format!("{label} isolated"), &iso, &[], 0.0, 1.0, &[]);
    // The whole chain: one-step differences propagate (at most one more step seen), and the
    // fake-quant graph does not round after the global pool (PyTorch's QAT semantics; the
    // int8 pool does), so the pool, flatten and the classifier after it are reported only.
    let chain = compare(&q, &model, &conv, &x);
    assert!(
        chain.len() >= 10,
        "{label}: only {} values compared",
        chain.len()
    );
    assert_parity(
        label,
        &chain,
        float_nodes,
        float_tol,
        2.0,
        &["pool", "flatten", "classifier"],
    );
    // The Tensor entry point gives the final values of the traced run.
    let y = model.run_tensor(&x).unwrap();
    assert_eq!(y.dims(), &[64, 10]);
    let fq = q.forward_t(&x, false).unwrap();
    let top = |t: &candle_core::Tensor| t.argmax(1).unwrap().to_vec1::<u32>().unwrap();
    let agree = top(&y)
        .iter()
        .zip(top(&fq))
        .filter(|(a, b)| **a == *b)
        .count();
    println!("{label}: top-1 agreement {agree}/64");
    model
}

#[test]
fn convert_default_qat_matches_fake_quant_per_layer() {
    let model = check_flow("default_qat", &QConfig::default_qat(), &[], 0.0, 1);
    // Fused activations become plain runtime activations; no clamp op for full-range values.
    let acts: Vec<Activation> = model
        .ops()
        .iter()
        .filter_map(|n| match &n.op {
            RtOp::Conv2d { params, .. } => Some(params.activation),
            _ => None,
        })
        .collect();
    assert!(acts.contains(&Activation::Relu6));
    assert!(!acts.iter().any(|a| matches!(a, Activation::Clamp { .. })));
}

#[test]
fn convert_pytorch_x86_clamps_to_the_reduced_range() {
    let model = check_flow("pytorch_x86", &QConfig::pytorch_x86(), &[], 0.0, 2);
    // Every produced u8 value saturates at 127, as the [0, 127] fake-quants do.
    let clamps = model
        .ops()
        .iter()
        .filter(|n| match &n.op {
            RtOp::Conv2d { params, .. } => {
                matches!(params.activation, Activation::Clamp { qmax, .. } if qmax <= 127)
            }
            RtOp::Linear { params, .. } => {
                matches!(params.activation, Activation::Clamp { qmax, .. } if qmax <= 127)
            }
            RtOp::Add { activation, .. } => {
                matches!(activation, Activation::Clamp { qmax, .. } if *qmax <= 127)
            }
            _ => false,
        })
        .count();
    assert!(clamps >= 7, "only {clamps} ops clamp to [.., 127]");
    assert!(model.ops().iter().any(|n| n.name == "x.clamp"));
}

#[test]
fn convert_float_island_runs_in_f32_between_dequant_and_quant() {
    let qc = QConfig::default_qat()
        .with_name("features.3.0", None)
        .with_name("features.3.2", None)
        .with_name("features.3.3", None)
        .with_name("classifier", None);
    let model = check_flow(
        "float_island",
        &qc,
        &["features.3.0", "features.3.2", "features.3.3", "classifier"],
        0.05,
        3,
    );
    let names: Vec<&str> = model.ops().iter().map(|n| n.name.as_str()).collect();
    for want in [
        "add.dequant",
        "features.3.0",
        "features.3.3.quant",
        "flatten.dequant",
    ] {
        assert!(names.contains(&want), "no op {want} in {names:?}");
    }
    // The model ends on the float classifier itself: no final dequantize.
    assert_eq!(model.output_name(), "classifier");
}

#[test]
fn convert_save_load_round_trip_gives_identical_outputs() {
    for (i, qc) in [QConfig::default_qat(), QConfig::pytorch_x86()]
        .iter()
        .enumerate()
    {
        let q = trained(qc, 10 + i as u64);
        let model = convert(&q).unwrap();
        let bytes = model.to_bytes().unwrap();
        let back = QuantizedModel::from_bytes(&bytes, ModelOptions::default()).unwrap();
        assert_eq!(back.ops(), model.ops());
        let x = randn(99, &IN);
        let a = model.run_tensor(&x).unwrap().to_vec2::<f32>().unwrap();
        let b = back.run_tensor(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn convert_forward_traced_ends_with_the_forward_output() {
    let q = trained(&QConfig::default_qat(), 5);
    let x = randn(6, &IN);
    let tr = q.forward_traced(&[&x], false).unwrap();
    assert_eq!(tr.len(), q.graph().len());
    let (name, last) = tr.last().unwrap();
    assert_eq!(name, "classifier");
    let y = q.forward_t(&x, false).unwrap();
    let d = (last - &y)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d, 0.0);
}

#[test]
fn convert_ptq_calibrated_graph_tracks_the_float_model() {
    // Post-training: observe-only specs, calibrated on a few batches, never fake-quantized;
    // the int8 model must stay close to the float eval it was calibrated on.
    let m = GraphModule::new(graph(), 21, &Device::Cpu).unwrap();
    let q = qat_graph::prepare(m, &QConfig::ptq()).unwrap();
    let batches: Vec<_> = (0..4).map(|i| randn(300 + i, &IN)).collect();
    q.calibrate(&batches).unwrap();
    q.enable_observers(false);
    let model = convert(&q).unwrap();
    let x = randn(400, &[64, IN[1], IN[2], IN[3]]);
    let y = model.run_tensor(&x).unwrap();
    let f = q.forward_t(&x, false).unwrap();
    let flat = f.flatten_all().unwrap();
    let range = (flat.max(0).unwrap() - flat.min(0).unwrap())
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let d = (&y - &f)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    println!("ptq: int8 vs float max |Δ| {d} (logits range {range})");
    assert!(d <= 0.1 * range, "ptq: max |Δ| {d} vs range {range}");
}
