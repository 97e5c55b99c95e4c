//! `convert` and `run_tensor` refuse what they cannot do faithfully, with errors naming the
//! node / fake-quant module: unobserved observers, ops without an int8 form, NaN weights or BN
//! statistics, asymmetric weights (refit by default, refused on request), float layers the runtime has no float op for, a float
//! first layer, and bad tensors.

mod convert_util;

use candle_core::{DType, Device, Tensor};
use convert_util::{randn, train};
use qat_core::{QDType, QScheme, DEFAULT_EPS};
use qat_graph::convert::{
    convert_with_options, lower_node, AsymmetricWeights, LowerOptions, Lowered,
};
use qat_graph::qconfig::{FakeQuantKind, FqSpec, NodeQConfig, ObserverKind};
use qat_graph::{
    convert, prepare_qat_module, BnCfg, Conv2dCfg, Graph, GraphModule, LinearCfg, PoolCfg, QConfig,
    QatGraph, RunTensor,
};
use qat_runtime::ModelOptions;

const IN: [usize; 4] = [4, 2, 8, 8];

/// Conv+BN+ReLU → (optional MaxPool) → 1×1 Conv → pool → flatten → linear.
fn graph(max_pool: bool) -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", [2, 8, 8]).unwrap();
    let a = g
        .conv2d("conv0", x, Conv2dCfg::new(2, 8, 3).padding(1).bias(false))
        .unwrap();
    let a = g.batch_norm2d("bn0", a, BnCfg::new(8)).unwrap();
    let mut a = g.relu("relu0", a).unwrap();
    if max_pool {
        a = g
            .max_pool2d(
                "maxpool",
                a,
                PoolCfg {
                    kernel: 2,
                    stride: 2,
                    padding: 0,
                },
            )
            .unwrap();
    }
    let b = g.conv2d("conv1", a, Conv2dCfg::new(8, 8, 1)).unwrap();
    let p = g.global_avg_pool("pool", b).unwrap();
    let f = g.flatten("flatten", p).unwrap();
    g.linear(
        "fc",
        f,
        LinearCfg {
            in_features: 8,
            out_features: 3,
            bias: true,
        },
    )
    .unwrap();
    g
}

fn prepared(max_pool: bool, qc: &QConfig) -> QatGraph {
    let m = GraphModule::new(graph(max_pool), 7, &Device::Cpu).unwrap();
    prepare_qat_module(m, qc).unwrap()
}

fn trained(max_pool: bool, qc: &QConfig) -> QatGraph {
    let q = prepared(max_pool, qc);
    train(&q, &IN, &[IN[0], 3], 3, 4);
    q
}

fn err(q: &QatGraph) -> String {
    match convert(q) {
        Ok(_) => panic!("convert succeeded"),
        Err(e) => e.to_string(),
    }
}

fn set(q: &QatGraph, name: &str, idx: usize, v: f32) {
    let var = q.module().varmap().data().lock().unwrap()[name].clone();
    let mut data = var
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    data[idx] = v;
    let t = Tensor::from_vec(data, var.dims(), &Device::Cpu).unwrap();
    var.set(&t).unwrap();
}

#[test]
fn convert_refuses_a_graph_whose_observers_never_saw_data() {
    let presets = [
        QConfig::default_qat(),
        QConfig::pytorch_x86(),
        QConfig::lsq(8).unwrap(),
        QConfig::ptq(),
    ];
    for qc in &presets {
        let q = prepared(false, qc);
        let e = err(&q);
        assert!(e.contains("never saw data"), "{e}");
        assert!(e.contains("x.activation_post_process"), "{e}");
    }
}

#[test]
fn convert_refuses_an_op_without_int8_form_naming_it() {
    let q = trained(true, &QConfig::default_qat());
    let e = err(&q);
    assert!(e.contains("maxpool") && e.contains("MaxPool2d"), "{e}");
    // Left in float it is still refused: the runtime has no float max pool either.
    let q = trained(true, &QConfig::default_qat().with_name("maxpool", None));
    let e = err(&q);
    assert!(e.contains("maxpool") && e.contains("MaxPool2d"), "{e}");
}

#[test]
fn convert_refuses_non_finite_weights_and_bn_statistics() {
    let q = trained(false, &QConfig::default_qat());
    assert!(convert(&q).is_ok());
    set(&q, "conv1.weight", 3, f32::NAN);
    let e = err(&q);
    assert!(e.contains("conv1") && e.contains("not finite"), "{e}");

    let q = trained(false, &QConfig::default_qat());
    set(&q, "bn0.running_var", 2, f32::INFINITY);
    let e = err(&q);
    assert!(e.contains("bn0") && e.contains("not finite"), "{e}");
}

