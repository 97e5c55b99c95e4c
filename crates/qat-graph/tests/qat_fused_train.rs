//! QAT Conv+BN(+ReLU6) layers in train mode run their fast fused ops (1×1 / depthwise conv fed
//! straight into the batch-statistics BatchNorm; the frozen un-scale + affine + activation as
//! one op): the graph's outputs, every parameter gradient and the running statistics agree with
//! the same graph on candle's ops (`OpsPath::Candle`, which composes the unfused sequence), with
//! BN live and frozen. Fake-quant is off so that only float rounding separates the two.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use qat_graph::{
    prepare_qat_module, BnCfg, Conv2dCfg, Graph, GraphModule, LinearCfg, OpsPath, QConfig, QatGraph,
};

fn graph() -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", [4, 9, 9]).unwrap();
    // 1×1 conv with a bias (the un-scaling's shift) + BN + ReLU6.
    let a = g
        .conv2d("a.0", x, Conv2dCfg::new(4, 12, 1).bias(true))
        .unwrap();
    let a = g.batch_norm2d("a.1", a, BnCfg::new(12)).unwrap();
    let a = g.relu6("a.2", a).unwrap();
    // Depthwise stride 2 + BN + ReLU6.
    let b = g
        .conv2d(
            "b.0",
            a,
            Conv2dCfg::new(12, 12, 3)
                .stride(2)
                .padding(1)
                .groups(12)
                .bias(false),
        )
        .unwrap();
    let b = g.batch_norm2d("b.1", b, BnCfg::new(12)).unwrap();
    let b = g.relu6("b.2", b).unwrap();
    // 1×1 projection + BN, no activation.
    let c = g
        .conv2d("c.0", b, Conv2dCfg::new(12, 6, 1).bias(false))
        .unwrap();
    let c = g.batch_norm2d("c.1", c, BnCfg::new(6)).unwrap();
    let p = g.global_avg_pool("pool", c).unwrap();
    let f = g.flatten("flatten", p).unwrap();
    g.linear(
        "fc",
        f,
        LinearCfg {
            in_features: 6,
            out_features: 5,
            bias: true,
        },
    )
    .unwrap();
    g
}

fn qat(path: OpsPath) -> QatGraph {
    let mut m = GraphModule::new(graph(), 21, &Device::Cpu).unwrap();
    m.set_ops_path(path);
    let q = prepare_qat_module(m, &QConfig::default_qat()).unwrap();
    q.enable_fake_quant(false);
    q
}

fn input(seed: u64) -> Tensor {
    let n = 3 * 4 * 9 * 9;
    let v: Vec<f32> = (0..n)
        .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 250.0) - 2.0)
        .collect();
    Tensor::from_vec(v, (3, 4, 9, 9), &Device::Cpu).unwrap()
}

/// The loss `Σ y·r`, its value and every trainable parameter's gradient by name.
fn step(q: &QatGraph, x: &Tensor) -> (Vec<f32>, HashMap<String, Vec<f32>>) {
    let y = q.forward_t(x, true).unwrap();
    let r = Tensor::arange(0f32, y.elem_count() as f32, &Device::Cpu)
        .unwrap()
        .reshape(y.dims())
        .unwrap()
        .cos()
        .unwrap();
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let g = q
        .trainable()
        .into_iter()
        .map(|(name, var, _)| {
            let g = grads
                .get(var.as_tensor())
                .expect("every parameter has a gradient");
            (name, g.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        })
        .collect();
    (y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), g)
}

fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * scale,
            "{what}: element {i}: {x} vs {y} (tol {tol} x {scale})"
        );
    }
}

fn running_stats(q: &QatGraph) -> HashMap<String, Vec<f32>> {
    q.state()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.contains("running_") || k.contains("num_batches"))
        .map(|(k, t)| {
            let v = t.to_dtype(candle_core::DType::F32).unwrap();
            (k, v.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        })
        .collect()
}

#[test]
fn qat_fused_train_ops_match_candle_composition_live_and_frozen() {
    let (fast, slow) = (qat(OpsPath::Fast), qat(OpsPath::Candle));
    for (i, frozen) in [false, false, true, true].into_iter().enumerate() {
        if frozen {
            fast.freeze_bn_stats();
            slow.freeze_bn_stats();
        }
        let x = input(i as u64);
        let (yf, gf) = step(&fast, &x);
        let (ys, gs) = step(&slow, &x);
        let what = format!("step {i} (BN frozen: {frozen})");
        assert_close(&yf, &ys, 1e-5, &format!("{what}: output"));
        assert_eq!(gf.len(), gs.len());
        assert!(gf.len() >= 10, "{what}: parameters {:?}", gf.keys());
        for (name, g) in &gf {
            assert_close(g, &gs[name], 1e-4, &format!("{what}: gradient of {name}"));
        }
        let (rf, rs) = (running_stats(&fast), running_stats(&slow));
        assert_eq!(rf.len(), 9, "{what}: running statistics {:?}", rf.keys());
        for (name, v) in &rf {
            assert_close(v, &rs[name], 1e-5, &format!("{what}: {name}"));
        }
        // Batch-statistics steps move the running statistics; frozen ones leave them.
        assert_eq!(rf["a.1.num_batches_tracked"], [2f32.min(i as f32 + 1.0)]);
    }
}
