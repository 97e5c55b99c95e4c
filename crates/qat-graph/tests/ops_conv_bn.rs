//! 1×1 or depthwise conv + train-mode BatchNorm (+ clamp) as one op: bit-identical to the two
//! fast ops it fuses, close to the candle composition (values, statistics, all four gradients),
//! finite differences against an f64 conv + BatchNorm, the rayon path, and bad inputs.

mod ops_util;

use candle_core::{DType, Device, Result, Tensor};
use ops_util::{
    assert_close, assert_stats_close, batch_norm_f64, bounds_f64, check_fd, expect_err, grads_of,
    randn, ACTS,
};
use qat_graph::ops::{
    batch_norm_act_train, batch_norm_train, conv1x1, conv1x1_bn_act_train,
    conv1x1_bn_act_train_slow, conv1x1_bn_train, depthwise_bn_act_train,
    depthwise_bn_act_train_slow, depthwise_conv2d_dilated,
};

const EPS: f64 = 1e-5;

/// `[x, w, gamma, beta]`; γ around 3 and β around 2 put outputs beyond both ReLU6 bounds.
fn inputs(seed: u64, (n, c, o, h, w): (usize, usize, usize, usize, usize)) -> Result<[Tensor; 4]> {
    Ok([
        randn(seed, &[n, c, h, w])?,
        randn(seed + 1, &[o, c, 1, 1])?,
        (randn(seed + 2, &[o])? + 3.0)?,
        (randn(seed + 3, &[o])? + 2.0)?,
    ])
}

fn fused(t: &[Tensor], act: Option<(f32, f32)>) -> Result<qat_graph::ops::BatchNormTrainOutput> {
    match act {
        None => conv1x1_bn_train(&t[0], &t[1], &t[2], &t[3], EPS),
        Some((lo, hi)) => conv1x1_bn_act_train(&t[0], &t[1], &t[2], &t[3], EPS, lo, hi),
    }
}

fn unfused(t: &[Tensor], act: Option<(f32, f32)>) -> Result<qat_graph::ops::BatchNormTrainOutput> {
    let z = conv1x1(&t[0], &t[1], None, 1)?;
    match act {
        None => batch_norm_train(&z, &t[2], &t[3], EPS),
        Some((lo, hi)) => batch_norm_act_train(&z, &t[2], &t[3], EPS, lo, hi),
    }
}

fn exactly_equal(a: &Tensor, b: &Tensor, what: &str) -> Result<()> {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let (a, b) = (
        a.flatten_all()?.to_vec1::<f32>()?,
        b.flatten_all()?.to_vec1::<f32>()?,
    );
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            x.to_bits() == y.to_bits(),
            "{what}: element {i}: {x} vs {y}"
        );
    }
    Ok(())
}

/// An output and its four input gradients: bit for bit those of the unfused ops, within
/// 1e-5 (output) / 1e-4 (gradients) of the candle composition.
fn unfused_and_candle(
    what: &str,
    (yf, gf): (&Tensor, &[Tensor]),
    (yu, gu): (&Tensor, &[Tensor]),
    (ys, gs): (&Tensor, &[Tensor]),
) -> Result<()> {
    exactly_equal(yf, yu, &format!("{what}: output vs unfused"))?;
    assert_close(yf, ys, 1e-5, &format!("{what}: output vs candle"));
    for i in 0..4 {
        exactly_equal(&gf[i], &gu[i], &format!("{what}: gradient {i} vs unfused"))?;
        assert_close(
            &gf[i],
            &gs[i],
            1e-4,
            &format!("{what}: gradient {i} vs candle"),
        );
    }
    Ok(())
}

