//! The architecture against torchvision's published numbers: parameter count, state-dict
//! names, MACs.

use candle_core::Device;
use mobilenet_v2::{build, macs, make_divisible, Activation, MobileNetV2Config};
use qat_graph::{GraphModule, Op};

#[test]
fn imagenet_model_matches_torchvision() {
    let cfg = MobileNetV2Config::imagenet(1.0, 1000);
    let g = build(&cfg).unwrap();
    let specs = g.param_specs();
    // torchvision.models.mobilenet_v2(): 3,504,872 parameters, 314 state-dict entries.
    let params: usize = specs
        .iter()
        .filter(|s| s.kind.is_trainable())
        .map(|s| s.shape.iter().product::<usize>())
        .sum();
    assert_eq!(params, 3_504_872);
    assert_eq!(specs.len(), 314);
    // 300.8 M multiply-adds at 224×224 (MEASURED.md; torchvision lists 0.30 GFLOPS).
    let m = macs(&cfg).unwrap() as f64 / 1e6;
    assert!((m - 300.8).abs() < 0.05, "{m} M MACs");
    assert_eq!(g.shape(g.outputs()[0]), &[1000]);
    for name in [
        "features.0.0.weight",
        "features.1.conv.0.0.weight",
        "features.1.conv.1.weight",
        "features.1.conv.2.running_var",
        "features.2.conv.0.0.weight",
        "features.2.conv.1.0.weight",
        "features.2.conv.2.weight",
        "features.2.conv.3.num_batches_tracked",
        "features.18.0.weight",
        "features.18.1.bias",
        "classifier.1.weight",
    ] {
        assert!(specs.iter().any(|s| s.name == name), "missing {name}");
    }
    let w = specs
        .iter()
        .find(|s| s.name == "features.18.0.weight")
        .unwrap();
    assert_eq!(w.shape, [1280, 320, 1, 1]);
    // Residual adds exactly where torchvision has them (stride 1, same channels): 10 blocks.
    let adds = g.nodes().iter().filter(|n| n.op == Op::Add).count();
    assert_eq!(adds, 10);
    let relu6 = g.nodes().iter().filter(|n| n.op == Op::ReLU6).count();
    assert_eq!(relu6, 1 + 1 + 16 * 2 + 1);
}

#[test]
fn small_model_macs_and_shapes() {
    let cfg = MobileNetV2Config::small(1, 28, 0.5, 10);
    let m = macs(&cfg).unwrap() as f64 / 1e6;
    assert!((m - 23.1).abs() < 0.05, "{m} M MACs");
    let g = build(&cfg).unwrap();
    // Stem stride 1 and stage-2 stride 1: 28×28 down to 4×4 after strides 2, 2, 2 (28→14→7→4).
    let last = g.find("features.18.2").unwrap();
    assert_eq!(g.shape(last), &[1280, 4, 4]);
    let stem = g.find("features.0.0").unwrap();
    assert_eq!(g.shape(stem), &[16, 28, 28]);
    let relu = build(&cfg.clone().with_activation(Activation::ReLU)).unwrap();
    assert!(relu.nodes().iter().all(|n| n.op != Op::ReLU6));
    // Runs: batch 2 of 3-channel 32×32 with width 0.35 (the rounding path) in train and eval.
    let cfg3 = MobileNetV2Config::small(3, 32, 0.35, 7);
    let m = GraphModule::new(build(&cfg3).unwrap(), 0, &Device::Cpu).unwrap();
    let x =
        candle_core::Tensor::ones((2, 3, 32, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert_eq!(m.forward_t(&x, true).unwrap().dims(), &[2, 7]);
    assert_eq!(m.forward_t(&x, false).unwrap().dims(), &[2, 7]);
}

#[test]
fn make_divisible_matches_torchvision() {
    // (value, divisor) -> torchvision's _make_divisible.
    for (v, want) in [
        (16.0, 16),
        (12.0, 16),
        (4.0, 8),
        (11.9, 16),
        (12.0 * 0.75, 16),
        (320.0 * 0.35, 112),
        (160.0 * 0.35, 56),
        (24.0 * 0.35, 8),
        (32.0 * 1.4, 48),
        (1280.0 * 1.4, 1792),
    ] {
        assert_eq!(make_divisible(v, 8), want, "{v}");
    }
}
