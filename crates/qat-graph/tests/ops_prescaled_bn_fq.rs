//! The live QAT Conv+BN(+act) ops with the activation fake-quant inside
//! (`*_act_fq_train_prescaled`: the observer steps with the output's range, the output is
//! fake-quantized in place, the backward applies the straight-through mask): over several
//! steps, with the observer or fake quantization switched off in some, bit-identical to the
//! op without it followed by the `FusedMovingAvgObsFakeQuantize` module (values, batch
//! statistics, every gradient, the module's range and qparams), close to the candle
//! composition (`*_slow`), the rayon path, and errors that leave the module's state alone.
//!
//! No finite differences here: through the rounding the straight-through gradient is not
//! the derivative. The op without fake quantization has them (`ops_conv_prescaled_bn`,
//! `ops_prescaled_bn_act`); this one must add exactly the module's mask to its gradient.

mod ops_util;

use candle_core::{Device, Result, Tensor};
use ops_util::{assert_close, grads_of, randn, to_vec};
use qat_fakequant::FusedMovingAvgObsFakeQuantize;
use qat_graph::ops::{
    batch_norm_act_fq_train_prescaled, batch_norm_act_fq_train_prescaled_slow,
    batch_norm_act_train_prescaled, batch_norm_train_prescaled, conv1x1_bn_act_fq_train_prescaled,
    conv1x1_bn_act_train_prescaled, conv_bn_act_fq_train_prescaled_slow,
    depthwise_bn_act_fq_train_prescaled, depthwise_bn_act_train_prescaled, BatchNormTrainOutput,
};
use qat_observer::ObserverConfig;

const EPS: f64 = 1e-5;

/// No activation, ReLU6, ReLU, an asymmetric clamp.
const ACTS: [Option<(f32, f32)>; 4] = [
    None,
    Some((0.0, 6.0)),
    Some((0.0, f32::INFINITY)),
    Some((-0.5, 1.25)),
];

/// The producer: the BatchNorm alone, or a 1×1 (`None`) / depthwise `(k, stride, padding,
/// dilation)` convolution before it.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Bn,
    Conv(Option<(usize, usize, usize, usize)>),
}

/// (n, c_in, c_out, h, w, kind); the last two take the rayon paths.
const CASES: [(usize, usize, usize, usize, usize, Kind); 6] = [
    (2, 3, 3, 5, 7, Kind::Bn),
    (1, 3, 4, 5, 7, Kind::Conv(None)),
    (2, 3, 3, 7, 6, Kind::Conv(Some((3, 1, 1, 1)))),
    (3, 4, 4, 9, 11, Kind::Conv(Some((3, 2, 1, 1)))),
    (8, 16, 24, 14, 14, Kind::Conv(None)),
    (8, 24, 24, 14, 14, Kind::Conv(Some((3, 2, 1, 1)))),
];

/// `[x, w, divisor, γ, β, shift]` (the BatchNorm alone: no `w`).
fn inputs(
    seed: u64,
    (n, c, o, h, w, kind): (usize, usize, usize, usize, usize, Kind),
) -> Vec<Tensor> {
    let r = randn(seed + 2, &[o]).unwrap();
    let divisor = (r.sign().unwrap() * (r.abs().unwrap() + 0.3).unwrap()).unwrap();
    let mut v = vec![randn(seed, &[n, c, h, w]).unwrap()];
    match kind {
        Kind::Bn => {}
        Kind::Conv(None) => v.push(randn(seed + 1, &[o, c, 1, 1]).unwrap()),
        Kind::Conv(Some((k, ..))) => v.push(randn(seed + 1, &[c, 1, k, k]).unwrap()),
    }
    v.push(divisor.contiguous().unwrap());
    v.push((randn(seed + 3, &[o]).unwrap() + 3.0).unwrap());
    v.push((randn(seed + 4, &[o]).unwrap() + 2.0).unwrap());
    v.push(randn(seed + 5, &[o]).unwrap());
    v
}

