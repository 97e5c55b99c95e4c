//! Train-mode BatchNorm2d fused with ReLU / ReLU6 / clamp: against the candle composition
//! (BatchNorm then clamp, values and all gradients), against the unfused fast ops, finite
//! differences of an f64 reference, and bad inputs.

mod ops_util;

use candle_core::{Result, Tensor};
use ops_util::{
    assert_close, assert_stats_close, batch_norm_f64, check_fd, grads_of, randn, CLAMPS,
};
use qat_graph::ops::{batch_norm_act_train, batch_norm_act_train_slow, batch_norm_train, clamp};

const EPS: f64 = 1e-5;

fn inputs(seed: u64, (n, c, h, w): (usize, usize, usize, usize)) -> Result<[Tensor; 3]> {
    // γ around 3 and β around 2 put a good share of the outputs beyond both ReLU6 bounds.
    Ok([
        randn(seed, &[n, c, h, w])?,
        ((randn(seed + 1, &[c])? + 3.0)?),
        ((randn(seed + 2, &[c])? + 2.0)?),
    ])
}

#[test]
fn ops_batch_norm_act_matches_candle_composition_and_unfused_ops() -> Result<()> {
    for (ci, &dims) in [(1, 3, 5, 7), (3, 4, 9, 11), (2, 5, 1, 3), (4, 8, 16, 16)]
        .iter()
        .enumerate()
    {
        for (ai, &(lo, hi)) in CLAMPS.iter().enumerate() {
            let seed = 40 * ci as u64 + ai as u64;
            let ins = inputs(seed, dims)?;
            let fused = grads_of(&ins, seed + 3, |t| {
                Ok(batch_norm_act_train(&t[0], &t[1], &t[2], EPS, lo, hi)?.y)
            })?;
            let slow = grads_of(&ins, seed + 3, |t| {
                Ok(batch_norm_act_train_slow(&t[0], &t[1], &t[2], EPS, lo, hi)?.y)
            })?;
            let unfused = grads_of(&ins, seed + 3, |t| {
                clamp(&batch_norm_train(&t[0], &t[1], &t[2], EPS)?.y, lo, hi)
            })?;
            let what = format!("case {ci} act ({lo}, {hi})");
            assert_close(
                &fused.0,
                &slow.0,
                1e-5,
                &format!("{what}: output vs candle"),
            );
            // Same kernels for the statistics and the affine: bit-identical to the unfused ops.
            assert_close(
                &fused.0,
                &unfused.0,
                0.0,
                &format!("{what}: output vs unfused"),
            );
            for (i, ((a, b), u)) in fused.1.iter().zip(&slow.1).zip(&unfused.1).enumerate() {
                assert_close(a, b, 1e-4, &format!("{what}: gradient {i} vs candle"));
                assert_close(a, u, 1e-5, &format!("{what}: gradient {i} vs unfused"));
            }
            let (f, s) = (
                batch_norm_act_train(&ins[0], &ins[1], &ins[2], EPS, lo, hi)?,
                batch_norm_act_train_slow(&ins[0], &ins[1], &ins[2], EPS, lo, hi)?,
            );
            assert_stats_close(&f, &s, 1e-4, &what);
        }
    }
    Ok(())
}

#[test]
fn ops_batch_norm_act_gradients_match_finite_differences() -> Result<()> {
    let (n, c, h, w) = (3, 2, 3, 4);
    for (ai, &(lo, hi)) in CLAMPS.iter().enumerate() {
        let ins = inputs(10 + ai as u64, (n, c, h, w))?;
        let (y, grads) = grads_of(&ins, 4, |t| {
            Ok(batch_norm_act_train(&t[0], &t[1], &t[2], EPS, lo, hi)?.y)
        })?;
        let (lo, hi) = (lo as f64, hi as f64);
        check_fd(&ins, &grads, y.elem_count(), 4, 1e-4, |xs| {
            batch_norm_f64(&xs[0], (n, c, h * w), &xs[1], &xs[2], EPS, (lo, hi))
        });
    }
    Ok(())
}

#[test]
fn ops_batch_norm_act_bad_inputs_are_errors() -> Result<()> {
    let [x, g, b] = inputs(1, (2, 3, 4, 4))?;
    let err = |r: Result<qat_graph::ops::BatchNormTrainOutput>, needle: &str| {
        let e = r.expect_err("expected an error").to_string();
        assert!(e.contains(needle), "error {e:?} lacks {needle:?}");
    };
    err(
        batch_norm_act_train(&x, &g, &b, EPS, 6.0, 0.0),
        "min <= max",
    );
    err(
        batch_norm_act_train(&x, &g, &b, EPS, f32::NAN, 6.0),
        "min <= max",
    );
    err(
        batch_norm_act_train(&x, &g.narrow(0, 0, 2)?, &b, EPS, 0.0, 6.0),
        "weight must have shape [3]",
    );
    err(
        batch_norm_act_train(&x.flatten_from(2)?, &g, &b, EPS, 0.0, 6.0),
        "rank 4",
    );
    err(batch_norm_act_train(&x, &g, &b, -1.0, 0.0, 6.0), "eps");
    err(
        batch_norm_act_train(
            &x.narrow(2, 0, 1)?.narrow(3, 0, 1)?.narrow(0, 0, 1)?,
            &g,
            &b,
            EPS,
            0.0,
            6.0,
        ),
        "more than 1 value per channel",
    );
    Ok(())
}