#[test]
fn ops_conv_bn_equals_unfused_ops_and_matches_candle() -> Result<()> {
    // The last shape has > 32768 outputs: every kernel takes its rayon path.
    let shapes = [
        (1, 3, 4, 5, 7),
        (3, 5, 2, 4, 4),
        (2, 4, 6, 1, 3),
        (8, 16, 24, 14, 14),
    ];
    for (ci, &dims) in shapes.iter().enumerate() {
        for (ai, &act) in ACTS.iter().enumerate() {
            let seed = 50 * ci as u64 + 5 * ai as u64;
            let ins = inputs(seed, dims)?;
            let what = format!("shape {dims:?} act {act:?}");
            let (yf, gf) = grads_of(&ins, seed + 4, |t| Ok(fused(t, act)?.y))?;
            let (yu, gu) = grads_of(&ins, seed + 4, |t| Ok(unfused(t, act)?.y))?;
            let (ys, gs) = grads_of(&ins, seed + 4, |t| {
                Ok(conv1x1_bn_act_train_slow(&t[0], &t[1], &t[2], &t[3], EPS, act)?.y)
            })?;
            unfused_and_candle(&what, (&yf, &gf), (&yu, &gu), (&ys, &gs))?;
            let (of, os) = (
                fused(&ins, act)?,
                conv1x1_bn_act_train_slow(&ins[0], &ins[1], &ins[2], &ins[3], EPS, act)?,
            );
            assert_stats_close(&of, &os, 1e-5, &what);
        }
    }
    Ok(())
}

#[test]
fn ops_conv_bn_gradients_match_finite_differences() -> Result<()> {
    let (n, c, o, h, w) = (2, 3, 4, 3, 2);
    for (ai, &act) in ACTS.iter().enumerate() {
        let seed = 900 + 10 * ai as u64;
        let ins = inputs(seed, (n, c, o, h, w))?;
        let (y, grads) = grads_of(&ins, seed + 4, |t| Ok(fused(t, act)?.y))?;
        let bounds = bounds_f64(act);
        check_fd(&ins, &grads, y.elem_count(), seed + 4, 1e-4, |xs| {
            let p = h * w;
            // z = W·x per image, then BatchNorm per output channel, then the clamp.
            let mut z = vec![0f64; n * o * p];
            for ni in 0..n {
                for oc in 0..o {
                    for i in 0..p {
                        z[(ni * o + oc) * p + i] = (0..c)
                            .map(|ic| xs[1][oc * c + ic] * xs[0][(ni * c + ic) * p + i])
                            .sum();
                    }
                }
            }
            batch_norm_f64(&z, (n, o, p), &xs[2], &xs[3], EPS, bounds)
        });
    }
    Ok(())
}

#[test]
fn ops_conv_bn_bad_inputs_are_errors() -> Result<()> {
    let dev = Device::Cpu;
    let [x, w, g, b] = inputs(1, (2, 3, 4, 4, 4))?;
    expect_err(
        conv1x1_bn_train(&x.flatten_from(2)?, &w, &g, &b, EPS),
        "rank 4",
    );
    expect_err(
        conv1x1_bn_train(
            &x,
            &Tensor::zeros((4, 3, 3, 3), DType::F32, &dev)?,
            &g,
            &b,
            EPS,
        ),
        "[O, C, 1, 1]",
    );
    expect_err(
        conv1x1_bn_train(
            &x,
            &Tensor::zeros((4, 5, 1, 1), DType::F32, &dev)?,
            &g,
            &b,
            EPS,
        ),
        "input channels",
    );
    expect_err(
        conv1x1_bn_train(&x, &w, &Tensor::ones(3, DType::F32, &dev)?, &b, EPS),
        "weight must have shape [4]",
    );
    expect_err(
        conv1x1_bn_train(&x, &w, &g, &Tensor::ones(5, DType::F32, &dev)?, EPS),
        "bias must have shape [4]",
    );
    expect_err(
        conv1x1_bn_train(
            &x.narrow(0, 0, 1)?.narrow(2, 0, 1)?.narrow(3, 0, 1)?,
            &w,
            &g,
            &b,
            EPS,
        ),
        "more than 1 value per channel",
    );
    expect_err(conv1x1_bn_train(&x, &w, &g, &b, -1.0), "eps");
    expect_err(
        conv1x1_bn_train(&x.to_dtype(DType::F64)?, &w, &g, &b, EPS),
        "f32",
    );
    expect_err(
        conv1x1_bn_act_train(&x, &w, &g, &b, EPS, 6.0, 0.0),
        "min <= max",
    );
    expect_err(
        conv1x1_bn_act_train(&x, &w, &g, &b, EPS, f32::NAN, 6.0),
        "min <= max",
    );
    Ok(())
}

