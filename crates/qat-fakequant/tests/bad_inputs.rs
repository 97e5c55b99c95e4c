//! Bad arguments give an `Err` that names the problem; edge inputs give correct results.

use candle_core::{DType, Device, Tensor};
use qat_fakequant::*;

fn x() -> Tensor {
    Tensor::new(&[[0.1f32, -0.2, 0.3], [1.0, 2.0, -3.0]], &Device::Cpu).unwrap()
}

fn err_contains<T: std::fmt::Debug>(r: candle_core::Result<T>, needle: &str) {
    let e = r.expect_err("expected an error").to_string();
    assert!(
        e.contains(needle),
        "error `{e}` does not mention `{needle}`"
    );
}

#[test]
fn per_tensor_bad_qparams() {
    for f in [fake_quantize_per_tensor, fake_quantize_per_tensor_slow] {
        err_contains(f(&x(), f32::NAN, 0, 0, 255), "scale NaN");
        err_contains(f(&x(), f32::INFINITY, 0, 0, 255), "scale inf");
        err_contains(f(&x(), 0.0, 0, 0, 255), "scale 0");
        err_contains(f(&x(), -0.1, 0, 0, 255), "scale -0.1");
        err_contains(f(&x(), 1e-45, 0, 0, 255), "overflows");
        err_contains(f(&x(), 0.1, 256, 0, 255), "zero_point 256");
        err_contains(f(&x(), 0.1, -1, 0, 255), "zero_point -1");
        err_contains(f(&x(), 0.1, 0, 10, 5), "quant_min 10 > quant_max 5");
        err_contains(f(&x(), 0.1, 0, -(1 << 20), 5), "exceeds");
    }
}

#[test]
fn per_channel_bad_params() {
    let dev = Device::Cpu;
    let s2 = Tensor::new(&[0.1f32, 0.2], &dev).unwrap();
    let s3 = Tensor::new(&[0.1f32, 0.2, 0.3], &dev).unwrap();
    let z2 = Tensor::new(&[0i32, 1], &dev).unwrap();
    let z3 = Tensor::new(&[0i32, 1, 2], &dev).unwrap();
    for f in [fake_quantize_per_channel, fake_quantize_per_channel_slow] {
        err_contains(f(&x(), &s2, &z2, 2, -128, 127), "axis 2 out of range");
        err_contains(
            f(&x(), &s3, &z2, 0, -128, 127),
            "scale has 3 values, expected 2",
        );
        err_contains(
            f(&x(), &s2, &z3, 0, -128, 127),
            "zero_point has 3 values, expected 2",
        );
        let bad_s = Tensor::new(&[0.1f32, f32::NAN], &dev).unwrap();
        err_contains(f(&x(), &bad_s, &z2, 0, -128, 127), "scale[1] NaN");
        let neg_s = Tensor::new(&[0.1f32, -1.0], &dev).unwrap();
        err_contains(f(&x(), &neg_s, &z2, 0, -128, 127), "scale[1] -1");
        let bad_z = Tensor::new(&[0i32, 300], &dev).unwrap();
        err_contains(f(&x(), &s2, &bad_z, 0, -128, 127), "zero_point[1] 300");
        let frac_z = Tensor::new(&[0.0f32, 0.5], &dev).unwrap();
        err_contains(f(&x(), &s2, &frac_z, 0, -128, 127), "not an integer");
        let s2d = Tensor::new(&[[0.1f32, 0.2]], &dev).unwrap();
        err_contains(f(&x(), &s2d, &z2, 0, -128, 127), "1-D");
    }
}

#[test]
fn unsupported_dtypes_are_refused() {
    let xi = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
    err_contains(fake_quantize_per_tensor(&xi, 0.1, 0, 0, 255), "dtype U32");
    let xd = x().to_dtype(DType::F64).unwrap();
    err_contains(fake_quantize_per_tensor(&xd, 0.1, 0, 0, 255), "dtype F64");
    err_contains(
        fake_quantize_per_tensor_slow(&xd, 0.1, 0, 0, 255),
        "dtype F64",
    );
}

