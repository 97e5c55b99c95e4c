//! ReLU / ReLU6 / clamp: values vs candle, PyTorch's gradient (0 at the bounds) checked on exact
//! bound values and by finite differences away from the kinks.

mod ops_util;

use candle_core::{DType, Device, Result, Tensor};
use ops_util::{assert_close, check_fd, grads_of, randn, to_vec};
use qat_graph::ops::{clamp, clamp_slow, relu, relu6, relu6_slow, relu_slow};

#[test]
fn ops_activation_values_match_candle() -> Result<()> {
    let x = (randn(1, &[3, 5, 7, 9])? * 4.0)?;
    assert_close(&relu(&x)?, &x.relu()?, 0.0, "relu");
    assert_close(&relu6(&x)?, &x.clamp(0f32, 6f32)?, 0.0, "relu6");
    assert_close(
        &clamp(&x, -1.5, 2.5)?,
        &x.clamp(-1.5f32, 2.5f32)?,
        0.0,
        "clamp",
    );
    // Large enough for the parallel path.
    let big = (randn(2, &[4, 16, 32, 32])? * 4.0)?;
    assert_close(&relu6(&big)?, &relu6_slow(&big)?, 0.0, "relu6 big");
    Ok(())
}

#[test]
fn ops_activation_gradients_are_pytorchs_at_the_bounds() -> Result<()> {
    let x = Tensor::new(
        &[-1f32, 0.0, 0.5, 6.0, 7.0, 5.999, 1e-7, -0.0, 3.0],
        &Device::Cpu,
    )?;
    // PyTorch hardtanh_backward / threshold_backward pass the gradient only strictly inside.
    let want_relu6 = [0f32, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0];
    let want_relu = [0f32, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0];
    for (name, f, want) in [
        ("relu6", relu6 as fn(&Tensor) -> Result<Tensor>, want_relu6),
        ("relu6_slow", relu6_slow, want_relu6),
        ("relu", relu, want_relu),
        ("relu_slow", relu_slow, want_relu),
    ] {
        let v = candle_core::Var::from_tensor(&x)?;
        let g = f(v.as_tensor())?.sum_all()?.backward()?;
        let g = to_vec(g.get(v.as_tensor()).expect("gradient"));
        assert_eq!(g, want, "{name}");
    }
    Ok(())
}

#[test]
fn ops_activation_gradients_match_slow_and_finite_differences() -> Result<()> {
    // Values kept ≥ 1e-2 away from the kinks so the finite difference is well defined.
    let raw = to_vec(&(randn(5, &[2, 3, 4, 5])? * 4.0)?);
    let shifted: Vec<f32> = raw
        .iter()
        .map(|&v| {
            let near = |k: f32| (v - k).abs() < 1e-2;
            if near(0.0) || near(6.0) || near(-1.5) || near(2.5) {
                v + 0.05
            } else {
                v
            }
        })
        .collect();
    let x = Tensor::from_vec(shifted, (2, 3, 4, 5), &Device::Cpu)?;
    type Pair = (
        fn(&Tensor) -> Result<Tensor>,
        fn(&Tensor) -> Result<Tensor>,
        f64,
        f64,
    );
    let cases: [(&str, Pair); 3] = [
        ("relu", (relu, relu_slow, 0.0, f64::INFINITY)),
        ("relu6", (relu6, relu6_slow, 0.0, 6.0)),
        (
            "clamp",
            (
                |t| clamp(t, -1.5, 2.5),
                |t| clamp_slow(t, -1.5, 2.5),
                -1.5,
                2.5,
            ),
        ),
    ];
    for (name, (fast, slow, lo, hi)) in cases {
        let (yf, gf) = grads_of(std::slice::from_ref(&x), 9, |t| fast(&t[0]))?;
        let (ys, gs) = grads_of(std::slice::from_ref(&x), 9, |t| slow(&t[0]))?;
        assert_close(&yf, &ys, 0.0, name);
        assert_close(&gf[0], &gs[0], 0.0, name);
        check_fd(
            std::slice::from_ref(&x),
            &gf,
            x.elem_count(),
            9,
            1e-6,
            |xs| xs[0].iter().map(|v| v.clamp(lo, hi)).collect(),
        );
    }
    Ok(())
}

#[test]
fn ops_activation_non_contiguous_and_bad_inputs() -> Result<()> {
    let x = (randn(3, &[4, 6])? * 5.0)?;
    let xt = x.t()?;
    assert_close(
        &relu6(&xt)?,
        &relu6_slow(&xt.contiguous()?)?,
        0.0,
        "transposed",
    );
    let (_, g) = grads_of(std::slice::from_ref(&x), 4, |t| relu6(&t[0].t()?))?;
    let (_, gs) = grads_of(std::slice::from_ref(&x), 4, |t| relu6_slow(&t[0].t()?))?;
    assert_close(&g[0], &gs[0], 0.0, "transposed gradient");
    let e = relu(&x.to_dtype(DType::F64)?).unwrap_err().to_string();
    assert!(e.contains("must be f32"), "{e}");
    let e = clamp(&x, 2.0, 1.0).unwrap_err().to_string();
    assert!(e.contains("min <= max"), "{e}");
    let e = clamp(&x, f32::NAN, 1.0).unwrap_err().to_string();
    assert!(e.contains("min <= max"), "{e}");
    // NaN propagates through the forward, as in PyTorch.
    let nan = Tensor::new(&[f32::NAN, 1.0], &Device::Cpu)?;
    assert!(to_vec(&relu6(&nan)?)[0].is_nan());
    Ok(())
}
