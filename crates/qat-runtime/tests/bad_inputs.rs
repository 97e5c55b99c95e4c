//! Bad inputs: the builder names the op, `run` refuses wrong lengths and batch 0, and NaN / Inf
//! inputs quantize as PyTorch does (NaN → 0, +Inf → 255, -Inf → 0) without failing.

mod common;

use common::*;
use qat_runtime::{
    Activation, Bias, Conv2dParams, Isa, LinearParams, ModelBuilder, ModelOptions, RuntimeError,
    Shape, ValueData,
};

fn err_of<T: std::fmt::Debug>(r: Result<T, RuntimeError>) -> String {
    r.expect_err("expected an error").to_string()
}

fn base() -> ModelBuilder {
    let mut b = ModelBuilder::new();
    b.input("x", Shape::new(4, 5, 5), q(0.1, 128)).unwrap();
    b
}

fn conv_p(ci: usize, co: usize, k: usize, groups: usize) -> Conv2dParams {
    conv(
        &mut rng(1),
        ci,
        co,
        k,
        1,
        1,
        groups,
        Bias::None,
        q(0.1, 0),
        Activation::Relu,
    )
}

#[test]
fn run_refuses_wrong_lengths_and_batch_zero() {
    let m = build_small(&small(51), ModelOptions::default());
    let n = 3 * 11 * 9;
    assert!(err_of(m.run(&vec![0.0; n], 0)).contains("batch is 0"));
    assert!(err_of(m.run(&vec![0.0; n - 1], 1)).contains("input has"));
    assert!(err_of(m.run(&vec![0.0; 2 * n], 1)).contains("input has"));
    assert!(err_of(m.run_u8(&vec![0; n + 1], 1)).contains("input has"));
    let mut out = vec![0.0; 9];
    assert!(err_of(m.run_into(&vec![0.0; n], 1, &mut out)).contains("output buffer"));
    assert!(m.run(&[], usize::MAX).is_err());
    // The model still works after refusing.
    assert_eq!(m.run(&vec![0.0; n], 1).unwrap().len(), 10);
}

#[test]
fn nan_and_inf_inputs_quantize_like_pytorch() {
    let mut b = ModelBuilder::new();
    b.input("x", Shape::new(1, 1, 4), q(0.1, 100)).unwrap();
    b.dequantize("y", "x").unwrap();
    let m = b.build("y").unwrap();
    let t = m
        .run_traced(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.0], 1)
        .unwrap();
    match &t[0].data {
        ValueData::U8 { data, .. } => assert_eq!(data, &[0, 255, 0, 110]),
        ValueData::F32(_) => panic!(),
    }
    // The whole small model stays finite on NaN input.
    let m = build_small(&small(52), ModelOptions::default());
    let y = m.run(&vec![f32::NAN; 3 * 11 * 9], 1).unwrap();
    assert!(y.iter().all(|v| v.is_finite()));
}

type Case = Box<dyn Fn(&mut ModelBuilder) -> Result<(), RuntimeError>>;

