//! BatchNorm of a per-channel divided input (the QAT Conv+BN un-scaling fused into the BN):
//! against the candle composition and the two fast ops it replaces (values, statistics, all
//! gradients), finite differences of an f64 reference, bad inputs.

mod ops_util;

use candle_core::Result;
use ops_util::{
    assert_close, assert_stats_close, batch_norm_f64, bounds_f64, check_fd, divisor, grads_of,
    prescale_f64, randn,
};
use qat_graph::ops::{
    batch_norm_train, batch_norm_train_prescaled, batch_norm_train_prescaled_slow, channel_div_nchw,
};

const EPS: f64 = 1e-5;

#[test]
fn ops_prescaled_bn_matches_candle_and_unfused_ops() -> Result<()> {
    // The last case is over the parallel threshold (2^15 elements).
    for (ci, &(n, c, h, w)) in [(1, 3, 5, 7), (3, 4, 9, 11), (2, 5, 1, 3), (4, 8, 32, 32)]
        .iter()
        .enumerate()
    {
        for with_shift in [false, true] {
            let seed = 50 * ci as u64 + with_shift as u64;
            let mut ins = vec![
                ((randn(seed, &[n, c, h, w])? * 3.0)? + 1.0)?,
                divisor(seed + 1, c)?,
                randn(seed + 2, &[c])?,
                randn(seed + 3, &[c])?,
            ];
            if with_shift {
                ins.push(randn(seed + 4, &[c])?);
            }
            let fast = grads_of(&ins, seed + 5, |t| {
                Ok(batch_norm_train_prescaled(&t[0], &t[1], t.get(4), &t[2], &t[3], EPS)?.y)
            })?;
            let slow = grads_of(&ins, seed + 5, |t| {
                Ok(batch_norm_train_prescaled_slow(&t[0], &t[1], t.get(4), &t[2], &t[3], EPS)?.y)
            })?;
            let unfused = grads_of(&ins, seed + 5, |t| {
                let z = channel_div_nchw(&t[0], &t[1], t.get(4))?;
                Ok(batch_norm_train(&z, &t[2], &t[3], EPS)?.y)
            })?;
            let what = format!("case {ci} shift {with_shift}");
            assert_close(&fast.0, &slow.0, 1e-5, &format!("{what}: output vs candle"));
            assert_close(
                &fast.0,
                &unfused.0,
                1e-5,
                &format!("{what}: output vs unfused"),
            );
            for (i, ((a, b), u)) in fast.1.iter().zip(&slow.1).zip(&unfused.1).enumerate() {
                assert_close(a, b, 1e-4, &format!("{what}: gradient {i} vs candle"));
                assert_close(a, u, 1e-4, &format!("{what}: gradient {i} vs unfused"));
            }
            let f =
                batch_norm_train_prescaled(&ins[0], &ins[1], ins.get(4), &ins[2], &ins[3], EPS)?;
            let s = batch_norm_train_prescaled_slow(
                &ins[0],
                &ins[1],
                ins.get(4),
                &ins[2],
                &ins[3],
                EPS,
            )?;
            assert_stats_close(&f, &s, 1e-4, &what);
        }
    }
    Ok(())
}

#[test]
fn ops_prescaled_bn_gradients_match_finite_differences() -> Result<()> {
    let (n, c, h, w) = (3, 2, 3, 4);
    let ins = [
        randn(1, &[n, c, h, w])?,
        divisor(2, c)?,
        randn(3, &[c])?,
        randn(4, &[c])?,
        randn(5, &[c])?,
    ];
    let (y, grads) = grads_of(&ins, 6, |t| {
        Ok(batch_norm_train_prescaled(&t[0], &t[1], Some(&t[4]), &t[2], &t[3], EPS)?.y)
    })?;
    check_fd(&ins, &grads, y.elem_count(), 6, 1e-4, |xs| {
        let z = prescale_f64(&xs[0], &xs[1], &xs[4], (n, c, h * w));
        batch_norm_f64(&z, (n, c, h * w), &xs[2], &xs[3], EPS, bounds_f64(None))
    });
    Ok(())
}

#[test]
fn ops_prescaled_bn_bad_inputs_are_errors() -> Result<()> {
    let x = randn(1, &[2, 3, 4, 4])?;
    let (s, g, b) = (divisor(2, 3)?, randn(3, &[3])?, randn(4, &[3])?);
    let err = |r: Result<qat_graph::ops::BatchNormTrainOutput>, needle: &str| {
        let e = r.expect_err("expected an error").to_string();
        assert!(e.contains(needle), "error {e:?} lacks {needle:?}");
    };
    err(
        batch_norm_train_prescaled(&x, &divisor(3, 2)?, None, &g, &b, EPS),
        "divisor and shift must have shape [3]",
    );
    err(
        batch_norm_train_prescaled(&x, &s, Some(&divisor(3, 4)?), &g, &b, EPS),
        "divisor and shift must have shape [3]",
    );
    err(
        batch_norm_train_prescaled(&x, &s, None, &g.narrow(0, 0, 2)?, &b, EPS),
        "weight must have shape [3]",
    );
    err(
        batch_norm_train_prescaled(&x.flatten_from(2)?, &s, None, &g, &b, EPS),
        "rank 4",
    );
    err(
        batch_norm_train_prescaled(&x, &s, None, &g, &b, f64::NAN),
        "eps",
    );
    err(
        batch_norm_train_prescaled(
            &x.narrow(0, 0, 1)?.narrow(2, 0, 1)?.narrow(3, 0, 1)?,
            &s,
            None,
            &g,
            &b,
            EPS,
        ),
        "more than 1 value per channel",
    );
    Ok(())
}
