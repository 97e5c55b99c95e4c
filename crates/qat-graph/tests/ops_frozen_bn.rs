//! The frozen QAT Conv+BN tail (divide, shift, per-channel affine, ReLU / ReLU6 / clamp) as one
//! op: against the candle composition (values and all gradients), bit-identical (values and
//! gradients) to the three fast ops it replaces, finite differences of an f64 reference, and
//! bad inputs.

mod ops_util;

use candle_core::{Result, Tensor};
use ops_util::{assert_close, check_fd, divisor, grads_of, prescaled_inputs, ACTS};
use qat_graph::ops::{
    channel_affine_nchw, channel_div_affine_act_nchw, channel_div_affine_act_nchw_slow,
    channel_div_nchw, clamp,
};

fn fused(t: &[Tensor], act: Option<(f32, f32)>) -> Result<Tensor> {
    channel_div_affine_act_nchw(&t[0], &t[1], t.get(4), &t[2], &t[3], act)
}

#[test]
fn ops_frozen_bn_matches_candle_and_unfused_ops() -> Result<()> {
    // The last case is over the parallel threshold (2^15 elements); (2, 5, 1, 3) has planes
    // shorter than a 16-lane block, (3, 4, 9, 11) planes with a ragged tail.
    for (ci, &dims) in [(1, 3, 5, 7), (3, 4, 9, 11), (2, 5, 1, 3), (4, 8, 32, 32)]
        .iter()
        .enumerate()
    {
        for (ai, &act) in ACTS.iter().enumerate() {
            for with_shift in [false, true] {
                let seed = 60 * ci as u64 + 10 * ai as u64 + with_shift as u64;
                let mut ins = prescaled_inputs(seed, dims)?;
                if !with_shift {
                    ins.pop();
                }
                let f = grads_of(&ins, seed + 5, |t| fused(t, act))?;
                let slow = grads_of(&ins, seed + 5, |t| {
                    channel_div_affine_act_nchw_slow(&t[0], &t[1], t.get(4), &t[2], &t[3], act)
                })?;
                let unfused = grads_of(&ins, seed + 5, |t| {
                    let z = channel_div_nchw(&t[0], &t[1], t.get(4))?;
                    let y = channel_affine_nchw(&z, &t[2], Some(&t[3]))?;
                    match act {
                        Some((lo, hi)) => clamp(&y, lo, hi),
                        None => Ok(y),
                    }
                })?;
                let what = format!("case {ci} act {act:?} shift {with_shift}");
                // The same roundings as candle's separate divide, add, multiply, add.
                assert_close(&f.0, &slow.0, 0.0, &format!("{what}: output vs candle"));
                assert_close(&f.0, &unfused.0, 0.0, &format!("{what}: output vs unfused"));
                assert_eq!(f.1.len(), unfused.1.len());
                for (i, ((a, b), u)) in f.1.iter().zip(&slow.1).zip(&unfused.1).enumerate() {
                    // candle sums the per-channel gradients in another order.
                    assert_close(a, b, 1e-5, &format!("{what}: gradient {i} vs candle"));
                    // The same per-element arithmetic and summation order: bit-identical.
                    assert_close(a, u, 0.0, &format!("{what}: gradient {i} vs unfused"));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn ops_frozen_bn_gradients_match_finite_differences() -> Result<()> {
    let (n, c, h, w) = (3, 2, 3, 5);
    for (ai, &act) in ACTS.iter().enumerate() {
        let ins = prescaled_inputs(20 + 5 * ai as u64, (n, c, h, w))?;
        let (y, grads) = grads_of(&ins, 6, |t| fused(t, act))?;
        check_fd(&ins, &grads, y.elem_count(), 6, 1e-4, |xs| {
            (0..n * c * h * w)
                .map(|i| {
                    let ch = i / (h * w) % c;
                    let z = xs[0][i] / xs[1][ch] + xs[4][ch];
                    let y = z * xs[2][ch] + xs[3][ch];
                    match act {
                        Some((lo, hi)) => y.clamp(lo as f64, hi as f64),
                        None => y,
                    }
                })
                .collect()
        });
    }
    Ok(())
}

#[test]
fn ops_frozen_bn_non_contiguous_input() -> Result<()> {
    let ins = prescaled_inputs(7, (2, 3, 4, 5))?;
    // The same values laid out transposed in memory: a strided view.
    let xt = ins[0].transpose(2, 3)?.contiguous()?.transpose(2, 3)?;
    assert!(!xt.is_contiguous());
    let act = Some((0.0, 6.0));
    let mut strided = ins.clone();
    strided[0] = xt;
    let a = grads_of(&ins, 9, |t| fused(t, act))?;
    let b = grads_of(&strided, 9, |t| fused(t, act))?;
    assert_close(&a.0, &b.0, 0.0, "output");
    for (i, (ga, gb)) in a.1.iter().zip(&b.1).enumerate() {
        assert_close(ga, gb, 0.0, &format!("gradient {i}"));
    }
    Ok(())
}

#[test]
fn ops_frozen_bn_bad_inputs_are_errors() -> Result<()> {
    let ins = prescaled_inputs(1, (2, 3, 4, 4))?;
    let (x, s, a, t, b) = (&ins[0], &ins[1], &ins[2], &ins[3], &ins[4]);
    let err = |r: Result<Tensor>, needle: &str| {
        let e = r.expect_err("expected an error").to_string();
        assert!(e.contains(needle), "error {e:?} lacks {needle:?}");
    };
    let f = channel_div_affine_act_nchw;
    err(f(x, s, None, a, t, Some((6.0, 0.0))), "min <= max");
    err(f(x, s, None, a, t, Some((f32::NAN, 6.0))), "min <= max");
    err(
        f(x, &divisor(3, 2)?, None, a, t, None),
        "divisor must have shape [3]",
    );
    err(
        f(x, s, Some(&divisor(3, 4)?), a, t, None),
        "shift must have shape [3]",
    );
    err(
        f(x, s, Some(b), &a.narrow(0, 0, 2)?, t, None),
        "scale must have shape [3]",
    );
    err(
        f(x, s, None, a, &t.unsqueeze(0)?, None),
        "bias must have shape [3]",
    );
    err(f(&x.flatten_from(2)?, s, None, a, t, None), "rank 4");
    err(
        f(&x.to_dtype(candle_core::DType::F64)?, s, None, a, t, None),
        "must be f32",
    );
    Ok(())
}
