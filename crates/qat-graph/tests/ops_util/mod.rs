//! Shared helpers for the `ops_*` tests: seeded random tensors, closeness checks, and a
//! finite-difference gradient check against an f64 reference forward.
#![allow(dead_code)]

use candle_core::{Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};

/// Seeded standard-normal-ish values (sum of uniforms; exact distribution does not matter).
pub fn randn(seed: u64, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(rand_vec(seed, shape.iter().product()), shape, &Device::Cpu)
}

pub fn rand_vec(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..4).map(|_| rng.gen::<f32>()).sum::<f32>() - 2.0)
        .collect()
}

pub fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Asserts `|a - b| <= tol * max(1, max|b|)` element-wise, with the shapes equal.
pub fn assert_close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes differ");
    let (a, b) = (to_vec(a), to_vec(b));
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= tol * scale,
            "{what}: element {i}: {x} vs {y} (tol {tol} x scale {scale})"
        );
    }
}

/// Variables for each input, the loss `sum(f(inputs) * r)` for a fixed random `r`, and the
/// gradient of every input.
pub fn grads_of(
    inputs: &[Tensor],
    seed: u64,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<(Tensor, Vec<Tensor>)> {
    let vars: Vec<Var> = inputs.iter().map(Var::from_tensor).collect::<Result<_>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts)?;
    let r = randn(seed, y.dims())?;
    let loss = (&y * &r)?.sum_all()?;
    let store = loss.backward()?;
    let grads = ts
        .iter()
        .map(|t| {
            store
                .get(t)
                .cloned()
                .unwrap_or_else(|| t.zeros_like().unwrap())
        })
        .collect();
    Ok((y, grads))
}

/// Central finite differences of `sum(reference(inputs) * r)` in f64, compared with `grads`
/// (which came from [`grads_of`] with the same `seed`): `|g - fd| <= tol * max(1, max|fd|)`.
pub fn check_fd(
    inputs: &[Tensor],
    grads: &[Tensor],
    out_len: usize,
    seed: u64,
    tol: f64,
    reference: impl Fn(&[Vec<f64>]) -> Vec<f64>,
) {
    let r: Vec<f64> = rand_vec(seed, out_len).iter().map(|&v| v as f64).collect();
    let mut xs: Vec<Vec<f64>> = inputs
        .iter()
        .map(|t| to_vec(t).iter().map(|&v| v as f64).collect())
        .collect();
    let loss = |xs: &[Vec<f64>]| -> f64 {
        let y = reference(xs);
        assert_eq!(y.len(), out_len, "reference output length");
        y.iter().zip(&r).map(|(a, b)| a * b).sum()
    };
    let h = 1e-6;
    for (k, g) in grads.iter().enumerate() {
        let g = to_vec(g);
        let mut fd = vec![0f64; xs[k].len()];
        for (i, fdi) in fd.iter_mut().enumerate() {
            let orig = xs[k][i];
            xs[k][i] = orig + h;
            let lp = loss(&xs);
            xs[k][i] = orig - h;
            let lm = loss(&xs);
            xs[k][i] = orig;
            *fdi = (lp - lm) / (2.0 * h);
        }
        let scale = fd.iter().fold(1f64, |m, v| m.max(v.abs()));
        for (i, (a, b)) in g.iter().zip(&fd).enumerate() {
            assert!(
                (*a as f64 - b).abs() <= tol * scale,
                "input {k} element {i}: autograd {a} vs finite difference {b}"
            );
        }
    }
}

/// The batch statistics of two train-mode BatchNorm results agree: mean within 1e-5, biased
/// and unbiased variance within `var_tol`.
pub fn assert_stats_close(
    a: &qat_graph::ops::BatchNormTrainOutput,
    b: &qat_graph::ops::BatchNormTrainOutput,
    var_tol: f32,
    what: &str,
) {
    assert_close(&a.mean, &b.mean, 1e-5, &format!("{what}: mean"));
    assert_close(&a.var, &b.var, var_tol, &format!("{what}: var"));
    assert_close(
        &a.var_unbiased,
        &b.var_unbiased,
        var_tol,
        &format!("{what}: unbiased var"),
    );
}