/// `(x, w, divisor, γ, β, shift)` out of [`inputs`]' list.
fn parts(t: &[Tensor], kind: Kind) -> (&Tensor, Option<&Tensor>, &[Tensor]) {
    match kind {
        Kind::Bn => (&t[0], None, &t[1..]),
        Kind::Conv(_) => (&t[0], Some(&t[1]), &t[2..]),
    }
}

fn fused(
    t: &[Tensor],
    kind: Kind,
    act: Option<(f32, f32)>,
    fq: &FusedMovingAvgObsFakeQuantize,
) -> Result<BatchNormTrainOutput> {
    let feed = fq.range_feed().expect("per-tensor module");
    let (x, w, p) = parts(t, kind);
    let (s, g, b, sh) = (&p[0], &p[1], &p[2], Some(&p[3]));
    match (kind, w) {
        (Kind::Conv(None), Some(w)) => {
            conv1x1_bn_act_fq_train_prescaled(x, w, s, sh, g, b, EPS, act, &feed)
        }
        (Kind::Conv(Some((_, st, pd, d))), Some(w)) => {
            depthwise_bn_act_fq_train_prescaled(x, w, s, sh, g, b, EPS, (st, pd, d), act, &feed)
        }
        _ => batch_norm_act_fq_train_prescaled(x, s, sh, g, b, EPS, act, &feed),
    }
}

/// The fast op without fake quantization, then the module's own `forward`.
fn unfused(
    t: &[Tensor],
    kind: Kind,
    act: Option<(f32, f32)>,
    fq: &FusedMovingAvgObsFakeQuantize,
) -> Result<BatchNormTrainOutput> {
    let (x, w, p) = parts(t, kind);
    let (s, g, b, sh) = (&p[0], &p[1], &p[2], Some(&p[3]));
    let o = match (kind, w) {
        (Kind::Conv(None), Some(w)) => conv1x1_bn_act_train_prescaled(x, w, s, sh, g, b, EPS, act)?,
        (Kind::Conv(Some((_, st, pd, d))), Some(w)) => {
            depthwise_bn_act_train_prescaled(x, w, s, sh, g, b, EPS, (st, pd, d), act)?
        }
        _ => match act {
            None => batch_norm_train_prescaled(x, s, sh, g, b, EPS)?,
            Some((lo, hi)) => batch_norm_act_train_prescaled(x, s, sh, g, b, EPS, lo, hi)?,
        },
    };
    Ok(BatchNormTrainOutput {
        y: fq.forward(&o.y)?,
        ..o
    })
}

fn slow(
    t: &[Tensor],
    kind: Kind,
    act: Option<(f32, f32)>,
    fq: &FusedMovingAvgObsFakeQuantize,
) -> Result<BatchNormTrainOutput> {
    let (x, w, p) = parts(t, kind);
    let (s, g, b, sh) = (&p[0], &p[1], &p[2], Some(&p[3]));
    match (kind, w) {
        (Kind::Conv(k), Some(w)) => {
            let geom = k.map(|(_, st, pd, d)| (st, pd, d));
            conv_bn_act_fq_train_prescaled_slow(x, w, geom, s, sh, g, b, EPS, act, fq)
        }
        _ => batch_norm_act_fq_train_prescaled_slow(x, s, sh, g, b, EPS, act, fq),
    }
}

fn module() -> FusedMovingAvgObsFakeQuantize {
    // A large averaging constant so that every step moves the range visibly.
    FusedMovingAvgObsFakeQuantize::new(ObserverConfig::default(), 0.3).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    to_vec(t).iter().map(|v| v.to_bits()).collect()
}

fn state(fq: &FusedMovingAvgObsFakeQuantize) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<i32>) {
    let (min, max) = fq.min_max().unwrap();
    let q = fq.qparams().unwrap();
    (min, max, q.scale, q.zero_point)
}

/// Steps: both on, both on, observer off, fake quantization off, both on.
const SWITCHES: [(bool, bool); 5] = [
    (true, true),
    (true, true),
    (false, true),
    (true, false),
    (true, true),
];

