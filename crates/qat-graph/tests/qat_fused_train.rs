//! QAT Conv+BN(+ReLU6) layers in train mode run their fast fused ops (1×1 / depthwise conv fed
//! straight into the batch-statistics BatchNorm; the frozen un-scale + affine + activation as
//! one op): the graph's outputs, every parameter gradient and the running statistics agree with
//! the same graph on candle's ops (`OpsPath::Candle`, which composes the unfused sequence), with
//! BN live and frozen. Fake-quant is off so that only float rounding separates the two.

mod qat_train_util;

use std::collections::HashMap;

use candle_core::Device;
use qat_graph::{prepare_qat_module, GraphModule, OpsPath, QConfig, QatGraph};
use qat_train_util::{graph, input, step};

fn qat(path: OpsPath) -> QatGraph {
    let mut m = GraphModule::new(graph(), 21, &Device::Cpu).unwrap();
    m.set_ops_path(path);
    let q = prepare_qat_module(m, &QConfig::default_qat()).unwrap();
    q.enable_fake_quant(false);
    q
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
