//! Train-mode BatchNorm2d: fused op vs the candle composition (output, statistics, gradients),
//! finite differences against an f64 reference, bad and non-contiguous inputs.

mod ops_util;

use candle_core::{DType, Result, Tensor};
use ops_util::{
    assert_close, assert_stats_close, batch_norm_f64, bounds_f64, check_fd, grads_of, randn, to_vec,
};
use qat_graph::ops::{batch_norm_train, batch_norm_train_slow};

const EPS: f64 = 1e-5;

#[test]
fn ops_batch_norm_matches_candle_composition() -> Result<()> {
    // (n, c, h, w, offset): offsets test the centred sums with a large mean.
    for (ci, &(n, c, h, w, off)) in [
        (1, 3, 5, 7, 0.0),
        (3, 4, 9, 11, 0.0),
        (2, 5, 1, 1, 0.0),
        (1, 2, 1, 3, 0.0),
        (4, 8, 16, 16, 3.0), // > 32768 elements: parallel paths
        (2, 3, 6, 6, 50.0),
    ]
    .iter()
    .enumerate()
    {
        let seed = 30 * ci as u64;
        let inputs = [
            ((randn(seed, &[n, c, h, w])? * 2.0)? + off)?,
            randn(seed + 1, &[c])?,
            randn(seed + 2, &[c])?,
        ];
        let fast = grads_of(&inputs, seed + 3, |t| {
            Ok(batch_norm_train(&t[0], &t[1], &t[2], EPS)?.y)
        })?;
        let slow = grads_of(&inputs, seed + 3, |t| {
            Ok(batch_norm_train_slow(&t[0], &t[1], &t[2], EPS)?.y)
        })?;
        let what = format!("case {ci}");
        assert_close(&fast.0, &slow.0, 1e-5, &format!("{what}: output"));
        for (i, (a, b)) in fast.1.iter().zip(&slow.1).enumerate() {
            assert_close(a, b, 1e-4, &format!("{what}: gradient {i}"));
        }
        let (f, s) = (
            batch_norm_train(&inputs[0], &inputs[1], &inputs[2], EPS)?,
            batch_norm_train_slow(&inputs[0], &inputs[1], &inputs[2], EPS)?,
        );
        assert_stats_close(&f, &s, 1e-4, &what);
        // The unbiased variance is var · M / (M − 1), computed independently in f64.
        let m = (n * h * w) as f64;
        let xs = to_vec(&inputs[0]);
        for ch in 0..c {
            let vals: Vec<f64> = (0..n)
                .flat_map(|ni| xs[(ni * c + ch) * h * w..(ni * c + ch + 1) * h * w].to_vec())
                .map(|v| v as f64)
                .collect();
            let mean = vals.iter().sum::<f64>() / m;
            let uvar = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (m - 1.0);
            let got = to_vec(&f.var_unbiased)[ch] as f64;
            assert!(
                (got - uvar).abs() <= 1e-5 * uvar.max(1.0),
                "{what}: ch {ch} {got} vs {uvar}"
            );
        }
    }
    Ok(())
}

#[test]
fn ops_batch_norm_gradients_match_finite_differences() -> Result<()> {
    let (n, c, h, w) = (3, 2, 3, 4);
    let inputs = [randn(1, &[n, c, h, w])?, randn(2, &[c])?, randn(3, &[c])?];
    let (y, grads) = grads_of(&inputs, 4, |t| {
        Ok(batch_norm_train(&t[0], &t[1], &t[2], EPS)?.y)
    })?;
    check_fd(&inputs, &grads, y.elem_count(), 4, 1e-4, |xs| {
        let dims = (n, c, h * w);
        batch_norm_f64(&xs[0], dims, &xs[1], &xs[2], EPS, bounds_f64(None))
    });
    Ok(())
}

#[test]
fn ops_batch_norm_non_contiguous_and_bad_inputs() -> Result<()> {
    let xt = randn(1, &[2, 3, 5, 4])?;
    let (g, b) = (randn(2, &[3])?, randn(3, &[3])?);
    let f = grads_of(&[xt.clone(), g.clone(), b.clone()], 4, |t| {
        Ok(batch_norm_train(&t[0].transpose(2, 3)?, &t[1], &t[2], EPS)?.y)
    })?;
    let s = grads_of(&[xt, g.clone(), b.clone()], 4, |t| {
        Ok(batch_norm_train_slow(&t[0].transpose(2, 3)?.contiguous()?, &t[1], &t[2], EPS)?.y)
    })?;
    assert_close(&f.0, &s.0, 1e-5, "output");
    for (a, bb) in f.1.iter().zip(&s.1) {
        assert_close(a, bb, 1e-4, "gradient");
    }
    let x = randn(5, &[2, 3, 4, 4])?;
    let err = |r: Result<qat_graph::ops::BatchNormTrainOutput>, needle: &str| {
        let e = r.expect_err(needle).to_string();
        assert!(e.contains(needle), "{e:?} should mention {needle:?}");
    };
    err(batch_norm_train(&x.flatten_from(2)?, &g, &b, EPS), "rank 4");
    err(
        batch_norm_train(&x, &randn(6, &[4])?, &b, EPS),
        "weight must have shape",
    );
    err(
        batch_norm_train(&x, &g, &randn(6, &[2])?, EPS),
        "bias must have shape",
    );
    err(
        batch_norm_train(&randn(7, &[1, 3, 1, 1])?, &g, &b, EPS),
        "more than 1 value",
    );
    err(
        batch_norm_train(&x.to_dtype(DType::F64)?, &g, &b, EPS),
        "must be f32",
    );
    err(batch_norm_train(&x, &g, &b, -1.0), "eps");
    let _: Tensor = batch_norm_train(&x, &g, &b, EPS)?.y;
    Ok(())
}