/// Train-mode BatchNorm in f64 of NCHW `z` (`(n, c, p)`: batch, channels, pixels per plane):
/// per channel the batch mean and biased variance, `(z - mean) / sqrt(var + eps) · gamma +
/// beta`, clamped to `lo..=hi` (see [`bounds_f64`]). The reference forward of the BatchNorm
/// finite-difference checks.
pub fn batch_norm_f64(
    z: &[f64],
    (n, c, p): (usize, usize, usize),
    gamma: &[f64],
    beta: &[f64],
    eps: f64,
    (lo, hi): (f64, f64),
) -> Vec<f64> {
    assert_eq!(z.len(), n * c * p, "batch_norm_f64 input length");
    let m = (n * p) as f64;
    let mut out = vec![0f64; n * c * p];
    for ch in 0..c {
        let idx = |ni: usize, i: usize| (ni * c + ch) * p + i;
        let all = || (0..n).flat_map(|ni| (0..p).map(move |i| (ni, i)));
        let mean = all().map(|(ni, i)| z[idx(ni, i)]).sum::<f64>() / m;
        let var = all()
            .map(|(ni, i)| (z[idx(ni, i)] - mean).powi(2))
            .sum::<f64>()
            / m;
        for (ni, i) in all() {
            let y = (z[idx(ni, i)] - mean) / (var + eps).sqrt() * gamma[ch] + beta[ch];
            out[idx(ni, i)] = y.clamp(lo, hi);
        }
    }
    out
}

/// A fused clamp's bounds in f64; `None` (no activation) is `(-inf, inf)`.
pub fn bounds_f64(act: Option<(f32, f32)>) -> (f64, f64) {
    act.map_or((f64::NEG_INFINITY, f64::INFINITY), |(lo, hi)| {
        (lo as f64, hi as f64)
    })
}

/// Asserts `r` is an `Err` whose message contains `needle`.
pub fn expect_err<T>(r: Result<T>, needle: &str) {
    match r {
        Ok(_) => panic!("expected an error containing {needle:?}"),
        Err(e) => assert!(
            e.to_string().contains(needle),
            "error {e} does not mention {needle:?}"
        ),
    }
}

/// `x / s + shift` per channel of NCHW `x` (`(n, c, p)` as in [`batch_norm_f64`]) in f64: the
/// prescaled BatchNorm's normalised input.
pub fn prescale_f64(
    x: &[f64],
    s: &[f64],
    shift: &[f64],
    (n, c, p): (usize, usize, usize),
) -> Vec<f64> {
    assert_eq!(x.len(), n * c * p, "prescale_f64 input length");
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = i / p % c;
            v / s[ch] + shift[ch]
        })
        .collect()
}

/// `(min, max)` of each fused clamp the tests take: ReLU6, ReLU, an asymmetric clamp.
pub const CLAMPS: [(f32, f32); 3] = [(0.0, 6.0), (0.0, f32::INFINITY), (-0.5, 1.25)];

/// No activation, then each of [`CLAMPS`].
pub const ACTS: [Option<(f32, f32)>; 4] = [None, Some(CLAMPS[0]), Some(CLAMPS[1]), Some(CLAMPS[2])];

/// `c` divisors away from zero, like BN scale factors γ / σ (negative ones included).
pub fn divisor(seed: u64, c: usize) -> Result<Tensor> {
    let r = randn(seed, &[c])?;
    (r.sign()? * (r.abs()? + 0.3)?)?.contiguous()
}

/// `[x, divisor, γ, β, shift]` of a prescaled BatchNorm over NCHW `(n, c, h, w)`: `x` around
/// 1 (spread 3), a [`divisor`], γ around 3 and β around 2 (a good share of the outputs
/// beyond both ReLU6 bounds), a shift around 0.
pub fn prescaled_inputs(
    seed: u64,
    (n, c, h, w): (usize, usize, usize, usize),
) -> Result<Vec<Tensor>> {
    Ok(vec![
        ((randn(seed, &[n, c, h, w])? * 3.0)? + 1.0)?,
        divisor(seed + 1, c)?,
        (randn(seed + 2, &[c])? + 3.0)?,
        (randn(seed + 3, &[c])? + 2.0)?,
        randn(seed + 4, &[c])?,
    ])
}
