//! Depthwise 3×3 on MobileNetV2's layers (batch 1, one thread, the active ISA), throughput in
//! multiply-accumulates: criterion prints `Melem/s` = million MAC/s.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use qat_core::QParams;
use qat_kernels::conv::Conv2dGeometry;
use qat_kernels::dwconv::{shapes::MOBILENET_V2_DW_LAYERS, DwConv};
use qat_kernels::{isa, Activation};

fn bench(c: &mut Criterion) {
    let isa = isa::active();
    let mut group = c.benchmark_group(format!("dwconv3x3_{isa}"));
    group.sample_size(10);
    group.warm_up_time(std::time::Duration::from_millis(300));
    group.measurement_time(std::time::Duration::from_millis(800));
    for layer in MOBILENET_V2_DW_LAYERS {
        let ch = layer.c;
        let w: Vec<i8> = (0..ch * 9).map(|i| (i * 37 % 255) as i8).collect();
        let dw = DwConv::new(
            ch,
            Conv2dGeometry::square(3, layer.stride, 1),
            &w,
            &vec![0.01; ch],
            &vec![100; ch],
            QParams {
                scale: 0.02,
                zero_point: 7,
            },
            QParams {
                scale: 0.05,
                zero_point: 3,
            },
            Activation::Relu6,
        )
        .unwrap();
        let x: Vec<u8> = (0..layer.hw * layer.hw * ch)
            .map(|i| (i * 13 % 256) as u8)
            .collect();
        let mut y = vec![0u8; layer.out_hw() * layer.out_hw() * ch];
        group.throughput(Throughput::Elements(layer.macs() as u64));
        let id = format!(
            "{}_c{}_{}x{}_s{}",
            layer.net, ch, layer.hw, layer.hw, layer.stride
        );
        group.bench_function(id, |b| {
            b.iter(|| dw.run(&x, 1, layer.hw, layer.hw, &mut y, isa, 1).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
