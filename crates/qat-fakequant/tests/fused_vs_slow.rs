//! The fused CPU ops against the device-generic `*_slow` compositions and against the scalar
//! spec `qat_core::fake_quantize_with_inv`, on random inputs with planted ties, out-of-range
//! values, NaN and Inf; every channel axis; strided (non-contiguous) inputs.

use candle_core::{Device, Tensor, Var};
use proptest::prelude::*;
use qat_fakequant::*;

/// Values around the grid of `scale`: exact ties `(k + 0.5) * scale`, values beyond the
/// range, and a few non-finite ones.
fn sample(n: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) as u32
    };
    (0..n)
        .map(|_| {
            let r = next();
            match r % 10 {
                0 => ((r / 10 % 600) as f32 - 300.0 + 0.5) * scale,
                1 => ((r / 10 % 600) as f32 - 300.0) * scale,
                2 if r % 97 == 2 => f32::NAN,
                2 if r % 89 == 2 => f32::INFINITY,
                2 if r % 83 == 2 => f32::NEG_INFINITY,
                _ => ((r >> 4) as f32 / (1u32 << 28) as f32 - 0.5) * 600.0 * scale,
            }
        })
        .collect()
}

fn grads(
    x: &Tensor,
    gy: &Tensor,
    f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> (Vec<f32>, Vec<f32>) {
    let v = Var::from_tensor(x).unwrap();
    let y = f(v.as_tensor()).unwrap();
    let g = y.mul(gy).unwrap().sum_all().unwrap().backward().unwrap();
    let gx = g.get(v.as_tensor()).unwrap().flatten_all().unwrap();
    (
        y.flatten_all().unwrap().to_vec1().unwrap(),
        gx.to_vec1().unwrap(),
    )
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn same_values(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x == y || (x.is_nan() && y.is_nan()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn per_tensor_fused_equals_slow_and_spec(
        n in 1usize..3000,
        scale in 1e-3f32..2.0,
        zp_frac in 0.0f64..1.0,
        signed in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let (lo, hi) = if signed { (-128, 127) } else { (0, 255) };
        let zp = lo + ((hi - lo) as f64 * zp_frac) as i32;
        let xs = sample(n, scale, seed);
        let gys: Vec<f32> = sample(n, 1.0, seed ^ 7).iter().map(|v| if v.is_finite() { *v } else { -1.0 }).collect();
        let x = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap();
        let gy = Tensor::new(gys.as_slice(), &Device::Cpu).unwrap();
        let (yf, gf) = grads(&x, &gy, |x| fake_quantize_per_tensor(x, scale, zp, lo, hi));
        let (ys, gs) = grads(&x, &gy, |x| fake_quantize_per_tensor_slow(x, scale, zp, lo, hi));
        prop_assert!(same_bits(&yf, &ys));
        prop_assert!(same_values(&gf, &gs));
        let inv = qat_core::inv_scale(scale);
        for i in 0..n {
            let (y, m) = qat_core::fake_quantize_with_inv(xs[i], scale, inv, zp, lo, hi);
            prop_assert_eq!(yf[i].to_bits(), y.to_bits(), "x = {}", xs[i]);
            // `0.0 +`: candle accumulates gradients into a zero tensor, so PyTorch's -0 of
            // `grad_y * 0` arrives as +0.
            prop_assert_eq!(gf[i].to_bits(), (0.0 + gys[i] * m as u8 as f32).to_bits());
        }
    }

    #[test]
    fn per_channel_fused_equals_slow_and_spec_on_every_axis(
        d0 in 1usize..5, d1 in 1usize..7, d2 in 1usize..9, d3 in 1usize..70,
        axis in 0usize..4,
        seed in any::<u64>(),
    ) {
        let dims = [d0, d1, d2, d3];
        let n: usize = dims.iter().product();
        let c = dims[axis];
        let scales: Vec<f32> = (0..c).map(|i| 0.01 + 0.037 * i as f32).collect();
        let zps: Vec<i32> = (0..c).map(|i| (i as i32 * 37) % 200 - 100).collect();
        let xs = sample(n, 0.05, seed);
        let x = Tensor::from_vec(xs.clone(), &dims[..], &Device::Cpu).unwrap();
        let gy = Tensor::from_vec(sample(n, 1.0, seed ^ 3).iter().map(|v| if v.is_finite() { v.tanh() } else { 0.5 }).collect::<Vec<f32>>(), &dims[..], &Device::Cpu).unwrap();
        let s = Tensor::new(scales.as_slice(), &Device::Cpu).unwrap();
        let z = Tensor::new(zps.as_slice(), &Device::Cpu).unwrap();
        let (yf, gf) = grads(&x, &gy, |x| fake_quantize_per_channel(x, &s, &z, axis, -128, 127));
        let (ys, gs) = grads(&x, &gy, |x| fake_quantize_per_channel_slow(x, &s, &z, axis, -128, 127));
        prop_assert!(same_bits(&yf, &ys));
        prop_assert!(same_values(&gf, &gs));
        let inner: usize = dims[axis + 1..].iter().product();
        for (i, &xi) in xs.iter().enumerate() {
            let ch = (i / inner) % c;
            let inv = qat_core::inv_scale(scales[ch]);
            let (y, _) = qat_core::fake_quantize_with_inv(xi, scales[ch], inv, zps[ch], -128, 127);
            prop_assert_eq!(yf[i].to_bits(), y.to_bits());
        }
    }
}

#[test]
fn non_contiguous_inputs_are_correct() {
    let dev = Device::Cpu;
    let base = Tensor::from_vec(sample(4 * 6 * 10, 0.1, 5), (4, 6, 10), &dev).unwrap();
    let t = base.transpose(1, 2).unwrap(); // [4, 10, 6], strided
    assert!(!t.is_contiguous());
    let tc = t.contiguous().unwrap();
    let a = fake_quantize_per_tensor(&t, 0.1, 3, -128, 127).unwrap();
    let b = fake_quantize_per_tensor(&tc, 0.1, 3, -128, 127).unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(same_bits(&flat(&a), &flat(&b)));
    let s = Tensor::new(&[0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6], &dev).unwrap();
    let z = Tensor::new(&[0i64, 1, 2, 3, 4, 5], &dev).unwrap();
    let a = fake_quantize_per_channel(&t, &s, &z, 2, -128, 127).unwrap();
    let b = fake_quantize_per_channel(&tc, &s, &z, 2, -128, 127).unwrap();
    assert!(same_bits(&flat(&a), &flat(&b)));
    // A narrowed (offset) view too, through the slow path as well.
    let n = base.narrow(2, 3, 5).unwrap();
    let a = fake_quantize_per_tensor(&n, 0.1, 0, 0, 255).unwrap();
    let b = fake_quantize_per_tensor_slow(&n, 0.1, 0, 0, 255).unwrap();
    let c = fake_quantize_per_tensor(&n.contiguous().unwrap(), 0.1, 0, 0, 255).unwrap();
    assert!(same_bits(&flat(&a), &flat(&b)) && same_bits(&flat(&a), &flat(&c)));
}

#[test]
fn ties_round_half_to_even_in_both_paths() {
    let dev = Device::Cpu;
    // scale 1: x * inv is exact, so these are exact ties.
    let x = Tensor::new(
        &[0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.5, -128.5],
        &dev,
    )
    .unwrap();
    let want = [0.0f32, 2.0, 2.0, 0.0, -2.0, -2.0, 126.0, 127.0, -128.0];
    for y in [
        fake_quantize_per_tensor(&x, 1.0, 0, -128, 127).unwrap(),
        fake_quantize_per_tensor_slow(&x, 1.0, 0, -128, 127).unwrap(),
    ] {
        assert_eq!(y.to_vec1::<f32>().unwrap(), want);
    }
    // 127.5 rounds to 128: outside, so its gradient is 0; -128.5 rounds to -128: inside.
    let v = Var::from_tensor(&x).unwrap();
    let g = fake_quantize_per_tensor(&v, 1.0, 0, -128, 127)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gx = g.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(gx, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0]);
}

#[test]
fn round_half_even_slow_matches_std() {
    let xs: Vec<f32> = (-2000..2000)
        .map(|i| i as f32 * 0.25)
        .chain([4194303.5, -4194302.5, 1e-8])
        .collect();
    let r = round_half_even_slow(&Tensor::new(xs.as_slice(), &Device::Cpu).unwrap())
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (x, r) in xs.iter().zip(&r) {
        assert_eq!(*r, x.round_ties_even(), "x = {x}");
    }
}
