//! Time the depthwise 3×3 kernel on MobileNetV2's layers at a given batch, one thread, the
//! active ISA: best-of-`reps` ms per layer and the model's depthwise total (each layer
//! weighted by how often the network runs it). A development tool for kernel work:
//! `cargo run --release -p qat-kernels --example dw_layers -- 32 20 mnv2_28_w0.5`.

use qat_core::QParams;
use qat_kernels::conv::Conv2dGeometry;
use qat_kernels::dwconv::{shapes::MOBILENET_V2_DW_LAYERS, DwConv};
use qat_kernels::{isa, Activation};
use std::time::Instant;

/// How often each distinct layer occurs in its network (same order as the shape table).
const REPEATS: [usize; 20] = [1, 1, 1, 1, 2, 1, 4, 2, 1, 3, 1, 1, 1, 1, 2, 1, 4, 2, 1, 3];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let batch: usize = args.get(1).map_or(32, |s| s.parse().expect("batch"));
    let reps: usize = args.get(2).map_or(20, |s| s.parse().expect("reps"));
    let net = args.get(3).map_or("mnv2_28_w0.5", |s| s.as_str());
    let isa = isa::active();
    let mut total = 0.0;
    let mut macs_total = 0usize;
    for (layer, &rep) in MOBILENET_V2_DW_LAYERS.iter().zip(&REPEATS) {
        if layer.net != net {
            continue;
        }
        let ch = layer.c;
        let w: Vec<i8> = (0..ch * 9).map(|i| (i * 37 % 255) as i8).collect();
        let dw = DwConv::new(
            ch,
            Conv2dGeometry::square(3, layer.stride, 1),
            &w,
            &vec![0.004; ch],
            &(0..ch)
                .map(|i| (i as i32 * 97) % 4000 - 2000)
                .collect::<Vec<_>>(),
            QParams {
                scale: 0.02,
                zero_point: 7,
            },
            // As the model's depthwise layers: ReLU6 outputs, zero point 0, qmax 255.
            QParams {
                scale: 0.0227,
                zero_point: 0,
            },
            Activation::Relu6,
        )
        .unwrap();
        let x: Vec<u8> = (0..batch * layer.hw * layer.hw * ch)
            .map(|i| (i * 13 % 251) as u8)
            .collect();
        let mut y = vec![0u8; batch * layer.out_hw() * layer.out_hw() * ch];
        let mut scratch = vec![0u8; dw.scratch_len(layer.hw, layer.hw, isa, 1).unwrap()];
        let mut best = f64::INFINITY;
        for _ in 0..reps {
            let t = Instant::now();
            dw.run_with_scratch(&x, batch, layer.hw, layer.hw, &mut y, isa, 1, &mut scratch)
                .unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        let macs = layer.macs() * batch;
        println!(
            "c{:4} {:3}x{:<3} s{} x{}  {:8.4} ms  {:6.1} GMAC/s  {:5.1}%  {}",
            ch,
            layer.hw,
            layer.hw,
            layer.stride,
            rep,
            best * 1e3,
            macs as f64 / best / 1e9,
            macs as f64 / best / 1e9 / 228.6 * 100.0,
            dw.kernel_name(isa, layer.hw).unwrap()
        );
        total += best * rep as f64;
        macs_total += macs * rep;
    }
    println!(
        "total {:.4} ms  {:.1} GMAC/s  {:.1}% of 228.6",
        total * 1e3,
        macs_total as f64 / total / 1e9,
        macs_total as f64 / total / 1e9 / 228.6 * 100.0
    );
}
