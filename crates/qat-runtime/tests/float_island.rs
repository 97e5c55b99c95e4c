//! Float islands: f32 ops between a dequantize and a quantize, checked against an f64
//! computation on the traced input of each op; the quantize at the border is exact.

mod common;

use common::*;
use qat_runtime::{
    Activation, Bias, Isa, ModelBuilder, ModelOptions, Shape, TracedValue, ValueData,
};

fn f32_of<'a>(t: &'a [TracedValue], name: &str) -> &'a [f32] {
    match &t.iter().find(|v| v.name == name).unwrap().data {
        ValueData::F32(v) => v,
        ValueData::U8 { .. } => panic!("{name} is u8"),
    }
}

fn u8_of<'a>(t: &'a [TracedValue], name: &str) -> &'a [u8] {
    match &t.iter().find(|v| v.name == name).unwrap().data {
        ValueData::U8 { data, .. } => data,
        ValueData::F32(_) => panic!("{name} is f32"),
    }
}

fn close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-5 * (1.0 + w.abs());
        assert!((g as f64 - w).abs() <= tol, "{what}[{i}]: {g} vs {w}");
    }
}

struct Island {
    c: usize,
    co: usize,
    w1: Vec<f32>,
    b1: Vec<f32>,
    wl: Vec<f32>,
    bl: Vec<f32>,
}

fn build(isl: &Island, options: ModelOptions) -> qat_runtime::QuantizedModel {
    let mut r = rng(41);
    let c = isl.c;
    let mut b = ModelBuilder::new();
    b.input("x", Shape::new(3, 6, 5), q(0.03, 100)).unwrap();
    b.conv2d(
        "conv",
        "x",
        conv(
            &mut r,
            3,
            c,
            3,
            1,
            1,
            1,
            Bias::None,
            q(0.04, 90),
            Activation::None,
        ),
    )
    .unwrap();
    b.dequantize("conv_f", "conv").unwrap();
    b.float_conv1x1("pw", "conv_f", isl.co, isl.w1.clone(), Some(isl.b1.clone()))
        .unwrap();
    b.float_hardswish("hs", "pw").unwrap();
    b.float_relu("relu", "pw").unwrap();
    b.float_add("sum", "hs", "relu").unwrap();
    b.quantize("sum_q", "sum", q(0.02, 64)).unwrap();
    b.global_avg_pool("pool", "sum_q", None).unwrap();
    b.dequantize("pool_f", "pool").unwrap();
    b.float_linear("head", "pool_f", 4, isl.wl.clone(), Some(isl.bl.clone()))
        .unwrap();
    b.build_with("head", options).unwrap()
}

fn island() -> Island {
    let mut r = rng(42);
    let (c, co) = (6, 5);
    Island {
        c,
        co,
        w1: inputs(&mut r, co * c, 1.0),
        b1: inputs(&mut r, co, 1.0),
        wl: inputs(&mut r, 4 * co, 1.0),
        bl: inputs(&mut r, 4, 1.0),
    }
}

#[test]
fn float_ops_match_f64() {
    let isl = island();
    let m = build(&isl, ModelOptions::default());
    let n = 3;
    let x = inputs(&mut rng(43), n * 3 * 6 * 5, 3.0);
    let t = m.run_traced(&x, n).unwrap();
    let conv_f = f32_of(&t, "conv_f");
    // dequantize is exact per qat-core.
    let cq = u8_of(&t, "conv");
    let deq: Vec<f32> = cq
        .iter()
        .map(|&v| qat_core::dequantize(v as i32, q(0.04, 90)))
        .collect();
    assert_eq!(conv_f, &deq[..]);
    // 1×1 conv at every NHWC pixel.
    let (c, co) = (isl.c, isl.co);
    let pixels = conv_f.len() / c;
    let mut pw = vec![0f64; pixels * co];
    for p in 0..pixels {
        for o in 0..co {
            pw[p * co + o] = isl.b1[o] as f64
                + (0..c)
                    .map(|i| conv_f[p * c + i] as f64 * isl.w1[o * c + i] as f64)
                    .sum::<f64>();
        }
    }
    close(f32_of(&t, "pw"), &pw, "float_conv1x1");
    let pw32 = f32_of(&t, "pw");
    let hs: Vec<f64> = pw32
        .iter()
        .map(|&v| {
            let v = v as f64;
            v * (v + 3.0).clamp(0.0, 6.0) / 6.0
        })
        .collect();
    close(f32_of(&t, "hs"), &hs, "hardswish");
    assert!(
        hs.iter().any(|&v| v < 0.0) && hs.iter().any(|&v| v > 3.0),
        "hardswish regions not covered"
    );
    let relu: Vec<f64> = pw32.iter().map(|&v| (v as f64).max(0.0)).collect();
    close(f32_of(&t, "relu"), &relu, "relu");
    let sum: Vec<f64> = f32_of(&t, "hs")
        .iter()
        .zip(f32_of(&t, "relu"))
        .map(|(&a, &b)| a as f64 + b as f64)
        .collect();
    close(f32_of(&t, "sum"), &sum, "float add");
    // The quantize at the island's border is exactly qat-core's.
    let want_q: Vec<u8> = f32_of(&t, "sum")
        .iter()
        .map(|&v| qat_core::quantize(v, q(0.02, 64), qat_core::QDType::quint8()) as u8)
        .collect();
    assert_eq!(u8_of(&t, "sum_q"), &want_q[..]);
    // Head: float linear on the pooled, dequantized features.
    let pf = f32_of(&t, "pool_f");
    let mut head = vec![0f64; n * 4];
    for b in 0..n {
        for o in 0..4 {
            head[b * 4 + o] = isl.bl[o] as f64
                + (0..co)
                    .map(|i| pf[b * co + i] as f64 * isl.wl[o * co + i] as f64)
                    .sum::<f64>();
        }
    }
    let out = m.run(&x, n).unwrap();
    close(&out, &head, "float_linear");
    assert_eq!(out, f32_of(&t, "head"));
}

#[test]
fn float_islands_are_identical_across_isas_and_threads() {
    let isl = island();
    let x = inputs(&mut rng(44), 70 * 3 * 6 * 5, 3.0);
    let want = build(
        &isl,
        ModelOptions {
            isa: Some(Isa::Scalar),
            threads: 1,
        },
    )
    .run_traced(&x, 70)
    .unwrap();
    for isa in Isa::supported() {
        for threads in [1, 2] {
            let m = build(
                &isl,
                ModelOptions {
                    isa: Some(isa),
                    threads,
                },
            );
            assert_eq!(m.run_traced(&x, 70).unwrap(), want, "{isa} × {threads}");
        }
    }
}

#[test]
fn spatial_float_output_is_returned_nchw() {
    // Output = an f32 [C, H, W] value: `run` returns NCHW.
    let mut b = ModelBuilder::new();
    b.input("x", Shape::new(2, 2, 3), q(0.5, 10)).unwrap();
    b.dequantize("y", "x").unwrap();
    let m = b.build("y").unwrap();
    let x: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
    assert_eq!(m.run(&x, 1).unwrap(), x);
    // And a u8 output value is dequantized, NCHW too.
    let mut b = ModelBuilder::new();
    b.input("x", Shape::new(2, 2, 3), q(0.5, 10)).unwrap();
    let m = b.build("x").unwrap();
    assert_eq!(m.run(&x, 1).unwrap(), x);
}
