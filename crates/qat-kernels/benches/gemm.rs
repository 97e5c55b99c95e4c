//! Criterion benches of the packed GEMM (u8 output, fused requant), one group per shape and
//! one id per kernel. Throughput is `Elements(m·n·k)`: read the elements/s figure as MAC/s.
//! `qat-bench gemm` prints the same figures as JSON lines beside tract-linalg and candle.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qat_core::Requant;
use qat_kernels::gemm::PackedGemm;
use qat_kernels::Isa;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SHAPES: [(usize, usize, usize); 4] = [
    (784, 96, 576),
    (196, 192, 1152),
    (3136, 32, 192),
    (1024, 1024, 1024),
];

fn gemm(c: &mut Criterion) {
    for (m, k, n) in SHAPES {
        let mut group = c.benchmark_group(format!("gemm_u8/{m}x{k}x{n}"));
        // Elements = multiply-accumulates (not FLOPs, not bytes).
        group.throughput(Throughput::Elements((m * n * k) as u64));
        group.sample_size(20);
        let mut rng = StdRng::seed_from_u64(0);
        let a: Vec<u8> = (0..m * k).map(|_| rng.gen()).collect();
        let w: Vec<i8> = (0..n * k).map(|_| rng.gen()).collect();
        let rq = [Requant {
            multiplier: 1.0 / (64.0 * k as f32),
            zero_point: 128,
            qmin: 0,
            qmax: 255,
        }];
        let mut out = vec![0u8; m * n];
        for isa in Isa::supported() {
            let g = PackedGemm::new(&w, n, k, None, 3, &rq, isa).unwrap();
            for threads in [1, 2] {
                let id = BenchmarkId::new(g.kernel_name(), format!("{threads}t"));
                group.bench_function(id, |b| {
                    b.iter(|| g.gemm_u8(&a, m, k, &mut out, n, threads).unwrap())
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, gemm);
criterion_main!(benches);