#[test]
fn builder_names_the_op_on_mismatches() {
    let cases: Vec<(&str, Case)> = vec![
        (
            "c_channels",
            Box::new(|b| b.conv2d("c_channels", "x", conv_p(3, 8, 3, 1)).map(|_| ())),
        ),
        (
            "c_groups",
            Box::new(|b| b.conv2d("c_groups", "x", conv_p(4, 6, 3, 4)).map(|_| ())),
        ),
        (
            "c_big",
            Box::new(|b| {
                let mut p = conv_p(4, 4, 9, 1);
                p.padding = (0, 0);
                b.conv2d("c_big", "x", p).map(|_| ())
            }),
        ),
        (
            "c_stride0",
            Box::new(|b| {
                let mut p = conv_p(4, 4, 3, 1);
                p.stride = (0, 1);
                b.conv2d("c_stride0", "x", p).map(|_| ())
            }),
        ),
        (
            "c_wlen",
            Box::new(|b| {
                let mut p = conv_p(4, 4, 3, 1);
                p.weight.pop();
                b.conv2d("c_wlen", "x", p).map(|_| ())
            }),
        ),
        (
            "c_scales",
            Box::new(|b| {
                let mut p = conv_p(4, 4, 3, 1);
                p.weight_scales[2] = f32::NAN;
                b.conv2d("c_scales", "x", p).map(|_| ())
            }),
        ),
        (
            "c_scale0",
            Box::new(|b| {
                let mut p = conv_p(4, 4, 3, 1);
                p.weight_scales[0] = 0.0;
                b.conv2d("c_scale0", "x", p).map(|_| ())
            }),
        ),
        (
            "c_zp",
            Box::new(|b| {
                let mut p = conv_p(4, 4, 3, 1);
                p.output = q(0.1, 256);
                b.conv2d("c_zp", "x", p).map(|_| ())
            }),
        ),
        (
            "c_outscale",
            Box::new(|b| {
                let mut p = conv_p(4, 4, 3, 1);
                p.output = q(-0.1, 0);
                b.conv2d("c_outscale", "x", p).map(|_| ())
            }),
        ),
        (
            "c_bias",
            Box::new(|b| {
                let mut p = conv_p(4, 4, 3, 1);
                p.bias = Bias::F32(vec![1e9; 4]);
                b.conv2d("c_bias", "x", p).map(|_| ())
            }),
        ),
        (
            "c_biaslen",
            Box::new(|b| {
                let mut p = conv_p(4, 4, 3, 1);
                p.bias = Bias::I32(vec![0; 3]);
                b.conv2d("c_biaslen", "x", p).map(|_| ())
            }),
        ),
        (
            "c_tiny",
            Box::new(|b| {
                let mut p = conv_p(4, 4, 3, 1);
                p.weight_scales = vec![1e-30; 4];
                p.output = q(1e30, 0);
                b.conv2d("c_tiny", "x", p).map(|_| ())
            }),
        ),
        (
            "undefined",
            Box::new(|b| {
                b.conv2d("undefined", "nope", conv_p(4, 4, 3, 1))
                    .map(|_| ())
            }),
        ),
        ("x", Box::new(|b| b.dequantize("x", "x").map(|_| ()))),
        (
            "bad name!",
            Box::new(|b| b.dequantize("bad name!", "x").map(|_| ())),
        ),
        (
            "fc",
            Box::new(|b| {
                b.linear(
                    "fc",
                    "x",
                    LinearParams {
                        out_features: 2,
                        weight: vec![1; 8],
                        weight_scales: vec![0.1; 2],
                        bias: Bias::None,
                        output: q(0.1, 0),
                        activation: Activation::None,
                    },
                )
                .map(|_| ())
            }),
        ),
        ("flat", Box::new(|b| b.flatten("flat", "x").map(|_| ()))),
        (
            "add",
            Box::new(|b| {
                b.global_avg_pool("p", "x", None)?;
                b.add("add", "x", "p", q(0.1, 0), Activation::None)
                    .map(|_| ())
            }),
        ),
        (
            "fq",
            Box::new(|b| b.quantize("fq", "x", q(0.1, 0)).map(|_| ())),
        ),
        (
            "frelu",
            Box::new(|b| b.float_relu("frelu", "x").map(|_| ())),
        ),
        (
            "flin",
            Box::new(|b| {
                b.dequantize("xf", "x")?;
                b.float_conv1x1("flin", "xf", 2, vec![f32::NAN; 8], None)
                    .map(|_| ())
            }),
        ),
        (
            "dq",
            Box::new(|b| {
                b.dequantize("xf", "x")?;
                b.dequantize("dq", "xf").map(|_| ())
            }),
        ),
    ];
    for (name, f) in cases {
        let mut b = base();
        let e = f(&mut b).expect_err(name).to_string();
        assert!(
            e.contains(&format!("`{name}`")),
            "error for {name} does not name it: {e}"
        );
    }
}

#[test]
fn build_refuses_missing_input_output_or_isa() {
    let b = ModelBuilder::new();
    assert!(err_of(b.build("x")).contains("no input"));
    assert!(err_of(base().build("nowhere")).contains("nowhere"));
    let mut b = base();
    assert!(b.input("x2", Shape::new(1, 1, 1), q(0.1, 0)).is_err());
    assert!(ModelBuilder::new()
        .input("x", Shape::new(0, 1, 1), q(0.1, 0))
        .is_err());
    assert!(ModelBuilder::new()
        .input("x", Shape::new(1 << 20, 1 << 10, 1), q(0.1, 0))
        .is_err());
    if let Some(isa) = qat_kernels::isa::Isa::ALL
        .into_iter()
        .find(|i| !i.is_supported())
    {
        let e = err_of(base().build_with(
            "x",
            ModelOptions {
                isa: Some(isa),
                threads: 1,
            },
        ));
        assert!(e.contains("not supported"), "{e}");
    }
    let _ = Isa::Scalar;
}
