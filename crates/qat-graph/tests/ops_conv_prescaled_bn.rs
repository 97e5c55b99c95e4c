//! The live QAT Conv+BN(+clamp) as one op (1×1 or depthwise conv, then train-mode BatchNorm of
//! `conv / divisor + shift`): bit-identical to the two fast ops it fuses (values, statistics,
//! all six gradients), close to the candle composition, finite differences against an f64
//! reference, the rayon path, and bad inputs.

mod ops_util;

use candle_core::{DType, Device, Result, Tensor};
use ops_util::{
    assert_close, assert_stats_close, batch_norm_f64, bounds_f64, check_fd, expect_err, grads_of,
    randn, ACTS,
};
use qat_graph::ops::{
    batch_norm_act_train, batch_norm_act_train_prescaled, batch_norm_train_prescaled, conv1x1,
    conv1x1_bn_act_train, conv1x1_bn_act_train_prescaled, conv_bn_act_train_prescaled_slow,
    depthwise_bn_act_train_prescaled, depthwise_conv2d_dilated, BatchNormTrainOutput,
};

const EPS: f64 = 1e-5;

/// A convolution: 1×1 (`None`) or depthwise `(k, stride, padding, dilation)`.
type Kind = Option<(usize, usize, usize, usize)>;

/// (n, c_in, c_out, h, w, kind); c_out = c_in for depthwise. The last two take the rayon paths.
const CASES: [(usize, usize, usize, usize, usize, Kind); 7] = [
    (1, 3, 4, 5, 7, None),
    (3, 5, 2, 4, 4, None),
    (2, 4, 6, 1, 3, None),
    (2, 3, 3, 7, 6, Some((3, 1, 1, 1))),
    (3, 4, 4, 9, 11, Some((3, 2, 1, 1))),
    (8, 16, 24, 14, 14, None),
    (8, 24, 24, 14, 14, Some((3, 2, 1, 1))),
];

/// `[x, w, divisor, γ, β, shift]`: a divisor away from zero like a BN scale factor γ / σ; γ
/// around 3 and β around 2 put outputs beyond both ReLU6 bounds.
fn inputs(
    seed: u64,
    (n, c, o, h, w, kind): (usize, usize, usize, usize, usize, Kind),
) -> Result<Vec<Tensor>> {
    let wshape = match kind {
        None => vec![o, c, 1, 1],
        Some((k, ..)) => vec![c, 1, k, k],
    };
    let r = randn(seed + 2, &[o])?;
    Ok(vec![
        randn(seed, &[n, c, h, w])?,
        randn(seed + 1, &wshape)?,
        (r.sign()? * (r.abs()? + 0.3)?)?.contiguous()?,
        (randn(seed + 3, &[o])? + 3.0)?,
        (randn(seed + 4, &[o])? + 2.0)?,
        randn(seed + 5, &[o])?,
    ])
}

fn fused(t: &[Tensor], kind: Kind, act: Option<(f32, f32)>) -> Result<BatchNormTrainOutput> {
    let (x, w, s, g, b, sh) = (&t[0], &t[1], &t[2], &t[3], &t[4], t.get(5));
    match kind {
        None => conv1x1_bn_act_train_prescaled(x, w, s, sh, g, b, EPS, act),
        Some((_, st, p, d)) => {
            depthwise_bn_act_train_prescaled(x, w, s, sh, g, b, EPS, (st, p, d), act)
        }
    }
}

fn unfused(t: &[Tensor], kind: Kind, act: Option<(f32, f32)>) -> Result<BatchNormTrainOutput> {
    let (x, w, s, g, b, sh) = (&t[0], &t[1], &t[2], &t[3], &t[4], t.get(5));
    let u = match kind {
        None => conv1x1(x, w, None, 1)?,
        Some((_, st, p, d)) => depthwise_conv2d_dilated(x, w, None, st, p, d)?,
    };
    match act {
        None => batch_norm_train_prescaled(&u, s, sh, g, b, EPS),
        Some((lo, hi)) => batch_norm_act_train_prescaled(&u, s, sh, g, b, EPS, lo, hi),
    }
}

fn slow(t: &[Tensor], kind: Kind, act: Option<(f32, f32)>) -> Result<BatchNormTrainOutput> {
    let geom = kind.map(|(_, s, p, d)| (s, p, d));
    conv_bn_act_train_prescaled_slow(&t[0], &t[1], geom, &t[2], t.get(5), &t[3], &t[4], EPS, act)
}

