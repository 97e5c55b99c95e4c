//! The integer-exact evaluation mode against the int8 runtime: bit-identical at every value.
//!
//! Two layers of tests: (1) hand-built int8 plans with random weights covering every runtime
//! op (3×3 / strided / grouped / depthwise / 1×1 convs, add, pool, flatten, linear, float
//! islands), on every ISA this CPU runs, several seeds and batch sizes; an accumulator bound
//! above 2^24 forces the f64 path; (2) QAT graphs trained a few steps, converted, and
//! evaluated in the integer-exact mode. Plus bad inputs.

mod parity_util;

use candle_core::{DType, Device, Tensor};
use qat_core::QParams;
use qat_graph::qat::int_exact::{self, IntData, IntExactPlan, IntValue};
use qat_runtime::{
    Activation, Bias, Conv2dParams, Isa, LinearParams, ModelBuilder, ModelOptions, Node, Op,
    QuantizedModel, Shape, TracedValue, ValueData, ValueType,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn qp(r: &mut ChaCha8Rng, lo: f32, hi: f32) -> QParams {
    QParams {
        scale: r.gen_range(lo..hi),
        zero_point: r.gen_range(0..=255),
    }
}

fn weights(r: &mut ChaCha8Rng, n: usize) -> Vec<i8> {
    (0..n).map(|_| r.gen_range(-127i32..=127) as i8).collect()
}

#[allow(clippy::too_many_arguments)]
fn conv(
    r: &mut ChaCha8Rng,
    ci: usize,
    co: usize,
    k: usize,
    stride: usize,
    pad: usize,
    groups: usize,
    act: Activation,
) -> Conv2dParams {
    Conv2dParams {
        out_channels: co,
        kernel: (k, k),
        stride: (stride, stride),
        padding: (pad, pad),
        dilation: (1, 1),
        groups,
        weight: weights(r, co * ci / groups * k * k),
        weight_scales: (0..co).map(|_| r.gen_range(0.002..0.02)).collect(),
        bias: Bias::I32((0..co).map(|_| r.gen_range(-3000..3000)).collect()),
        output: qp(r, 0.05, 0.3),
        activation: act,
    }
}

/// Every runtime op: quantized trunk with a residual add, a float island branch that comes
/// back through a quantize, pooling, linear head, float tail.
fn plan(seed: u64, options: ModelOptions) -> QuantizedModel {
    let r = &mut ChaCha8Rng::seed_from_u64(seed);
    let mut b = ModelBuilder::new();
    b.input("x", Shape::new(3, 9, 11), qp(r, 0.01, 0.05))
        .unwrap();
    b.conv2d("c1", "x", conv(r, 3, 8, 3, 2, 1, 1, Activation::Relu6))
        .unwrap();
    let mut dw = conv(r, 8, 8, 3, 1, 1, 8, Activation::Relu);
    dw.dilation = (1, 1);
    b.conv2d("dw", "c1", dw).unwrap();
    b.conv2d("pw", "dw", conv(r, 8, 8, 1, 1, 0, 1, Activation::None))
        .unwrap();
    b.add("add", "c1", "pw", qp(r, 0.1, 0.3), Activation::None)
        .unwrap();
    b.dequantize("add.dequant", "add").unwrap();
    let w: Vec<f32> = (0..64).map(|_| r.gen_range(-0.5..0.5)).collect();
    let bias: Vec<f32> = (0..8).map(|_| r.gen_range(-0.5..0.5)).collect();
    b.float_conv1x1("fconv", "add.dequant", 8, w, Some(bias))
        .unwrap();
    b.float_hardswish("fhs", "fconv").unwrap();
    b.quantize("fhs.quant", "fhs", qp(r, 0.02, 0.05)).unwrap();
    b.conv2d(
        "g",
        "fhs.quant",
        conv(
            r,
            8,
            6,
            3,
            1,
            0,
            2,
            Activation::Clamp {
                qmin: 20,
                qmax: 200,
            },
        ),
    )
    .unwrap();
    b.global_avg_pool("pool", "g", Some(qp(r, 0.05, 0.2)))
        .unwrap();
    b.flatten("flat", "pool").unwrap();
    b.linear(
        "fc",
        "flat",
        LinearParams {
            out_features: 5,
            weight: weights(r, 30),
            weight_scales: (0..5).map(|_| r.gen_range(0.002..0.02)).collect(),
            bias: Bias::I32((0..5).map(|_| r.gen_range(-3000..3000)).collect()),
            output: qp(r, 0.02, 0.1),
            activation: Activation::Relu,
        },
    )
    .unwrap();
    b.dequantize("fc.dequant", "fc").unwrap();
    let w: Vec<f32> = (0..20).map(|_| r.gen_range(-1.0..1.0)).collect();
    b.float_linear("head", "fc.dequant", 4, w, None).unwrap();
    b.float_relu("head.relu", "head").unwrap();
    b.float_add("out", "head", "head.relu").unwrap();
    b.build_with("out", options).unwrap()
}

fn inputs(seed: u64, dims: &[usize]) -> Tensor {
    let r = &mut ChaCha8Rng::seed_from_u64(seed);
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| r.gen_range(-3.0..6.0)).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// NHWC traced data → NCHW.
fn nchw<T: Copy + Default>(v: &[T], s: Shape) -> Vec<T> {
    let hw = s.h * s.w;
    let mut out = vec![T::default(); v.len()];
    for (i, &x) in v.iter().enumerate() {
        let (b, r) = (i / (hw * s.c), i % (hw * s.c));
        out[(b * s.c + r % s.c) * hw + r / s.c] = x;
    }
    out
}

/// Every value of the model's run equals the integer-exact one, bit for bit.
fn assert_identical(model: &QuantizedModel, x: &Tensor) -> usize {
    let n = x.dim(0).unwrap();
    let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let traced: Vec<TracedValue> = model.run_traced(&xv, n).unwrap();
    let exact = IntExactPlan::from_model(model).run_traced(x).unwrap();
    assert_eq!(traced.len(), exact.len());
    for (t, (name, v)) in traced.iter().zip(&exact) {
        assert_eq!(&t.name, name);
        assert_eq!(v.dims, [n, t.shape.c, t.shape.h, t.shape.w], "{name}");
        match (&t.data, &v.data) {
            (
                ValueData::U8 { data, qparams },
                IntData::U8 {
                    data: e,
                    qparams: eq,
                },
            ) => {
                assert_eq!(qparams, eq, "{name} qparams");
                let got = nchw(data, t.shape);
                let diff = got.iter().zip(e).filter(|(a, b)| a != b).count();
                assert_eq!(diff, 0, "{name}: {diff} of {} u8 values differ", e.len());
            }
            (ValueData::F32(data), IntData::F32(e)) => {
                let got = nchw(data, t.shape);
                let diff = got
                    .iter()
                    .zip(e)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                assert_eq!(diff, 0, "{name}: {diff} of {} f32 values differ", e.len());
            }
            _ => panic!("{name}: value types differ"),
        }
    }
    traced.len()
}

#[test]
fn plan_of_every_op_is_bit_identical_on_every_isa() {
    let isas = Isa::supported();
    eprintln!("ISAs: {isas:?}");
    for seed in 0..3u64 {
        for &n in &[1usize, 2, 5] {
            let x = inputs(100 + seed * 7 + n as u64, &[n, 3, 9, 11]);
            for &isa in &isas {
                let threads = if isa == Isa::Scalar { 1 } else { 2 };
                let m = plan(
                    seed,
                    ModelOptions {
                        isa: Some(isa),
                        threads,
                    },
                );
                assert_eq!(assert_identical(&m, &x), 17, "input + 16 ops");
            }
        }
    }
}

#[test]
fn forward_returns_the_model_output() {
    let m = plan(7, ModelOptions::default());
    let x = inputs(8, &[3, 3, 9, 11]);
    let y = IntExactPlan::from_model(&m).forward(&x).unwrap();
    assert_eq!(y.dims(), &[3, 4, 1, 1]);
    let want = m
        .run(&x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), 3)
        .unwrap();
    let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(got, want);
    // The float tail really produces varied values (not a constant the test cannot miss).
    assert!(got.iter().any(|&v| v != got[0]));
}

