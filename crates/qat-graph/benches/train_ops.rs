//! Training-op benchmarks: each fast op next to candle's own version, forward and
//! forward+backward, on MobileNetV2 shapes (the 144-channel 56×56 block at batch 8 and the
//! 28×28 width-0.5 model's layers at batch 32).
//!
//! Run single-threaded, pinned:
//! `RAYON_NUM_THREADS=1 taskset -c 1 cargo bench -p qat-graph --bench train_ops -- --warm-up-time 1 --measurement-time 3`
//! Global allocator: mimalloc (glibc malloc returns big buffers to the OS after each op, and
//! page faults then dominate; see MEASURED.md).

use candle_core::{Device, Result, Tensor, Var};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use qat_graph::ops;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    // A cheap deterministic fill; the values do not matter for timing.
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n as u64)
        .map(|i| {
            let h = (i ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            h as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn var(shape: &[usize], seed: u64) -> Var {
    Var::from_tensor(&randn(shape, seed)).unwrap()
}

/// Benches `f` forward-only and forward + backward (loss = sum of the output).
fn fwd_bwd(
    c: &mut Criterion,
    group: &str,
    name: &str,
    vars: &[Var],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let detached: Vec<Tensor> = ts.iter().map(|t| t.detach()).collect();
    let mut g = c.benchmark_group(group);
    g.sample_size(10);
    g.bench_function(BenchmarkId::new(name, "fwd"), |b| {
        b.iter(|| f(&detached).unwrap())
    });
    g.bench_function(BenchmarkId::new(name, "fwd+bwd"), |b| {
        b.iter(|| f(&ts).unwrap().sum_all().unwrap().backward().unwrap())
    });
    g.finish();
}

fn depthwise(c: &mut Criterion, tag: &str, (n, ch, hw): (usize, usize, usize), stride: usize) {
    let vars = [var(&[n, ch, hw, hw], 1), var(&[ch, 1, 3, 3], 2)];
    let group = format!("depthwise3x3_{tag}");
    fwd_bwd(c, &group, "fast", &vars, |t| {
        ops::depthwise_conv2d(&t[0], &t[1], None, stride, 1)
    });
    fwd_bwd(c, &group, "candle", &vars, |t| {
        ops::depthwise_conv2d_slow(&t[0], &t[1], None, stride, 1, 1)
    });
}

fn pointwise(c: &mut Criterion, tag: &str, (n, ci, co, hw): (usize, usize, usize, usize)) {
    let vars = [var(&[n, ci, hw, hw], 3), var(&[co, ci, 1, 1], 4)];
    let group = format!("conv1x1_{tag}");
    fwd_bwd(c, &group, "fast", &vars, |t| {
        ops::conv1x1(&t[0], &t[1], None, 1)
    });
    fwd_bwd(c, &group, "candle", &vars, |t| {
        ops::conv1x1_slow(&t[0], &t[1], None, 1)
    });
}

fn activations(c: &mut Criterion, tag: &str, shape: &[usize]) {
    let vars = [Var::from_tensor(&(randn(shape, 5) * 4.0).unwrap()).unwrap()];
    let group = format!("relu6_{tag}");
    fwd_bwd(c, &group, "fast", &vars, |t| ops::relu6(&t[0]));
    fwd_bwd(c, &group, "candle_clamp", &vars, |t| t[0].clamp(0f32, 6f32));
    let group = format!("relu_{tag}");
    fwd_bwd(c, &group, "fast", &vars, |t| ops::relu(&t[0]));
    fwd_bwd(c, &group, "candle", &vars, |t| t[0].relu());
}

fn batch_norm(c: &mut Criterion, tag: &str, (n, ch, hw): (usize, usize, usize)) {
    let vars = [var(&[n, ch, hw, hw], 6), var(&[ch], 7), var(&[ch], 8)];
    let group = format!("batch_norm_train_{tag}");
    fwd_bwd(c, &group, "fast", &vars, |t| {
        Ok(ops::batch_norm_train(&t[0], &t[1], &t[2], 1e-5)?.y)
    });
    fwd_bwd(c, &group, "candle", &vars, |t| {
        Ok(ops::batch_norm_train_slow(&t[0], &t[1], &t[2], 1e-5)?.y)
    });
}

fn batch_norm_act(c: &mut Criterion, tag: &str, (n, ch, hw): (usize, usize, usize)) {
    let vars = [var(&[n, ch, hw, hw], 6), var(&[ch], 7), var(&[ch], 8)];
    let group = format!("batch_norm_relu6_train_{tag}");
    fwd_bwd(c, &group, "fused", &vars, |t| {
        Ok(ops::batch_norm_act_train(&t[0], &t[1], &t[2], 1e-5, 0.0, 6.0)?.y)
    });
    fwd_bwd(c, &group, "fast_unfused", &vars, |t| {
        ops::relu6(&ops::batch_norm_train(&t[0], &t[1], &t[2], 1e-5)?.y)
    });
    fwd_bwd(c, &group, "candle", &vars, |t| {
        Ok(ops::batch_norm_act_train_slow(&t[0], &t[1], &t[2], 1e-5, 0.0, 6.0)?.y)
    });
}

/// The QAT Conv+BN tail: `BN(conv / scale_factor)` with batch statistics.
fn prescaled_bn(c: &mut Criterion, tag: &str, (n, ch, hw): (usize, usize, usize)) {
    let sf = Var::from_tensor(&(randn(&[ch], 11).abs().unwrap() + 0.5).unwrap()).unwrap();
    let vars = [var(&[n, ch, hw, hw], 6), sf, var(&[ch], 7), var(&[ch], 8)];
    let group = format!("qat_unscale_batch_norm_{tag}");
    fwd_bwd(c, &group, "fused", &vars, |t| {
        Ok(ops::batch_norm_train_prescaled(&t[0], &t[1], None, &t[2], &t[3], 1e-5)?.y)
    });
    fwd_bwd(c, &group, "fast_unfused", &vars, |t| {
        let z = ops::channel_div_nchw(&t[0], &t[1], None)?;
        Ok(ops::batch_norm_train(&z, &t[2], &t[3], 1e-5)?.y)
    });
    fwd_bwd(c, &group, "candle", &vars, |t| {
        Ok(ops::batch_norm_train_prescaled_slow(&t[0], &t[1], None, &t[2], &t[3], 1e-5)?.y)
    });
}

fn stem(c: &mut Criterion) {
    // The 28×28 model's first conv: 3×3, 1 → 16 channels, stays on candle's conv2d.
    let vars = [var(&[32, 1, 28, 28], 9), var(&[16, 1, 3, 3], 10)];
    fwd_bwd(c, "stem3x3_1to16_28x28_b32", "candle", &vars, |t| {
        t[0].conv2d(&t[1], 1, 1, 1, 1)
    });
}

fn benches(c: &mut Criterion) {
    // The headline shapes (MEASURED.md): MobileNetV2-224's 144-channel block at 56×56, batch 8.
    depthwise(c, "144ch_56x56_b8", (8, 144, 56), 1);
    pointwise(c, "144to24_56x56_b8", (8, 144, 24, 56));
    activations(c, "8x144x56x56", &[8, 144, 56, 56]);
    batch_norm(c, "144ch_56x56_b8", (8, 144, 56));
    // The 28×28 width-0.5 model at batch 32 (features.3 / features.4 shapes).
    depthwise(c, "96ch_28x28_b32", (32, 96, 28), 1);
    depthwise(c, "96ch_28x28_s2_b32", (32, 96, 28), 2);
    pointwise(c, "16to96_28x28_b32", (32, 16, 96, 28));
    pointwise(c, "96to16_28x28_b32", (32, 96, 16, 28));
    batch_norm(c, "96ch_28x28_b32", (32, 96, 28));
    activations(c, "32x96x28x28", &[32, 96, 28, 28]);
    batch_norm_act(c, "96ch_28x28_b32", (32, 96, 28));
    prescaled_bn(c, "96ch_28x28_b32", (32, 96, 28));
    stem(c);
}

criterion_group!(train_ops, benches);
criterion_main!(train_ops);
