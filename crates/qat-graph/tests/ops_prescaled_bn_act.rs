//! BatchNorm of a per-channel divided input fused with ReLU / ReLU6 / clamp (the QAT
//! Conv+BN+act tail as one op): against the candle composition (divide, BatchNorm, clamp:
//! values, statistics, all gradients), bit-identical (values and gradients) to the unfused
//! fast ops it replaces, finite differences of an f64 reference, and bad inputs.

mod ops_util;

use candle_core::{Result, Tensor};
use ops_util::{
    assert_close, assert_stats_close, batch_norm_f64, check_fd, divisor, grads_of, prescale_f64,
    prescaled_inputs, CLAMPS,
};
use qat_graph::ops::{
    batch_norm_act_train_prescaled, batch_norm_act_train_prescaled_slow,
    batch_norm_train_prescaled, clamp, BatchNormTrainOutput,
};

const EPS: f64 = 1e-5;

/// The signature of [`batch_norm_act_train_prescaled`] and its candle twin.
type PrescaledAct = fn(
    &Tensor,
    &Tensor,
    Option<&Tensor>,
    &Tensor,
    &Tensor,
    f64,
    f32,
    f32,
) -> Result<BatchNormTrainOutput>;

/// `f` on `t = [x, divisor, γ, β, shift?]` (see [`prescaled_inputs`]) with the activation `(min, max)`.
fn apply(f: PrescaledAct, t: &[Tensor], (lo, hi): (f32, f32)) -> Result<BatchNormTrainOutput> {
    f(&t[0], &t[1], t.get(4), &t[2], &t[3], EPS, lo, hi)
}

#[test]
fn ops_prescaled_bn_act_matches_candle_and_unfused_ops() -> Result<()> {
    // The last case is over the parallel threshold (2^15 elements).
    for (ci, &dims) in [(1, 3, 5, 7), (3, 4, 9, 11), (2, 5, 1, 3), (4, 8, 32, 32)]
        .iter()
        .enumerate()
    {
        for (ai, &(lo, hi)) in CLAMPS.iter().enumerate() {
            for with_shift in [false, true] {
                let seed = 60 * ci as u64 + 10 * ai as u64 + with_shift as u64;
                let mut ins = prescaled_inputs(seed, dims)?;
                if !with_shift {
                    ins.pop();
                }
                let act = (lo, hi);
                let fused = grads_of(&ins, seed + 5, |t| {
                    Ok(apply(batch_norm_act_train_prescaled, t, act)?.y)
                })?;
                let slow = grads_of(&ins, seed + 5, |t| {
                    Ok(apply(batch_norm_act_train_prescaled_slow, t, act)?.y)
                })?;
                let unfused = grads_of(&ins, seed + 5, |t| {
                    let o = batch_norm_train_prescaled(&t[0], &t[1], t.get(4), &t[2], &t[3], EPS)?;
                    clamp(&o.y, lo, hi)
                })?;
                let what = format!("case {ci} act ({lo}, {hi}) shift {with_shift}");
                assert_close(
                    &fused.0,
                    &slow.0,
                    1e-5,
                    &format!("{what}: output vs candle"),
                );
                // The same affine then the same clamp: bit-identical to the unfused ops.
                assert_close(
                    &fused.0,
                    &unfused.0,
                    0.0,
                    &format!("{what}: output vs unfused"),
                );
                for (i, ((a, b), u)) in fused.1.iter().zip(&slow.1).zip(&unfused.1).enumerate() {
                    // The output does not depend on the divisor or the shift (BatchNorm undoes
                    // per-channel scaling and shifting, up to eps): their gradients are zero up
                    // to the rounding of sums over N·H·W terms, which candle's summation order
                    // rounds differently.
                    let tol = if i == 1 || i == 4 { 1e-3 } else { 1e-4 };
                    assert_close(a, b, tol, &format!("{what}: gradient {i} vs candle"));
                    // The activation's mask then the unfused kernels: bit-identical too.
                    assert_close(a, u, 0.0, &format!("{what}: gradient {i} vs unfused"));
                }
                let s = apply(batch_norm_act_train_prescaled_slow, &ins, act)?;
                let f = apply(batch_norm_act_train_prescaled, &ins, act)?;
                assert_stats_close(&f, &s, 1e-4, &what);
            }
        }
    }
    Ok(())
}

#[test]
fn ops_prescaled_bn_act_gradients_match_finite_differences() -> Result<()> {
    let (n, c, h, w) = (3, 2, 3, 4);
    for (ai, &(lo, hi)) in CLAMPS.iter().enumerate() {
        let ins = prescaled_inputs(20 + 5 * ai as u64, (n, c, h, w))?;
        let (y, grads) = grads_of(&ins, 6, |t| {
            Ok(apply(batch_norm_act_train_prescaled, t, (lo, hi))?.y)
        })?;
        let (lo, hi) = (lo as f64, hi as f64);
        check_fd(&ins, &grads, y.elem_count(), 6, 1e-4, |xs| {
            let z = prescale_f64(&xs[0], &xs[1], &xs[4], (n, c, h * w));
            batch_norm_f64(&z, (n, c, h * w), &xs[2], &xs[3], EPS, (lo, hi))
        });
    }
    Ok(())
}

#[test]
fn ops_prescaled_bn_act_bad_inputs_are_errors() -> Result<()> {
    let ins = prescaled_inputs(1, (2, 3, 4, 4))?;
    let (x, s, g, b) = (&ins[0], &ins[1], &ins[2], &ins[3]);
    let err = |r: Result<BatchNormTrainOutput>, needle: &str| {
        let e = r.expect_err("expected an error").to_string();
        assert!(e.contains(needle), "error {e:?} lacks {needle:?}");
    };
    let f = batch_norm_act_train_prescaled;
    err(f(x, s, None, g, b, EPS, 6.0, 0.0), "min <= max");
    err(f(x, s, None, g, b, EPS, 0.0, f32::NAN), "min <= max");
    err(
        f(x, &divisor(3, 2)?, None, g, b, EPS, 0.0, 6.0),
        "divisor and shift must have shape [3]",
    );
    err(
        f(x, s, Some(&divisor(3, 4)?), g, b, EPS, 0.0, 6.0),
        "divisor and shift must have shape [3]",
    );
    err(
        f(x, s, None, &g.narrow(0, 0, 2)?, b, EPS, 0.0, 6.0),
        "weight must have shape [3]",
    );
    err(
        f(&x.flatten_from(2)?, s, None, g, b, EPS, 0.0, 6.0),
        "rank 4",
    );
    err(f(x, s, None, g, b, -1.0, 0.0, 6.0), "eps");
    let single = x.narrow(0, 0, 1)?.narrow(2, 0, 1)?.narrow(3, 0, 1)?;
    err(
        f(&single, s, None, g, b, EPS, 0.0, 6.0),
        "more than 1 value per channel",
    );
    Ok(())
}
