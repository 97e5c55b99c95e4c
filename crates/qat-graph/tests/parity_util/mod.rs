// Each test binary uses a different part of this helper.
#![allow(dead_code)]

//! Small QAT graphs trained for a few steps, shared by the parity tests (`compare.rs`,
//! `int_exact.rs`): Conv+BN+ReLU6, depthwise Conv+BN+ReLU6, 1×1 Conv+BN, a residual add, a
//! strided Conv+BN+ReLU, a Conv+ReLU with bias, global pool and a linear head.

use candle_core::{DType, Device, Tensor, D};
use qat_graph::{
    prepare_qat_module, BnCfg, Conv2dCfg, Graph, GraphModule, LinearCfg, QConfig, QatGraph, Sgd,
    SgdConfig, WeightDecay,
};

pub const INPUT: [usize; 3] = [3, 12, 12];
pub const CLASSES: usize = 4;

pub fn graph() -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", INPUT).unwrap();
    let no_bias = |c: Conv2dCfg| c.bias(false);
    let a = g
        .conv2d(
            "features.0.0",
            x,
            no_bias(Conv2dCfg::new(3, 8, 3).padding(1)),
        )
        .unwrap();
    let a = g.batch_norm2d("features.0.1", a, BnCfg::new(8)).unwrap();
    let a = g.relu6("features.0.2", a).unwrap();
    let b = g
        .conv2d(
            "features.1.0",
            a,
            no_bias(Conv2dCfg::new(8, 8, 3).padding(1).groups(8)),
        )
        .unwrap();
    let b = g.batch_norm2d("features.1.1", b, BnCfg::new(8)).unwrap();
    let b = g.relu6("features.1.2", b).unwrap();
    let c = g
        .conv2d("features.2.0", b, no_bias(Conv2dCfg::new(8, 8, 1)))
        .unwrap();
    let c = g.batch_norm2d("features.2.1", c, BnCfg::new(8)).unwrap();
    let s = g.add("add", a, c).unwrap();
    let d = g
        .conv2d(
            "features.3.0",
            s,
            no_bias(Conv2dCfg::new(8, 16, 3).stride(2).padding(1)),
        )
        .unwrap();
    let d = g.batch_norm2d("features.3.1", d, BnCfg::new(16)).unwrap();
    let d = g.relu("features.3.2", d).unwrap();
    let e = g
        .conv2d("features.4.0", d, Conv2dCfg::new(16, 16, 3).padding(1))
        .unwrap();
    let e = g.relu("features.4.1", e).unwrap();
    let p = g.global_avg_pool("pool", e).unwrap();
    let f = g.flatten("flatten", p).unwrap();
    g.linear(
        "classifier",
        f,
        LinearCfg {
            in_features: 16,
            out_features: CLASSES,
            bias: true,
        },
    )
    .unwrap();
    g
}

/// A batch of `n` images and labels: channels 0 and 1 carry a per-image offset in
/// [-1, 1] under unit noise; the label is which of the two offsets are positive (4 classes,
/// something a small conv net with a global pool learns in a few steps).
pub fn batch(seed: u64, n: usize) -> (Tensor, Tensor) {
    let mut rng = qat_graph::seeded_rng(seed);
    let per: usize = INPUT.iter().product();
    let hw = INPUT[1] * INPUT[2];
    let mut v = qat_graph::params::normal_vec(&mut rng, n * per, 0.0, 1.0);
    let offsets = qat_graph::params::normal_vec(&mut rng, 2 * n, 0.0, 0.6);
    let mut labels = Vec::with_capacity(n);
    for b in 0..n {
        let (o0, o1) = (offsets[2 * b], offsets[2 * b + 1]);
        for (c, o) in [(0, o0), (1, o1)] {
            for e in &mut v[b * per + c * hw..b * per + (c + 1) * hw] {
                *e += o;
            }
        }
        labels.push((o0 > 0.0) as u32 + 2 * (o1 > 0.0) as u32);
    }
    let x = Tensor::from_vec(v, (n, INPUT[0], INPUT[1], INPUT[2]), &Device::Cpu).unwrap();
    (x, Tensor::new(labels, &Device::Cpu).unwrap())
}

fn sgd(params: Vec<(String, candle_core::Var, qat_graph::ParamKind)>) -> Sgd {
    Sgd::new(
        params,
        SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            dampening: 0.0,
            nesterov: true,
            weight_decay: WeightDecay::Decoupled(1e-4),
            max_grad_norm: None,
        },
    )
    .unwrap()
}

/// The usual flow on the graph: `steps` float training steps, `prepare_qat` with
/// `default_qat`, `steps` QAT steps (observers and BN live for the first half, then BN frozen
/// and observers off, as a QAT schedule does), left with observers off and BN frozen: ready
/// to convert. (QAT from scratch barely learns here: the logits' moving-average observer
/// lags behind the growing logits and the clipped straight-through gradient stalls.)
pub fn trained(seed: u64, steps: usize) -> QatGraph {
    let m = GraphModule::new(graph(), seed, &Device::Cpu).unwrap();
    let mut opt = sgd(m.trainable());
    for step in 0..steps {
        let (x, y) = batch(seed * 1000 + step as u64, 16);
        let loss = candle_nn::loss::cross_entropy(&m.forward_t(&x, true).unwrap(), &y).unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    let q = prepare_qat_module(m, &QConfig::default_qat()).unwrap();
    let mut opt = sgd(q.trainable());
    for step in 0..steps {
        if step == steps / 2 {
            q.freeze_bn_stats();
            q.enable_observers(false);
        }
        let (x, y) = batch(seed * 1000 + 500 + step as u64, 16);
        let logits = q.forward_t(&x, true).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    q.freeze_bn_stats();
    q.enable_observers(false);
    q
}

/// Fraction of `x`'s samples whose top-1 equals `labels`.
pub fn accuracy(logits: &Tensor, labels: &Tensor) -> f64 {
    let p = logits.argmax(D::Minus1).unwrap();
    let eq = p
        .eq(labels)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .mean_all()
        .unwrap();
    eq.to_scalar::<f32>().unwrap() as f64
}