#[test]
fn convert_refuses_non_finite_float_island_parameters() {
    // The float path reads its parameters through the same check as the quantized one.
    let qc = QConfig::default_qat().with_name("fc", None);
    let q = trained(false, &qc);
    assert!(convert(&q).is_ok());
    for (param, idx, v) in [("weight", 5, f32::NAN), ("bias", 1, f32::NEG_INFINITY)] {
        let q = trained(false, &qc);
        set(&q, &format!("fc.{param}"), idx, v);
        let e = err(&q);
        let want = format!("node `fc`: {param} [{idx}] = {v} is not finite");
        assert!(e.contains(&want), "{e}");
    }
}

#[test]
fn convert_refits_or_refuses_asymmetric_weights() {
    // quint8 per-tensor affine weights: zero point near 128, integers q - zp up to ±255.
    let act = QConfig::default_qat().global().unwrap().activation;
    let weight = FqSpec {
        kind: FakeQuantKind::FakeQuantize,
        observer: ObserverKind::MinMax,
        dtype: QDType::quint8(),
        scheme: QScheme::PerTensorAffine,
        eps: DEFAULT_EPS,
    };
    let q = trained(
        false,
        &QConfig::uniform(NodeQConfig {
            activation: act,
            weight,
        }),
    );
    let strict = LowerOptions {
        asymmetric_weights: AsymmetricWeights::Refuse,
    };
    let e = convert_with_options(&q, ModelOptions::default(), strict)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("conv0.weight_fake_quant") && e.contains("zero point"),
        "{e}"
    );

    // Refit (the default): every channel at twice the scale, integers halved — checked
    // against the fake-quant module's own output (observers are off: it only quantizes).
    let id = q.graph().find("conv1").unwrap();
    let Lowered::Weighted(l) = lower_node(&q, id).unwrap() else {
        panic!("conv1 is weighted")
    };
    let fq = q.node("conv1").unwrap().weight_fq.as_ref().unwrap();
    let (s, zp) = fq.qparams().unwrap();
    assert_ne!(zp[0], 0);
    assert_eq!(l.refit_channels, (0..8).collect::<Vec<_>>());
    assert!(l.weight_scales.iter().all(|&w| w == 2.0 * s[0]));
    let w = q.module().varmap().data().lock().unwrap()["conv1.weight"].clone();
    let wq = fq.forward(w.as_tensor()).unwrap();
    let wq = wq.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (k, v) in l.weight.iter().zip(&wq) {
        let e = (v / s[0]).round() as i32;
        let want = ((e as f64 / 2.0).round_ties_even() as i32).clamp(-128, 127);
        assert_eq!(*k as i32, want, "fake-quant integer {e}");
    }
    assert!(convert(&q).is_ok());
}

#[test]
fn convert_refuses_float_layers_without_a_runtime_float_op() {
    // A 3×3 conv left in float after a quantized input.
    let mut g = Graph::new();
    let x = g.input("x", [2, 8, 8]).unwrap();
    let a = g.conv2d("conv0", x, Conv2dCfg::new(2, 4, 1)).unwrap();
    let b = g
        .conv2d("conv1", a, Conv2dCfg::new(4, 4, 3).padding(1))
        .unwrap();
    let p = g.global_avg_pool("pool", b).unwrap();
    g.flatten("flatten", p).unwrap();
    let m = GraphModule::new(g, 1, &Device::Cpu).unwrap();
    let q = prepare_qat_module(m, &QConfig::default_qat().with_name("conv1", None)).unwrap();
    q.calibrate(&[randn(3, &IN)]).unwrap();
    q.enable_observers(false);
    let e = err(&q);
    assert!(e.contains("conv1") && e.contains("1×1"), "{e}");
}

#[test]
fn convert_refuses_a_float_first_layer() {
    let q = trained(false, &QConfig::default_qat().with_name("conv0", None));
    let e = err(&q);
    assert!(e.contains("conv0") && e.contains("model input"), "{e}");
}

#[test]
fn convert_run_tensor_rejects_bad_tensors() {
    let q = trained(false, &QConfig::default_qat());
    let model = convert(&q).unwrap();
    let ok = randn(1, &IN);
    assert_eq!(model.run_tensor(&ok).unwrap().dims(), &[4, 3]);
    let bad = [
        (ok.to_dtype(DType::F64).unwrap(), "f32"),
        (randn(1, &[4, 2, 8, 9]), "expects input"),
        (randn(1, &[2, 8, 8]), "expects input"),
        (
            Tensor::zeros((0, 2, 8, 8), DType::F32, &Device::Cpu).unwrap(),
            "N>0",
        ),
    ];
    for (x, want) in bad {
        let e = model.run_tensor(&x).unwrap_err().to_string();
        assert!(e.contains(want), "{:?}: {e}", x.dims());
    }
}