/// (n, c, h, w, k, stride, padding, dilation).
type DwCase = (usize, usize, usize, usize, usize, usize, usize, usize);

/// The last case takes the rayon paths.
const DW_CASES: [DwCase; 4] = [
    (2, 3, 7, 6, 3, 1, 1, 1),
    (3, 4, 9, 11, 3, 2, 1, 1),
    (2, 2, 10, 10, 3, 1, 2, 2),
    (8, 24, 14, 14, 3, 2, 1, 1),
];

#[test]
fn ops_depthwise_bn_equals_unfused_ops_and_matches_candle() -> Result<()> {
    for (ci, &(n, c, h, w, k, s, p, d)) in DW_CASES.iter().enumerate() {
        for (ai, &act) in ACTS.iter().enumerate() {
            let seed = 3000 + 50 * ci as u64 + 5 * ai as u64;
            let ins = [
                randn(seed, &[n, c, h, w])?,
                randn(seed + 1, &[c, 1, k, k])?,
                (randn(seed + 2, &[c])? + 3.0)?,
                (randn(seed + 3, &[c])? + 2.0)?,
            ];
            let what = format!("case {:?} act {act:?}", DW_CASES[ci]);
            let fused = |t: &[Tensor]| {
                depthwise_bn_act_train(&t[0], &t[1], &t[2], &t[3], EPS, (s, p, d), act)
            };
            let unfused = |t: &[Tensor]| {
                let z = depthwise_conv2d_dilated(&t[0], &t[1], None, s, p, d)?;
                match act {
                    None => batch_norm_train(&z, &t[2], &t[3], EPS),
                    Some((lo, hi)) => batch_norm_act_train(&z, &t[2], &t[3], EPS, lo, hi),
                }
            };
            let slow = |t: &[Tensor]| {
                depthwise_bn_act_train_slow(&t[0], &t[1], &t[2], &t[3], EPS, (s, p, d), act)
            };
            let (yf, gf) = grads_of(&ins, seed + 4, |t| Ok(fused(t)?.y))?;
            let (yu, gu) = grads_of(&ins, seed + 4, |t| Ok(unfused(t)?.y))?;
            let (ys, gs) = grads_of(&ins, seed + 4, |t| Ok(slow(t)?.y))?;
            unfused_and_candle(&what, (&yf, &gf), (&yu, &gu), (&ys, &gs))?;
            let (of, os) = (fused(&ins)?, slow(&ins)?);
            assert_close(&of.mean, &os.mean, 1e-5, &format!("{what}: mean"));
            assert_close(&of.var, &os.var, 1e-5, &format!("{what}: var"));
        }
    }
    Ok(())
}

#[test]
fn ops_depthwise_bn_bad_inputs_are_errors() -> Result<()> {
    let dev = Device::Cpu;
    let x = randn(1, &[2, 3, 5, 5])?;
    let w = randn(2, &[3, 1, 3, 3])?;
    let (g, b) = (
        Tensor::ones(3, DType::F32, &dev)?,
        Tensor::zeros(3, DType::F32, &dev)?,
    );
    let geom = (1, 1, 1);
    expect_err(
        depthwise_bn_act_train(&x, &randn(3, &[4, 1, 3, 3])?, &g, &b, EPS, geom, None),
        "weight must be [C, 1, KH, KW]",
    );
    expect_err(
        depthwise_bn_act_train(&x, &w, &g, &b, EPS, (0, 1, 1), None),
        "stride",
    );
    expect_err(
        depthwise_bn_act_train(
            &x,
            &w,
            &Tensor::ones(4, DType::F32, &dev)?,
            &b,
            EPS,
            geom,
            None,
        ),
        "weight must have shape [3]",
    );
    expect_err(
        depthwise_bn_act_train(&x.narrow(0, 0, 1)?, &w, &g, &b, EPS, (5, 1, 1), None),
        "more than 1 value per channel",
    );
    expect_err(
        depthwise_bn_act_train(&x, &w, &g, &b, EPS, geom, Some((1.0, 0.0))),
        "min <= max",
    );
    expect_err(
        depthwise_bn_act_train(&x.to_dtype(DType::F64)?, &w, &g, &b, EPS, geom, None),
        "f32",
    );
    Ok(())
}