#[test]
fn ops_conv_prescaled_bn_equals_unfused_ops_and_matches_candle() -> Result<()> {
    for (ci, &case) in CASES.iter().enumerate() {
        for (ai, &act) in ACTS.iter().enumerate() {
            for with_shift in [false, true] {
                let seed = 100 * ci as u64 + 10 * ai as u64 + with_shift as u64;
                let mut ins = inputs(seed, case)?;
                if !with_shift {
                    ins.pop();
                }
                let kind = case.5;
                let what = format!("case {case:?} act {act:?} shift {with_shift}");
                let (yf, gf) = grads_of(&ins, seed + 7, |t| Ok(fused(t, kind, act)?.y))?;
                let (yu, gu) = grads_of(&ins, seed + 7, |t| Ok(unfused(t, kind, act)?.y))?;
                let (ys, gs) = grads_of(&ins, seed + 7, |t| Ok(slow(t, kind, act)?.y))?;
                // Bit for bit (up to the sign of zero, which `assert_close` ignores).
                assert_close(&yf, &yu, 0.0, &format!("{what}: output vs unfused"));
                assert_close(&yf, &ys, 1e-5, &format!("{what}: output vs candle"));
                assert_eq!(gf.len(), ins.len());
                for i in 0..ins.len() {
                    assert_close(&gf[i], &gu[i], 0.0, &format!("{what}: grad {i} vs unfused"));
                    // The output does not depend on the divisor or the shift (BatchNorm
                    // undoes them up to eps): their gradients are sums of N·H·W terms that
                    // cancel, rounded differently in candle's order.
                    let tol = if i == 2 || i == 5 { 1e-3 } else { 1e-4 };
                    assert_close(&gf[i], &gs[i], tol, &format!("{what}: grad {i} vs candle"));
                }
                let (of, ou) = (fused(&ins, kind, act)?, unfused(&ins, kind, act)?);
                assert_stats_close(&of, &ou, 0.0, &what);
                assert_stats_close(&of, &slow(&ins, kind, act)?, 1e-4, &what);
            }
        }
    }
    Ok(())
}

#[test]
fn ops_conv_prescaled_bn_gradients_match_finite_differences() -> Result<()> {
    // A 1×1 conv; the depthwise one shares every kernel with the tested unfused ops.
    let (n, c, o, h, w) = (2, 3, 4, 3, 2);
    for (ai, &act) in ACTS.iter().enumerate() {
        let seed = 900 + 10 * ai as u64;
        let ins = inputs(seed, (n, c, o, h, w, None))?;
        let (y, grads) = grads_of(&ins, seed + 7, |t| Ok(fused(t, None, act)?.y))?;
        let bounds = bounds_f64(act);
        check_fd(&ins, &grads, y.elem_count(), seed + 7, 1e-4, |xs| {
            let p = h * w;
            // z = W·x / s + shift per image, then BatchNorm per output channel, then clamp.
            let mut z = vec![0f64; n * o * p];
            for ni in 0..n {
                for oc in 0..o {
                    for i in 0..p {
                        let u: f64 = (0..c)
                            .map(|ic| xs[1][oc * c + ic] * xs[0][(ni * c + ic) * p + i])
                            .sum();
                        z[(ni * o + oc) * p + i] = u / xs[2][oc] + xs[5][oc];
                    }
                }
            }
            batch_norm_f64(&z, (n, o, p), &xs[3], &xs[4], EPS, bounds)
        });
    }
    Ok(())
}

