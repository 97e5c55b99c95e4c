//! Fake-quant ⇄ int8 parity on MobileNetV2 (issue 5, item 4): the golden PyTorch-trained
//! QAT model(s) `mobilenet_v2_*.safetensors` and a width-0.25 small MobileNetV2 trained a few
//! steps on Fashion-MNIST. Per layer: equal fraction and step differences end to end and
//! layer by layer (`qat_graph::compare`); the integer-exact mode against the int8 model
//! (identical). Prints the reports; `--nocapture` shows the numbers.

mod common;

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use common::{qat_from_golden, tensor};
use mobilenet_v2::{build, MobileNetV2Config};
use qat_graph::compare::{
    compare, compare_batches, compare_integer_exact, compare_integer_exact_batches, CompareReport,
};
use qat_graph::{convert, prepare_qat_module, GraphModule, QConfig, Sgd, SgdConfig, WeightDecay};
use qat_testutil::GoldenFile;

fn summary(what: &str, r: &CompareReport) {
    let worst = r.worst_layer().expect("layers");
    let local_min = r
        .layers
        .iter()
        .filter_map(|l| l.local.as_ref())
        .map(|a| a.equal_fraction)
        .fold(1.0f64, f64::min);
    let local_steps = r
        .layers
        .iter()
        .filter_map(|l| l.local.as_ref())
        .map(|a| a.max_step_diff)
        .max()
        .unwrap_or(0);
    let steps = r
        .layers
        .iter()
        .map(|l| l.end_to_end.max_step_diff)
        .max()
        .unwrap_or(0);
    println!(
        "{what}: {} layers; end to end: worst {} {:.4}% equal, max {steps} steps; \
         layer by layer: min {:.4}% equal, max {local_steps} steps; top-1 {}/{}, max |Δlogit| {:.4}",
        r.layers.len(),
        worst.name,
        100.0 * worst.end_to_end.equal_fraction,
        100.0 * local_min,
        r.top1_agree,
        r.samples,
        r.max_abs_logit_diff
    );
}

#[test]
fn golden_mobilenet_v2_parity() {
    let files = GoldenFile::all_with_prefix("mobilenet_v2_", "golden_mobilenet_v2_parity");
    for f in &files {
        let q = qat_from_golden(f);
        let m = convert(&q).unwrap();
        let x = tensor(f, "input");
        // PyTorch's eval (float bias), then ours (the int8 model's bias rounding).
        q.simulate_int8_bias(false);
        let pt = compare(&q, &m, &x).unwrap();
        summary("golden fake-quant (float bias) vs int8", &pt);
        q.simulate_int8_bias(true);
        let r = compare(&q, &m, &x).unwrap();
        println!("{}\n{r}", f.path.display());
        summary("golden fake-quant vs int8", &r);
        let e = compare_integer_exact(&q, &m, &x).unwrap();
        summary("golden integer-exact vs int8", &e);
        assert!(e.all_within(1.0, 0), "{e}");
        assert_eq!(e.top1_agree, e.samples);
        assert_eq!(e.max_abs_logit_diff, 0.0);
        // Measured on mobilenet_v2_w0.5 (PyTorch-trained): layer by layer ≥ 99.23% (float
        // bias) / 99.40% (int8 bias) equal and ≤ 1 step everywhere; end to end down to 47%
        // equal and 13-14 steps deep in the net; top-1 16/16 (float bias) and 15/16 (int8
        // bias), max |Δlogit| 0.38 (PyTorch's own pair: up to 1.5). What is left is not
        // rounding: PyTorch gave some weight channels an all-positive range with zero
        // point -128 (features.0.0 channel 4), which int8 holds halved at twice the scale
        // (`AsymmetricWeights::Refit`), and the drift from there makes one image flip.
        // Our own QAT (symmetric weights) has no such channel; the integer-exact mode
        // above is identical.
        for (r, min_top1) in [(&pt, r.samples), (&r, r.samples - 1)] {
            assert!(r.all_local_within(0.99, 1), "{r}");
            assert!(r.top1_agree >= min_top1, "{r}");
            assert!(r.max_abs_logit_diff < 1.0, "{r}");
        }
    }
}

fn data_dir() -> Option<PathBuf> {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    d.exists().then_some(d)
}

