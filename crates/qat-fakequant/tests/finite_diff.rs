//! The learnable gradients against central finite differences, in f64, of the LSQ
//! straight-through surrogate: rounding replaced by `v + (round(v0) - v0)` with the offset
//! frozen at the evaluation point (that is what "straight through" differentiates).
//! Inputs stay away from rounding and clamping boundaries, where the surrogate is smooth.

use candle_core::{Device, Tensor, Var};
use qat_fakequant::{fake_quantize_learnable_per_channel, fake_quantize_learnable_per_tensor};

const QMIN: f64 = -8.0;
const QMAX: f64 = 7.0;

struct Case {
    x: Vec<f64>,
    gy: Vec<f64>,
    /// Channel of each element.
    ch: Vec<usize>,
    scale: Vec<f64>,
    zp: Vec<f64>,
}

/// `sum(gy * y)` of the surrogate, with the rounding offsets frozen at `(scale0, zp0)`.
fn loss(c: &Case, x: &[f64], scale: &[f64], zp: &[f64], offsets: &[f64]) -> f64 {
    let mut l = 0.0;
    for i in 0..x.len() {
        let k = c.ch[i];
        let v = x[i] / scale[k] + offsets[i] + zp[k];
        l += c.gy[i] * (v.clamp(QMIN, QMAX) - zp[k]) * scale[k];
    }
    l
}

fn offsets(c: &Case) -> Vec<f64> {
    (0..c.x.len())
        .map(|i| {
            let v = c.x[i] / c.scale[c.ch[i]];
            v.round() - v
        })
        .collect()
}

/// Draws x away from half-integers of `x / scale` and from the clamp edges.
fn make(n: usize, channels: usize, inner: usize, seed: u64) -> Case {
    let mut s = seed;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    let scale: Vec<f64> = (0..channels).map(|k| 0.05 + 0.03 * k as f64).collect();
    // Per-tensor (channel 0) keeps a positive zero point: PyTorch's per-tensor backward
    // rounds it as trunc(zp + 0.5), which moves a negative integer zero point by one.
    let zp: Vec<f64> = (0..channels)
        .map(|k| [1.0, -2.0, 3.0, 0.0, -1.0, 2.0][k % 6])
        .collect();
    let ch: Vec<usize> = (0..n).map(|i| (i / inner) % channels).collect();
    let mut x = Vec::with_capacity(n);
    for &k in &ch {
        loop {
            let q = (next() - 0.5) * 30.0; // quantized units, some far outside [-8, 7]
            let frac = q - q.floor();
            let edge = (q + zp[k] - (QMIN - 0.5))
                .abs()
                .min((q + zp[k] - (QMAX + 0.5)).abs());
            // A value rounding exactly onto QMIN / QMAX sits on the surrogate's clamp kink,
            // where a central difference averages the two one-sided slopes.
            let on_kink = [QMIN, QMAX].contains(&(q.round() + zp[k]));
            if (frac - 0.5).abs() > 0.1 && frac > 0.05 && frac < 0.95 && edge > 0.2 && !on_kink {
                // Round through f32 so the op sees exactly this value.
                x.push((q * scale[k]) as f32 as f64);
                break;
            }
        }
    }
    let gy = (0..n).map(|_| next() * 2.0 - 1.0).collect();
    Case {
        x,
        gy,
        ch,
        scale,
        zp,
    }
}

fn check(c: &Case, axis: Option<usize>, dims: &[usize], grad_factor: f64) {
    let dev = Device::Cpu;
    let f32s = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
    let x = Var::from_vec(f32s(&c.x), dims, &dev).unwrap();
    let s = Var::from_vec(f32s(&c.scale), c.scale.len(), &dev).unwrap();
    let z = Var::from_vec(f32s(&c.zp), c.zp.len(), &dev).unwrap();
    let gy = Tensor::from_vec(f32s(&c.gy), dims, &dev).unwrap();
    let y = match axis {
        None => {
            fake_quantize_learnable_per_tensor(&x, &s, &z, QMIN as i32, QMAX as i32, grad_factor)
        }
        Some(a) => fake_quantize_learnable_per_channel(
            &x,
            &s,
            &z,
            a,
            QMIN as i32,
            QMAX as i32,
            grad_factor,
        ),
    }
    .unwrap();
    let g = y.mul(&gy).unwrap().sum_all().unwrap().backward().unwrap();
    let get = |v: &Var| {
        g.get(v.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (gx, gs, gz) = (get(&x), get(&s), get(&z));
    let off = offsets(c);
    let h = 1e-6;
    // x: the STE gradient is not scaled by grad_factor.
    for i in 0..c.x.len() {
        let (mut xp, mut xm) = (c.x.clone(), c.x.clone());
        xp[i] += h;
        xm[i] -= h;
        let fd =
            (loss(c, &xp, &c.scale, &c.zp, &off) - loss(c, &xm, &c.scale, &c.zp, &off)) / (2.0 * h);
        assert!(
            (gx[i] as f64 - fd).abs() <= 1e-5 * fd.abs().max(1.0),
            "grad_x[{i}]: {} vs fd {fd}",
            gx[i]
        );
    }
    for k in 0..c.scale.len() {
        for (name, got, param) in [("scale", gs[k], 0), ("zero_point", gz[k], 1)] {
            let (mut sp, mut sm) = (c.scale.clone(), c.scale.clone());
            let (mut zp, mut zm) = (c.zp.clone(), c.zp.clone());
            if param == 0 {
                sp[k] += h;
                sm[k] -= h;
            } else {
                zp[k] += h;
                zm[k] -= h;
            }
            let fd = (loss(c, &c.x, &sp, &zp, &off) - loss(c, &c.x, &sm, &zm, &off)) / (2.0 * h)
                * grad_factor;
            let tol = 1e-4 * fd.abs().max(grad_factor);
            assert!(
                (got as f64 - fd).abs() <= tol,
                "grad_{name}[{k}]: {got} vs fd {fd}"
            );
        }
    }
}

#[test]
fn learnable_per_tensor_matches_finite_differences() {
    for seed in 0..4 {
        let c = make(300, 1, 300, seed);
        check(&c, None, &[300], 1.0);
        check(&c, None, &[10, 30], 0.25);
    }
}

#[test]
fn learnable_per_channel_matches_finite_differences() {
    for seed in 0..4 {
        // [2, 4, 25], channel axis 1: channel of element i is (i / 25) % 4.
        let c = make(200, 4, 25, seed + 10);
        check(&c, Some(1), &[2, 4, 25], 0.5);
        // Channel axis last: inner extent 1.
        let c = make(120, 6, 1, seed + 20);
        check(&c, Some(1), &[20, 6], 1.0);
    }
}
