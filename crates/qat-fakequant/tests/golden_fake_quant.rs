//! Every case of the PyTorch golden file `fake_quant.safetensors`: outputs bit-exact on both
//! paths; `grad_x` bit-exact up to the sign of zero (candle accumulates every gradient into
//! a zero tensor, so PyTorch's `-0` from `grad_y * 0` arrives as `+0` on any candle op);
//! learnable scale / zero-point gradients within 1e-5 relative.

use candle_core::{DType, Device, Tensor, Var};
use qat_fakequant::*;
use qat_testutil::{case_name, param_f64, param_i64, param_str, GoldenFile, GoldenTensor};
use serde_json::Value;

const TEST: &str = "qat-fakequant::golden_fake_quant";

fn tensor(t: &GoldenTensor) -> Tensor {
    match t.dtype {
        safetensors::Dtype::I32 => Tensor::from_vec(t.i32(), t.shape.as_slice(), &Device::Cpu),
        _ => Tensor::from_vec(t.f32(), t.shape.as_slice(), &Device::Cpu),
    }
    .unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// Bitwise equality (distinguishes -0 / +0, NaN payloads aside).
fn assert_bits(case: &str, what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{case}: {what} length");
    let bad: Vec<usize> = (0..got.len())
        .filter(|&i| {
            bits(&got[i..=i]) != bits(&want[i..=i]) && !(got[i].is_nan() && want[i].is_nan())
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{case}: {what}: {} of {} differ; first at {}: got {:e}, want {:e}",
        bad.len(),
        got.len(),
        bad[0],
        got[bad[0]],
        want[bad[0]]
    );
}

/// `grad_x` as a candle gradient store holds it: PyTorch's value accumulated into +0.
fn accumulated(v: &[f32]) -> Vec<f32> {
    v.iter().map(|g| 0.0 + g).collect()
}

/// `|got - want| <= tol * max(|want|, magnitude)`: PyTorch sums the per-element terms in
/// f32, so where they cancel its result carries an absolute error proportional to the
/// terms' magnitude `sum |term|`, not to the (small) sum itself.
fn assert_rel(case: &str, what: &str, got: &[f32], want: &[f32], magnitude: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{case}: {what} length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (*g as f64 - *w as f64).abs();
        let scale = (*w as f64).abs().max(magnitude[i]);
        assert!(
            err <= tol * scale,
            "{case}: {what}[{i}]: got {g:e}, want {w:e} (error {err:e}, terms' magnitude {:e})",
            magnitude[i]
        );
    }
}

/// `sum |term|` per channel of the scale and zero-point gradients (PyTorch's formulas, in
/// f64; only used to size the tolerance).
#[allow(clippy::too_many_arguments)]
fn term_magnitudes(
    x: &[f32],
    gy: &[f32],
    scale: &[f32],
    zp: &[f32],
    dims: &[usize],
    axis: Option<usize>,
    (lo, hi): (f64, f64),
    gf: f64,
) -> (Vec<f64>, Vec<f64>) {
    let c = scale.len();
    let inner: usize = axis.map_or(x.len(), |a| dims[a + 1..].iter().product());
    let (mut ms, mut mz) = (vec![0.0; c], vec![0.0; c]);
    for i in 0..x.len() {
        let k = (i / inner) % c;
        let (s, z) = (scale[k] as f64, (zp[k] as f64).round().clamp(lo, hi));
        let xq = (z + x[i] as f64 / s).round();
        let dy = gy[i] as f64;
        if xq < lo || xq > hi {
            ms[k] += (dy * (if xq < lo { lo } else { hi } - z) * gf).abs();
            mz[k] += (dy * s * gf).abs();
        } else {
            ms[k] += (dy * ((xq - z) * s - x[i] as f64) / s * gf).abs();
        }
    }
    (ms, mz)
}

/// Runs `f` on a fresh `Var` of `x` and back-propagates `sum(y * grad_y)`: returns
/// `(y, grad_x)` and the gradient store.
fn run(
    x: &Tensor,
    grad_y: &Tensor,
    f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> (Vec<f32>, Vec<f32>, candle_core::backprop::GradStore, Var) {
    let xv = Var::from_tensor(x).unwrap();
    let y = f(xv.as_tensor()).unwrap();
    let grads = y
        .mul(grad_y)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gx = grads
        .get(xv.as_tensor())
        .expect("grad for x")
        .flatten_all()
        .unwrap();
    let yv = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (yv, gx.to_vec1::<f32>().unwrap(), grads, xv)
}

fn flat(t: &GoldenTensor) -> Vec<f32> {
    t.f32()
}

fn check_case(f: &GoldenFile, case: &Value) {
    let name = case_name(case);
    let get = |field: &str| f.tensor(&format!("{name}/{field}"));
    let (x, y, gy, gx) = (get("x"), get("y"), get("grad_y"), get("grad_x"));
    let (xt, gyt) = (tensor(&x), tensor(&gy));
    let qmin = param_i64(case, "quant_min") as i32;
    let qmax = param_i64(case, "quant_max") as i32;
    match param_str(case, "op") {
        "fake_quantize_per_tensor_affine" => {
            let scale = param_f64(case, "scale") as f32;
            let zp = param_i64(case, "zero_point") as i32;
            let (yv, gxv, ..) = run(&xt, &gyt, |x| {
                fake_quantize_per_tensor(x, scale, zp, qmin, qmax)
            });
            assert_bits(name, "fused y", &yv, &flat(&y));
            assert_bits(name, "fused grad_x", &gxv, &accumulated(&flat(&gx)));
            let (yv, gxv, ..) = run(&xt, &gyt, |x| {
                fake_quantize_per_tensor_slow(x, scale, zp, qmin, qmax)
            });
            assert_bits(name, "slow y", &yv, &flat(&y));
            assert_bits(name, "slow grad_x", &gxv, &accumulated(&flat(&gx)));
        }
        "fake_quantize_per_channel_affine" => {
            let axis = param_i64(case, "axis") as usize;
            let (s, z) = (tensor(&get("scale")), tensor(&get("zero_point")));
            let (yv, gxv, ..) = run(&xt, &gyt, |x| {
                fake_quantize_per_channel(x, &s, &z, axis, qmin, qmax)
            });
            assert_bits(name, "fused y", &yv, &flat(&y));
            assert_bits(name, "fused grad_x", &gxv, &accumulated(&flat(&gx)));
            let (yv, gxv, ..) = run(&xt, &gyt, |x| {
                fake_quantize_per_channel_slow(x, &s, &z, axis, qmin, qmax)
            });
            assert_bits(name, "slow y", &yv, &flat(&y));
            assert_bits(name, "slow grad_x", &gxv, &accumulated(&flat(&gx)));
        }
        op @ ("_fake_quantize_learnable_per_tensor_affine"
        | "_fake_quantize_learnable_per_channel_affine") => {
            let gf = param_f64(case, "grad_factor");
            let s = Var::from_tensor(&tensor(&get("scale"))).unwrap();
            let z = Var::from_tensor(&tensor(&get("zero_point"))).unwrap();
            let per_channel = op.contains("per_channel");
            let axis = if per_channel {
                param_i64(case, "axis") as usize
            } else {
                0
            };
            let (yv, gxv, grads, _) = run(&xt, &gyt, |x| {
                if per_channel {
                    fake_quantize_learnable_per_channel(x, &s, &z, axis, qmin, qmax, gf)
                } else {
                    fake_quantize_learnable_per_tensor(x, &s, &z, qmin, qmax, gf)
                }
            });
            assert_bits(name, "y", &yv, &flat(&y));
            assert_bits(name, "grad_x", &gxv, &accumulated(&flat(&gx)));
            let g = |v: &Var| grads.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
            let (ms, mz) = term_magnitudes(
                &flat(&x),
                &flat(&gy),
                &flat(&get("scale")),
                &flat(&get("zero_point")),
                &x.shape,
                per_channel.then_some(axis),
                (qmin as f64, qmax as f64),
                gf,
            );
            assert_rel(
                name,
                "grad_scale",
                &g(&s),
                &flat(&get("grad_scale")),
                &ms,
                1e-5,
            );
            assert_rel(
                name,
                "grad_zero_point",
                &g(&z),
                &flat(&get("grad_zero_point")),
                &mz,
                1e-5,
            );
        }
        other => panic!("{name}: unknown op `{other}` in {}", f.path.display()),
    }
}

#[test]
fn every_golden_case() {
    let Some(f) = GoldenFile::open("fake_quant.safetensors", TEST) else {
        return;
    };
    let cases = f.cases();
    assert!(!cases.is_empty(), "no cases in {}", f.path.display());
    for case in &cases {
        check_case(&f, case);
    }
    eprintln!("{TEST}: {} cases checked", cases.len());
}

#[test]
fn golden_cases_through_f16_stay_close() {
    // f16 inputs run the same kernel in f32; the output is the f32 result rounded to f16.
    let Some(f) = GoldenFile::open("fake_quant.safetensors", TEST) else {
        return;
    };
    let case = f
        .cases()
        .into_iter()
        .find(|c| param_str(c, "op") == "fake_quantize_per_tensor_affine")
        .expect("a per-tensor case");
    let name = case_name(&case);
    let x = tensor(&f.tensor(&format!("{name}/x")));
    let (s, z) = (
        param_f64(&case, "scale") as f32,
        param_i64(&case, "zero_point") as i32,
    );
    let (lo, hi) = (
        param_i64(&case, "quant_min") as i32,
        param_i64(&case, "quant_max") as i32,
    );
    let xh = x.to_dtype(DType::F16).unwrap();
    let yh = fake_quantize_per_tensor(&xh, s, z, lo, hi).unwrap();
    assert_eq!(yh.dtype(), DType::F16);
    let want = fake_quantize_per_tensor(&xh.to_dtype(DType::F32).unwrap(), s, z, lo, hi)
        .unwrap()
        .to_dtype(DType::F16)
        .unwrap();
    let (a, b) = (
        yh.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        want.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
    );
    assert_bits(name, "f16 y", &a, &b);
}