/// 1×1 conv with K = 1100, every weight 127, inputs at 255 but for up to 3 channels per
/// pixel at 254: the convolution sums reach 127 · (280500 − δ) ≈ 3.56e7 > 2^24, where f32
/// holds only multiples of 4, and a bias of −3.56e7 brings the accumulators back to a few
/// hundred, requantized with multiplier 0.5 — so an f32 convolution would be off by a step
/// on most outputs. The accumulator bound sends this layer to the f64 path.
#[test]
fn large_sums_stay_exact() {
    let (ci, co) = (1100, 4);
    let r = &mut ChaCha8Rng::seed_from_u64(3);
    let q_in = QParams {
        scale: 0.01,
        zero_point: 0,
    };
    let big = 127 * 255 * ci as i32;
    let mut b = ModelBuilder::new();
    b.input("x", Shape::new(ci, 2, 2), q_in).unwrap();
    b.conv2d(
        "c",
        "x",
        Conv2dParams {
            out_channels: co,
            kernel: (1, 1),
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
            weight: vec![127; co * ci],
            weight_scales: vec![0.0003; co],
            bias: Bias::I32((0..co as i32).map(|o| -big + 190 + o).collect()),
            output: QParams {
                scale: 0.000006,
                zero_point: 128,
            },
            activation: Activation::None,
        },
    )
    .unwrap();
    let m = b.build("c").unwrap();
    let n = 4;
    let mut q = vec![255u8; n * ci * 4];
    let mut sums = Vec::new();
    for bt in 0..n {
        for p in 0..4 {
            for _ in 0..r.gen_range(0..4) {
                q[(bt * ci + r.gen_range(0..ci)) * 4 + p] = 254;
            }
            let sum: i64 = (0..ci).map(|c| 127 * q[(bt * ci + c) * 4 + p] as i64).sum();
            sums.push(sum);
        }
    }
    let v: Vec<f32> = q.iter().map(|&q| q as f32 * 0.01).collect();
    let x = Tensor::from_vec(v.clone(), (n, ci, 2, 2), &Device::Cpu).unwrap();
    assert_eq!(int_exact::quantize(&v, q_in), q);
    assert!(sums.iter().all(|&s| s > 1 << 24));
    let unrepresentable = sums.iter().filter(|&&s| s as f32 as i64 != s).count();
    assert!(unrepresentable > 0, "every sum fits f32 exactly: {sums:?}");
    assert_identical(&m, &x);
    // The outputs are not saturated: they depend on the accumulators' last bits.
    let y = m.run(&v, n).unwrap();
    let steps: Vec<i32> = y.iter().map(|v| (v / 0.000006).round() as i32).collect();
    assert!(steps.iter().all(|s| s.abs() < 127), "{steps:?}");
}

