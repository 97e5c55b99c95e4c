//! Fake-quant forward and forward + backward on a [32, 96, 28, 28] f32 tensor, per-tensor and
//! per-channel (axis 1), next to candle's elementwise multiply of the same tensor (the
//! yardstick). Run single-threaded:
//! `RAYON_NUM_THREADS=1 taskset -c 1 cargo bench -p qat-fakequant --bench fake_quant`.

use candle_core::{Device, Tensor, Var};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use qat_fakequant::{fake_quantize_per_channel, fake_quantize_per_tensor, kernels::Isa};

const DIMS: [usize; 4] = [32, 96, 28, 28];

fn input() -> Tensor {
    let n: usize = DIMS.iter().product();
    Tensor::from_vec(
        qat_testutil::lcg_values(n, 42, 6.0),
        &DIMS[..],
        &Device::Cpu,
    )
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let x = input();
    let other = (x.clone() * 0.5).unwrap();
    let dev = Device::Cpu;
    let scale = Tensor::from_vec(
        (0..96)
            .map(|i| 0.01 + 0.0005 * i as f32)
            .collect::<Vec<_>>(),
        96,
        &dev,
    )
    .unwrap();
    let zp = Tensor::from_vec((0..96i32).map(|i| i % 7 - 3).collect::<Vec<_>>(), 96, &dev).unwrap();
    let per_tensor = |t: &Tensor| fake_quantize_per_tensor(t, 0.02, 3, -128, 127);
    let per_channel = |t: &Tensor| fake_quantize_per_channel(t, &scale, &zp, 1, -128, 127);

    let mut g = c.benchmark_group(format!("fake_quant_32x96x28x28_{:?}", Isa::detect()));
    g.throughput(Throughput::Elements(x.elem_count() as u64));
    g.bench_function("mul_fwd", |b| b.iter(|| black_box(x.mul(&other).unwrap())));
    g.bench_function("per_tensor_fwd", |b| {
        b.iter(|| black_box(per_tensor(&x).unwrap()))
    });
    g.bench_function("per_channel_fwd", |b| {
        b.iter(|| black_box(per_channel(&x).unwrap()))
    });

    let v = Var::from_tensor(&x).unwrap();
    g.bench_function("mul_fwd_bwd", |b| {
        b.iter(|| black_box(v.as_tensor().mul(&other).unwrap().backward().unwrap()))
    });
    g.bench_function("per_tensor_fwd_bwd", |b| {
        b.iter(|| black_box(per_tensor(v.as_tensor()).unwrap().backward().unwrap()))
    });
    g.bench_function("per_channel_fwd_bwd", |b| {
        b.iter(|| black_box(per_channel(v.as_tensor()).unwrap().backward().unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