#[test]
fn ops_prescaled_bn_fq_equals_op_then_module_bit_for_bit() -> Result<()> {
    for (ci, &case) in CASES.iter().enumerate() {
        for (ai, &act) in ACTS.iter().enumerate() {
            let kind = case.5;
            let (mf, mu) = (module(), module());
            for (step, &(obs, fqon)) in SWITCHES.iter().enumerate() {
                for m in [&mf, &mu] {
                    m.enable_observer(obs);
                    m.enable_fake_quant(fqon);
                }
                let seed = 1000 * ci as u64 + 100 * ai as u64 + 10 * step as u64;
                let ins = inputs(seed, case);
                let what = format!("case {case:?} act {act:?} step {step}");
                let (yf, gf) = grads_of(&ins, seed + 7, |t| Ok(fused(t, kind, act, &mf)?.y))?;
                let (yu, gu) = grads_of(&ins, seed + 7, |t| Ok(unfused(t, kind, act, &mu)?.y))?;
                assert_eq!(bits(&yf), bits(&yu), "{what}: output");
                assert_eq!(state(&mf), state(&mu), "{what}: module state");
                for i in 0..ins.len() {
                    // Bit for bit up to the sign of zero (`assert_close` with 0 tolerance).
                    assert_close(&gf[i], &gu[i], 0.0, &format!("{what}: grad {i}"));
                }
                if fqon {
                    // Fake quantization did something: the output sits on the grid.
                    let (scale, zp) = {
                        let q = mf.qparams()?;
                        (q.scale[0], q.zero_point[0] as f32)
                    };
                    for v in to_vec(&yf) {
                        let q = v / scale + zp;
                        assert!((q - q.round()).abs() < 1e-3, "{what}: {v} off the grid");
                    }
                }
            }
            // Each call also steps the module (the backward does not): both saw 2 calls a step.
            let (a, b) = (module(), module());
            let ins = inputs(7, case);
            let (of, ou) = (fused(&ins, kind, act, &a)?, unfused(&ins, kind, act, &b)?);
            assert_eq!(bits(&of.mean), bits(&ou.mean), "case {case:?}: mean");
            assert_eq!(bits(&of.var), bits(&ou.var), "case {case:?}: var");
            assert_eq!(bits(&of.var_unbiased), bits(&ou.var_unbiased));
        }
    }
    Ok(())
}

/// Against candle's ops and the module: the values before fake quantization round
/// differently, so an element may land one quantization step away where it sat near a
/// rounding boundary; the qparams and the gradients agree closely.
#[test]
fn ops_prescaled_bn_fq_matches_candle_composition() -> Result<()> {
    for (ci, &case) in CASES.iter().enumerate() {
        for &act in &ACTS[..2] {
            let kind = case.5;
            let (mf, ms) = (module(), module());
            let seed = 77 + ci as u64;
            let ins = inputs(seed, case);
            let what = format!("case {case:?} act {act:?}");
            let (yf, gf) = grads_of(&ins, seed + 7, |t| Ok(fused(t, kind, act, &mf)?.y))?;
            let (ys, gs) = grads_of(&ins, seed + 7, |t| Ok(slow(t, kind, act, &ms)?.y))?;
            let (sf, ss) = (state(&mf), state(&ms));
            assert_eq!(sf.3, ss.3, "{what}: zero point");
            assert!((sf.2[0] - ss.2[0]).abs() <= 1e-5 * ss.2[0], "{what}: scale");
            let step = sf.2[0];
            let (vf, vs) = (to_vec(&yf), to_vec(&ys));
            // The scales may differ in their last bits (ranges from differently rounded
            // values): a whole step apart is what counts.
            let off = vf
                .iter()
                .zip(&vs)
                .filter(|(a, b)| (*a - *b).abs() > step / 2.0)
                .count();
            assert!(
                off * 100 <= vf.len(),
                "{what}: {off} of {} differ",
                vf.len()
            );
            for (a, b) in vf.iter().zip(&vs) {
                assert!((a - b).abs() <= step * 1.001, "{what}: {a} vs {b}");
            }
            // γ, β: sums over every element, barely moved by a few changed masks.
            let n = ins.len();
            for i in [n - 3, n - 2] {
                assert_close(&gf[i], &gs[i], 2e-2, &format!("{what}: grad {i}"));
            }
        }
    }
    Ok(())
}