fn u8_value(dims: [usize; 4], q: QParams) -> IntValue {
    IntValue {
        dims,
        data: IntData::U8 {
            data: (0..dims.iter().product::<usize>())
                .map(|i| (i * 37 % 256) as u8)
                .collect(),
            qparams: q,
        },
    }
}

fn conv_node(p: Conv2dParams, shape: Shape) -> Node {
    Node {
        name: "c".into(),
        ty: ValueType::U8(p.output),
        op: Op::Conv2d {
            input: "x".into(),
            params: p,
        },
        shape,
    }
}

#[test]
fn bad_inputs_are_errors() {
    let m = plan(1, ModelOptions::default());
    let p = IntExactPlan::from_model(&m);
    let e = p
        .forward(&inputs(1, &[2, 3, 9, 10]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("expects input [N>0, 3, 9, 11]"), "{e}");
    let e = p.forward(&inputs(1, &[3, 9, 11])).unwrap_err().to_string();
    assert!(e.contains("expects input"), "{e}");
    let e = p
        .forward(&inputs(1, &[1, 3, 9, 11]).to_dtype(DType::F64).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("f32"), "{e}");
    let e = p
        .forward(&Tensor::zeros((0, 3, 9, 11), DType::F32, &Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("N>0"), "{e}");

    let r = &mut ChaCha8Rng::seed_from_u64(9);
    let q = QParams {
        scale: 0.1,
        zero_point: 10,
    };
    let x = u8_value([1, 4, 5, 5], q);
    let good = conv(r, 4, 4, 3, 1, 1, 1, Activation::None);
    let shape = Shape::new(4, 5, 5);
    // f32 input to a quantized conv.
    let xf = IntValue {
        dims: x.dims,
        data: IntData::F32(x.to_f32()),
    };
    let e = int_exact::eval_op(&conv_node(good.clone(), shape), &[&xf])
        .unwrap_err()
        .to_string();
    assert!(e.contains("expects a u8 input"), "{e}");
    // Wrong weight length, an f32 bias, an accumulator beyond i32, wrong arity.
    let mut p = good.clone();
    p.weight.pop();
    let e = int_exact::conv2d("c", &x, &p).unwrap_err().to_string();
    assert!(e.contains("weight has 143 values"), "{e}");
    let mut p = good.clone();
    p.bias = Bias::F32(vec![0.0; 4]);
    let e = int_exact::conv2d("c", &x, &p).unwrap_err().to_string();
    assert!(e.contains("f32 bias"), "{e}");
    let mut p = good.clone();
    p.weight = vec![127; p.weight.len()];
    p.bias = Bias::I32(vec![i32::MAX; 4]);
    let e = int_exact::conv2d("c", &x, &p).unwrap_err().to_string();
    assert!(e.contains("overflows"), "{e}");
    let e = int_exact::eval_op(&conv_node(good.clone(), shape), &[&x, &x])
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 inputs given, 1 expected"), "{e}");
    // Add of different shapes.
    let e = int_exact::add("a", &x, &u8_value([1, 4, 5, 4], q), q, Activation::None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("add of shapes"), "{e}");
}

/// The elementwise pieces equal `qat_core`'s scalar formulas (the normative definitions).
#[test]
fn elementwise_pieces_follow_qat_core() {
    let qa = QParams {
        scale: 0.04,
        zero_point: 120,
    };
    let qb = QParams {
        scale: 0.07,
        zero_point: 100,
    };
    let qo = QParams {
        scale: 0.09,
        zero_point: 110,
    };
    let a = u8_value([2, 3, 4, 4], qa);
    let mut b = u8_value([2, 3, 4, 4], qb);
    if let IntData::U8 { data, .. } = &mut b.data {
        data.reverse();
    }
    let y = int_exact::add("a", &a, &b, qo, Activation::Relu).unwrap();
    let (ma, mb) = qat_core::add_multipliers(qa.scale, qb.scale, qo.scale);
    let (IntData::U8 { data: ad, .. }, IntData::U8 { data: bd, .. }, IntData::U8 { data: yd, .. }) =
        (&a.data, &b.data, &y.data)
    else {
        panic!("u8 values")
    };
    for i in 0..ad.len() {
        let want =
            qat_core::quantized_add(ad[i] as i32, 120, ma, bd[i] as i32, 100, mb, 110, 110, 255);
        assert_eq!(yd[i] as i32, want, "element {i}");
    }
    // Pool: the mean of each plane, exact sums, requantized (checked against f64 where
    // the result is not a tie).
    let p = int_exact::global_avg_pool("p", &a, qo).unwrap();
    assert_eq!(p.dims, [2, 3, 1, 1]);
    let IntData::U8 { data: pd, .. } = &p.data else {
        panic!()
    };
    for (plane, &got) in ad.chunks(16).zip(pd) {
        let mean = plane.iter().map(|&v| v as f64 - 120.0).sum::<f64>() / 16.0;
        let real = mean * 0.04 / 0.09;
        if (real - real.floor() - 0.5).abs() > 1e-3 {
            let want = (real.round() as i32 + 110).clamp(0, 255);
            assert_eq!(got as i32, want);
        }
    }
    // Quantize: NaN → 0, ±Inf → 255 / 0, ties to even.
    let q = QParams {
        scale: 0.5,
        zero_point: 10,
    };
    assert_eq!(
        int_exact::quantize(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.25, 1.75], q),
        vec![0, 255, 0, 12, 14]
    );
}

/// QAT graphs (Conv+BN+ReLU6, depthwise, 1×1 Conv+BN, residual add, strided Conv+BN+ReLU,
/// Conv+ReLU, pool, linear head) trained a few steps and converted: the integer-exact mode
/// gives the converted model's output bit for bit, and every value of the model's plan,
/// for several seeds and batch sizes, without touching the graph's state.
#[test]
fn qat_graph_integer_exact_equals_converted_model() {
    for seed in [2u64, 3] {
        let q = parity_util::trained(seed, 20);
        let m = qat_graph::convert(&q).unwrap();
        let state_before = q.state().unwrap();
        let plan = q.integer_exact().unwrap();
        for n in [1usize, 4, 9] {
            let (x, _) = parity_util::batch(700 + seed * 10 + n as u64, n);
            assert_identical(&m, &x);
            let y = q.forward_integer_exact(&x).unwrap();
            assert_eq!(y.dims(), &[n, parity_util::CLASSES]);
            let want = m
                .run(&x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), n)
                .unwrap();
            assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
            assert_eq!(
                plan.forward_shaped(&q, &x)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap(),
                y.to_vec2::<f32>().unwrap()
            );
            // Close to the fake-quant forward (same top-1 here), yet a different computation.
            let fq = q.forward_t(&x, false).unwrap();
            let d = (&fq - &y).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 0.5, "seed {seed}: {d}");
        }
        // Neither observers nor BN statistics moved.
        let after = q.state().unwrap();
        for (k, v) in &state_before {
            let a = v.flatten_all().unwrap().to_dtype(DType::F64).unwrap();
            let b = after[k]
                .flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap();
            assert_eq!(
                a.to_vec1::<f64>().unwrap(),
                b.to_vec1::<f64>().unwrap(),
                "{k}"
            );
        }
    }
}

#[test]
fn qat_graph_integer_exact_rejects_bad_inputs() {
    let q = parity_util::trained(4, 4);
    let e = q
        .forward_integer_exact(&inputs(1, &[2, 3, 12, 13]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("expects input [N>0, 3, 12, 12]"), "{e}");
    // A plan of another model does not reshape to this graph's output.
    let other = IntExactPlan::from_model(&plan(1, ModelOptions::default()));
    let e = other
        .forward_shaped(&q, &inputs(1, &[2, 3, 9, 11]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not this graph's plan"), "{e}");
}
