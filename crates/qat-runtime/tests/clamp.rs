//! `Activation::Clamp`: explicit u8 output bounds on conv (GEMM and depthwise paths), linear
//! and add — what a converted model uses for narrowed fake-quant ranges (`reduce_range`:
//! `[0, 127]`). Reference: the unclamped scalar reference clamped afterwards (requantization
//! is monotone and the bounds are integers, so clamping after equals clamping inside), on every
//! supported ISA; file round trip; reversed bounds are an `Err`.

mod common;

use common::*;
use qat_runtime::{
    Activation, Bias, LinearParams, ModelBuilder, ModelOptions, QuantizedModel, Shape, TracedValue,
    ValueData,
};

const S: Shape = Shape::new(6, 7, 7);

struct Net {
    in_q: qat_core::QParams,
    c1: qat_runtime::Conv2dParams,
    dw: qat_runtime::Conv2dParams,
    add_q: qat_core::QParams,
    fc: LinearParams,
    clamps: [(u8, u8); 4],
}

fn net(seed: u64) -> Net {
    let mut r = rng(seed);
    let clamps = [(3, 100), (0, 127), (20, 127), (10, 90)];
    let act = |i: usize| Activation::Clamp {
        qmin: clamps[i].0,
        qmax: clamps[i].1,
    };
    let c1 = conv(&mut r, 6, 6, 3, 1, 1, 1, Bias::None, q(0.05, 60), act(0));
    let dw = conv(&mut r, 6, 6, 3, 1, 1, 6, Bias::None, q(0.04, 50), act(1));
    let fc = LinearParams {
        out_features: 5,
        weight: weights(&mut r, 5 * 6),
        weight_scales: scales(&mut r, 5, 0.002, 0.006),
        bias: Bias::None,
        output: q(0.03, 70),
        activation: act(3),
    };
    Net {
        in_q: q(0.02, 128),
        c1,
        dw,
        add_q: q(0.06, 40),
        fc,
        clamps,
    }
}

fn build(n: &Net, options: ModelOptions) -> QuantizedModel {
    let mut b = ModelBuilder::new();
    b.input("x", S, n.in_q).unwrap();
    b.conv2d("c1", "x", n.c1.clone()).unwrap();
    b.conv2d("dw", "c1", n.dw.clone()).unwrap();
    let (lo, hi) = n.clamps[2];
    b.add(
        "add",
        "c1",
        "dw",
        n.add_q,
        Activation::Clamp { qmin: lo, qmax: hi },
    )
    .unwrap();
    b.global_avg_pool("pool", "add", None).unwrap();
    b.linear("fc", "pool", n.fc.clone()).unwrap();
    b.dequantize("y", "fc").unwrap();
    b.build_with("y", options).unwrap()
}

fn clamp(mut t: QT, (lo, hi): (u8, u8)) -> QT {
    t.data.iter_mut().for_each(|v| *v = (*v).clamp(lo, hi));
    t
}

/// The scalar reference without activations, clamped after each op.
fn reference(n: &Net, x: &[f32], batch: usize) -> Vec<(&'static str, QT)> {
    let none = |p: &qat_runtime::Conv2dParams| qat_runtime::Conv2dParams {
        activation: Activation::None,
        ..p.clone()
    };
    let xq = ref_quantize_nchw(x, batch, S, n.in_q);
    let c1 = clamp(ref_conv(&xq, &none(&n.c1)), n.clamps[0]);
    let dw = clamp(ref_conv(&c1, &none(&n.dw)), n.clamps[1]);
    let add = clamp(ref_add(&c1, &dw, n.add_q, Activation::None), n.clamps[2]);
    let pool = ref_gap(&add, add.q);
    let fc = LinearParams {
        activation: Activation::None,
        ..n.fc.clone()
    };
    let fc = clamp(ref_linear(&pool, &fc), n.clamps[3]);
    vec![("c1", c1), ("dw", dw), ("add", add), ("fc", fc)]
}

fn u8_of<'a>(trace: &'a [TracedValue], name: &str) -> &'a [u8] {
    match &trace.iter().find(|t| t.name == name).unwrap().data {
        ValueData::U8 { data, .. } => data,
        ValueData::F32(_) => panic!("{name} is f32"),
    }
}

#[test]
fn clamp_bounds_every_op_like_the_reference_on_every_isa() {
    let n = net(3);
    let batch = 3;
    let x = inputs(&mut rng(4), batch * 6 * 49, 3.0);
    let want = reference(&n, &x, batch);
    for isa in qat_runtime::Isa::supported() {
        let m = build(
            &n,
            ModelOptions {
                isa: Some(isa),
                threads: 1,
            },
        );
        let trace = m.run_traced(&x, batch).unwrap();
        for (name, w) in &want {
            let got = u8_of(&trace, name);
            assert_eq!(got, w.data.as_slice(), "{isa:?}: {name}");
            let (lo, hi) = (*got.iter().min().unwrap(), *got.iter().max().unwrap());
            let bounds = n.clamps[["c1", "dw", "add", "fc"]
                .iter()
                .position(|s| s == name)
                .unwrap()];
            assert!(lo >= bounds.0 && hi <= bounds.1, "{name}: [{lo}, {hi}]");
        }
    }
    // The bounds bite: without them the values leave the range.
    let free = reference(
        &Net {
            clamps: [(0, 255); 4],
            ..net(3)
        },
        &x,
        batch,
    );
    assert!(free[0].1.data.iter().any(|v| !(3..=100).contains(v)));
}

#[test]
fn clamp_survives_the_file_round_trip() {
    let n = net(5);
    let m = build(&n, ModelOptions::default());
    let bytes = m.to_bytes().unwrap();
    let back = QuantizedModel::from_bytes(&bytes, ModelOptions::default()).unwrap();
    assert_eq!(back.ops(), m.ops());
    let x = inputs(&mut rng(6), 2 * 6 * 49, 3.0);
    assert_eq!(back.run(&x, 2).unwrap(), m.run(&x, 2).unwrap());
}

#[test]
fn clamp_with_reversed_bounds_is_an_error() {
    let n = net(7);
    let mut b = ModelBuilder::new();
    b.input("x", S, n.in_q).unwrap();
    let bad = qat_runtime::Conv2dParams {
        activation: Activation::Clamp { qmin: 9, qmax: 3 },
        ..n.c1.clone()
    };
    let e = b.conv2d("c1", "x", bad).unwrap_err().to_string();
    assert!(e.contains("c1") && e.contains("qmin > qmax"), "{e}");
    b.conv2d("c1", "x", n.c1.clone()).unwrap();
    let e = b
        .add(
            "a",
            "c1",
            "c1",
            n.add_q,
            Activation::Clamp {
                qmin: 200,
                qmax: 100,
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("qmin > qmax"), "{e}");
}