#[test]
fn half_precision_inputs_are_computed_in_f32() {
    for dt in [DType::F16, DType::BF16] {
        let xh = x().to_dtype(dt).unwrap();
        let y = fake_quantize_per_tensor(&xh, 0.1, 0, -128, 127).unwrap();
        assert_eq!(y.dtype(), dt);
        let want = fake_quantize_per_tensor(&xh.to_dtype(DType::F32).unwrap(), 0.1, 0, -128, 127)
            .unwrap()
            .to_dtype(dt)
            .unwrap();
        let d = (y.to_dtype(DType::F32).unwrap() - want.to_dtype(DType::F32).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);
    }
}

#[test]
fn empty_tensors_give_empty_results() {
    let dev = Device::Cpu;
    let e = Tensor::zeros((0, 3), DType::F32, &dev).unwrap();
    assert_eq!(
        fake_quantize_per_tensor(&e, 0.1, 0, 0, 255).unwrap().dims(),
        [0, 3]
    );
    assert_eq!(
        fake_quantize_per_tensor_slow(&e, 0.1, 0, 0, 255)
            .unwrap()
            .dims(),
        [0, 3]
    );
    let s = Tensor::new(&[0.1f32, 0.2, 0.3], &dev).unwrap();
    let z = Tensor::new(&[0i32, 0, 0], &dev).unwrap();
    assert_eq!(
        fake_quantize_per_channel(&e, &s, &z, 1, 0, 255)
            .unwrap()
            .dims(),
        [0, 3]
    );
    let v = candle_core::Var::from_tensor(&e).unwrap();
    let y = fake_quantize_per_tensor(&v, 0.1, 0, 0, 255).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(g.get(v.as_tensor()).unwrap().dims(), [0, 3]);
}

#[test]
fn learnable_bad_inputs() {
    let dev = Device::Cpu;
    let s = Tensor::new(&[0.1f32], &dev).unwrap();
    let z = Tensor::new(&[0.0f32], &dev).unwrap();
    let f = fake_quantize_learnable_per_tensor;
    err_contains(
        f(
            &x(),
            &Tensor::new(&[0.0f32], &dev).unwrap(),
            &z,
            0,
            255,
            1.0,
        ),
        "scale[0] 0",
    );
    err_contains(
        f(
            &x(),
            &Tensor::new(&[f32::NAN], &dev).unwrap(),
            &z,
            0,
            255,
            1.0,
        ),
        "scale[0] NaN",
    );
    err_contains(
        f(
            &x(),
            &s,
            &Tensor::new(&[f32::INFINITY], &dev).unwrap(),
            0,
            255,
            1.0,
        ),
        "not finite",
    );
    err_contains(f(&x(), &s, &z, 1, 255, 1.0), "must include 0");
    err_contains(f(&x(), &s, &z, 0, 255, f64::NAN), "grad_factor");
    err_contains(
        f(
            &x(),
            &Tensor::new(&[0.1f32, 0.2], &dev).unwrap(),
            &z,
            0,
            255,
            1.0,
        ),
        "scale has 2 values",
    );
    err_contains(
        f(&x(), &Tensor::new(&[1u32], &dev).unwrap(), &z, 0, 255, 1.0),
        "scale must be f32",
    );
    let pc = fake_quantize_learnable_per_channel;
    err_contains(
        pc(&x(), &s, &z, 0, -128, 127, 1.0),
        "scale has 1 values, expected 2",
    );
    err_contains(pc(&x(), &s, &z, 5, -128, 127, 1.0), "axis 5 out of range");
    // A zero point outside the range is clamped (PyTorch's rule), not refused.
    let far = Tensor::new(&[1000.0f32], &dev).unwrap();
    let y = f(&x(), &s, &far, -128, 127, 1.0).unwrap();
    let want = fake_quantize_per_tensor(&x(), 0.1, 127, -128, 127).unwrap();
    assert_eq!(
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
}
