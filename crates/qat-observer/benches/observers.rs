//! Observer cost per training step on a [32, 96, 28, 28] f32 activation, next to candle's own
//! `min` + `max` reductions of the same tensor (the yardstick a user would otherwise write).
//! Run single-threaded:
//! `RAYON_NUM_THREADS=1 taskset -c 1 cargo bench -p qat-observer --bench observers`.

use candle_core::{Device, Tensor};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use qat_observer::{
    HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver, Observer, ObserverConfig, PerChannelMinMaxObserver,
    QDType, QScheme,
};

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
    let per_channel =
        |axis| ObserverConfig::new(QDType::qint8(), QScheme::PerChannelSymmetric { axis });
    let mut g = c.benchmark_group("observe_32x96x28x28");
    g.throughput(Throughput::Elements(x.elem_count() as u64));
    g.bench_function("candle_min_max", |b| {
        b.iter(|| {
            let f = x.flatten_all().unwrap();
            black_box((f.min(0).unwrap(), f.max(0).unwrap()))
        })
    });
    let mut mm = MinMaxObserver::new(ObserverConfig::default()).unwrap();
    g.bench_function("minmax", |b| b.iter(|| mm.observe(black_box(&x)).unwrap()));
    let mut ma = MovingAverageMinMaxObserver::new(ObserverConfig::default(), 0.01).unwrap();
    g.bench_function("moving_average", |b| {
        b.iter(|| ma.observe(black_box(&x)).unwrap())
    });
    for axis in [0, 1, 3] {
        let mut pc = PerChannelMinMaxObserver::new(per_channel(axis)).unwrap();
        g.bench_function(format!("per_channel_axis{axis}"), |b| {
            b.iter(|| pc.observe(black_box(&x)).unwrap())
        });
    }
    let mut mpc = MovingAveragePerChannelMinMaxObserver::new(per_channel(1), 0.01).unwrap();
    g.bench_function("moving_average_per_channel_axis1", |b| {
        b.iter(|| mpc.observe(black_box(&x)).unwrap())
    });
    let mut h = HistogramObserver::new(ObserverConfig::default(), 2048).unwrap();
    g.bench_function("histogram", |b| {
        b.iter(|| h.observe(black_box(&x)).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("qparams");
    g.bench_function("histogram_2048_search", |b| {
        b.iter(|| black_box(h.qparams().unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