#[test]
fn ops_prescaled_bn_fq_non_finite_output_is_an_error_and_keeps_the_state() -> Result<()> {
    for kind in [Kind::Bn, Kind::Conv(None)] {
        let case = (2, 3, 3, 4, 4, kind);
        let fq = module();
        let ins = inputs(3, case);
        fused(&ins, kind, None, &fq)?;
        let before = state(&fq);
        // One NaN input makes that channel's statistics, and so all its outputs, NaN.
        let mut x = to_vec(&ins[0]);
        x[5] = f32::NAN;
        let mut bad = ins.clone();
        bad[0] = Tensor::from_vec(x, ins[0].dims(), &Device::Cpu)?;
        let e = fused(&bad, kind, Some((0.0, 6.0)), &fq)
            .unwrap_err()
            .to_string();
        assert!(e.contains("non-finite values"), "{kind:?}: {e}");
        // The module's own forward counts the same values.
        let u = unfused(&bad, kind, Some((0.0, 6.0)), &module()).unwrap_err();
        let count = |s: &str| {
            s.split("has ")
                .nth(1)
                .and_then(|r| r.lines().next())
                .map(String::from)
        };
        assert_eq!(count(&e), count(&u.to_string()), "{kind:?}");
        assert_eq!(state(&fq), before, "{kind:?}: state changed");
        // Observer off: nothing is observed, the op fake-quantizes as the module would.
        fq.enable_observer(false);
        let m2 = module();
        fused(&ins, kind, None, &m2)?;
        m2.enable_observer(false);
        fq.enable_observer(false);
        let yf = fused(&bad, kind, Some((0.0, 6.0)), &fq)?.y;
        let yu = unfused(&bad, kind, Some((0.0, 6.0)), &m2)?.y;
        assert_eq!(bits(&yf), bits(&yu), "{kind:?}: observer off");
    }
    Ok(())
}

#[test]
fn ops_prescaled_bn_fq_bad_inputs_are_errors() -> Result<()> {
    let case = (2, 3, 4, 4, 4, Kind::Conv(None));
    let t = inputs(1, case);
    let fq = module();
    let feed = fq.range_feed().unwrap();
    let (x, w, s, g, b) = (&t[0], &t[1], &t[2], &t[3], &t[4]);
    let three = Tensor::ones(3, candle_core::DType::F32, &Device::Cpu)?;
    let e = conv1x1_bn_act_fq_train_prescaled(x, w, &three, None, g, b, EPS, None, &feed);
    assert!(e.unwrap_err().to_string().contains("divisor and shift"));
    let e = conv1x1_bn_act_fq_train_prescaled(x, w, s, None, g, b, EPS, Some((6.0, 0.0)), &feed);
    assert!(e.unwrap_err().to_string().contains("min <= max"));
    let e = batch_norm_act_fq_train_prescaled(x, s, None, g, b, EPS, None, &feed);
    assert!(
        e.unwrap_err().to_string().contains("shape"),
        "BN with 4 divisors on 3 channels"
    );
    let one_pixel = x.narrow(0, 0, 1)?.narrow(2, 0, 1)?.narrow(3, 0, 1)?;
    let e = conv1x1_bn_act_fq_train_prescaled(&one_pixel, w, s, None, g, b, EPS, None, &feed);
    assert!(e
        .unwrap_err()
        .to_string()
        .contains("more than 1 value per channel"));
    // Nothing was observed by the refused calls.
    assert_eq!(
        fq.min_max()?,
        (vec![f32::INFINITY], vec![f32::NEG_INFINITY])
    );
    Ok(())
}