/// MobileNetV2 width 0.25 for 1×28×28 (the small configuration), 40 float steps and 20 QAT
/// steps on Fashion-MNIST (batch 32), compared on 128 test images.
#[test]
fn small_mobilenet_v2_fashion_mnist_parity() {
    let dir = data_dir();
    let train = match qat_data::load("fashion-mnist", qat_data::Split::Train, dir.as_deref()) {
        Ok(d) => d,
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            println!("SKIP small_mobilenet_v2_fashion_mnist_parity: {e}");
            return;
        }
        Err(e) => panic!("Fashion-MNIST missing in CI: {e}"),
    };
    let test = qat_data::load("fashion-mnist", qat_data::Split::Test, dir.as_deref()).unwrap();
    let (mean, std) = (0.2860, 0.3530);
    let dev = &Device::Cpu;
    let images = |d: &qat_data::Dataset, start: usize, n: usize| {
        let px = d.rows * d.cols;
        let v: Vec<f32> = d.images[start * px..(start + n) * px]
            .iter()
            .map(|&p| (p as f32 / 255.0 - mean) / std)
            .collect();
        let x = Tensor::from_vec(v, (n, 1, d.rows, d.cols), dev).unwrap();
        let y: Vec<u32> = d.labels[start..start + n]
            .iter()
            .map(|&l| l as u32)
            .collect();
        (x, Tensor::new(y, dev).unwrap())
    };
    let cfg = MobileNetV2Config::small(1, 28, 0.25, 10);
    let m = GraphModule::new(build(&cfg).unwrap(), 7, dev).unwrap();
    let sgd = |p, lr| {
        Sgd::new(
            p,
            SgdConfig {
                lr,
                momentum: 0.9,
                dampening: 0.0,
                nesterov: true,
                weight_decay: WeightDecay::Decoupled(4e-5),
                max_grad_norm: None,
            },
        )
        .unwrap()
    };
    let (steps, batch) = (40, 32);
    let mut opt = sgd(m.trainable(), 0.05);
    for s in 0..steps {
        let (x, y) = images(&train, s * batch, batch);
        let loss = candle_nn::loss::cross_entropy(&m.forward_t(&x, true).unwrap(), &y).unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    let (xt, yt) = images(&test, 0, 128);
    let acc = qat_graph_accuracy(&m.forward_t(&xt, false).unwrap(), &yt);
    println!("fp32 accuracy after {steps} steps on 128 test images: {acc:.3}");
    let q = prepare_qat_module(m, &QConfig::default_qat()).unwrap();
    let mut opt = sgd(q.trainable(), 0.005);
    for s in 0..steps / 2 {
        if s == steps / 4 {
            q.freeze_bn_stats();
            q.enable_observers(false);
        }
        let (x, y) = images(&train, (steps + s) * batch, batch);
        let loss = candle_nn::loss::cross_entropy(&q.forward_t(&x, true).unwrap(), &y).unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    let int8 = convert(&q).unwrap();
    let batches: Vec<Tensor> = (0..2).map(|i| images(&test, i * 64, 64).0).collect();
    let r = compare_batches(&q, &int8, &batches).unwrap();
    println!("{r}");
    summary("small w0.25 fake-quant vs int8", &r);
    let e = compare_integer_exact_batches(&q, &int8, &batches).unwrap();
    summary("small w0.25 integer-exact vs int8", &e);
    let acc = qat_graph_accuracy(&q.forward_t(&xt, false).unwrap(), &yt);
    println!("QAT fake-quant accuracy on 128 test images: {acc:.3}");
    // Not a collapsed network (whose constant logits would agree trivially).
    assert!(
        acc > 0.2,
        "training did not work: accuracy {acc} (chance 0.1)"
    );
    assert!(e.all_within(1.0, 0), "{e}");
    assert_eq!(e.max_abs_logit_diff, 0.0);
    // Layer by layer the simulation (pool mean and bias rounded as int8 rounds them) is
    // measured ≥ 99.9988% equal and ≤ 1 step at every layer (before those two: 98.55% at
    // the pool, 99% elsewhere). End to end the rare one-step differences still grow
    // through the 17 blocks (measured: worst layer 95.2% equal, up to 12 steps; top-1
    // 126/128; before: 42% equal, 20 steps, 125/128); the int8 model agrees with the
    // integer-exact mode instead, bit for bit.
    assert!(r.all_local_within(0.999, 1), "{r}");
    assert!(
        r.layers.iter().all(|l| l.end_to_end.equal_fraction >= 0.9),
        "{r}"
    );
    assert!(r.top1_agreement >= 0.95, "{r}");
}

fn qat_graph_accuracy(logits: &Tensor, labels: &Tensor) -> f64 {
    let p = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap();
    let l = labels.to_vec1::<u32>().unwrap();
    p.iter().zip(&l).filter(|(a, b)| a == b).count() as f64 / l.len() as f64
}