#[test]
fn ops_conv_prescaled_bn_bad_inputs_are_errors() -> Result<()> {
    let dev = Device::Cpu;
    let t = inputs(1, (2, 3, 4, 4, 4, None))?;
    let (x, w, s, g, b, sh) = (&t[0], &t[1], &t[2], &t[3], &t[4], &t[5]);
    let f = conv1x1_bn_act_train_prescaled;
    expect_err(
        f(&x.flatten_from(2)?, w, s, None, g, b, EPS, None),
        "rank 4",
    );
    let w3 = Tensor::zeros((4, 3, 3, 3), DType::F32, &dev)?;
    expect_err(f(x, &w3, s, None, g, b, EPS, None), "[O, C, 1, 1]");
    let w5 = Tensor::zeros((4, 5, 1, 1), DType::F32, &dev)?;
    expect_err(f(x, &w5, s, None, g, b, EPS, None), "input channels");
    let three = Tensor::ones(3, DType::F32, &dev)?;
    expect_err(
        f(x, w, s, None, &three, b, EPS, None),
        "weight must have shape [4]",
    );
    expect_err(
        f(x, w, s, None, g, &three, EPS, None),
        "bias must have shape [4]",
    );
    expect_err(
        f(x, w, &three, None, g, b, EPS, None),
        "divisor and shift must have shape [4]",
    );
    expect_err(
        f(x, w, s, Some(&three), g, b, EPS, None),
        "divisor and shift must have shape [4]",
    );
    let one_pixel = x.narrow(0, 0, 1)?.narrow(2, 0, 1)?.narrow(3, 0, 1)?;
    expect_err(
        f(&one_pixel, w, s, Some(sh), g, b, EPS, None),
        "more than 1 value per channel",
    );
    expect_err(f(x, w, s, None, g, b, -1.0, None), "eps");
    expect_err(
        f(&x.to_dtype(DType::F64)?, w, s, None, g, b, EPS, None),
        "f32",
    );
    expect_err(f(x, w, s, None, g, b, EPS, Some((6.0, 0.0))), "min <= max");
    expect_err(
        f(x, w, s, None, g, b, EPS, Some((f32::NAN, 6.0))),
        "min <= max",
    );
    let wd = Tensor::zeros((4, 1, 3, 3), DType::F32, &dev)?;
    expect_err(
        depthwise_bn_act_train_prescaled(x, &wd, s, None, g, b, EPS, (1, 1, 1), None),
        "weight must be [C, 1, KH, KW]",
    );
    expect_err(
        depthwise_bn_act_train_prescaled(
            x,
            &w3.narrow(0, 0, 3)?.narrow(1, 0, 1)?,
            s,
            None,
            g,
            b,
            EPS,
            (0, 1, 1),
            None,
        ),
        "stride",
    );
    Ok(())
}

#[test]
fn ops_conv_bn_recycled_buffers_do_not_leak_into_results() -> Result<()> {
    // The fused ops take their convolution output and BatchNorm gradient buffers from a pool
    // that earlier (bigger) layers handed back with their values in them: a smaller layer run
    // after them must still equal the unfused ops bit for bit, forward and backward.
    for round in 0..2 {
        for (ci, &case) in [CASES[5], CASES[6], CASES[0], CASES[4]].iter().enumerate() {
            let seed = 7000 + 10 * ci as u64 + round;
            let ins = inputs(seed, case)?;
            let act = Some((0.0, 6.0));
            let (yf, gf) = grads_of(&ins, seed, |t| Ok(fused(t, case.5, act)?.y))?;
            let (yu, gu) = grads_of(&ins, seed, |t| Ok(unfused(t, case.5, act)?.y))?;
            let what = format!("round {round} case {case:?}");
            assert_close(&yf, &yu, 0.0, &format!("{what}: prescaled output"));
            for (i, (a, b)) in gf.iter().zip(&gu).enumerate() {
                assert_close(a, b, 0.0, &format!("{what}: prescaled gradient {i}"));
            }
            if case.5.is_none() {
                // The float model's 1×1 conv + BN + ReLU6 shares the pool.
                let t4 = [&ins[0], &ins[1], &ins[3], &ins[4]];
                let (yf, gf) = grads_of(&t4.map(Clone::clone), seed, |t| {
                    Ok(conv1x1_bn_act_train(&t[0], &t[1], &t[2], &t[3], EPS, 0.0, 6.0)?.y)
                })?;
                let (yu, gu) = grads_of(&t4.map(Clone::clone), seed, |t| {
                    let z = conv1x1(&t[0], &t[1], None, 1)?;
                    Ok(batch_norm_act_train(&z, &t[2], &t[3], EPS, 0.0, 6.0)?.y)
                })?;
                assert_close(&yf, &yu, 0.0, &format!("{what}: float output"));
                for (i, (a, b)) in gf.iter().zip(&gu).enumerate() {
                    assert_close(a, b, 0.0, &format!("{what}: float gradient {i}"));
                }
            }
        }
    }
    Ok(())
}
