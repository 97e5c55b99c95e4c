//! `FakeQuantize`, `FusedMovingAvgObsFakeQuantize` and `LearnableFakeQuantize`: the fused
//! module equals `FakeQuantize` around the moving-average observers (outputs, gradients,
//! qparams, state names and values); switches; state round trips; errors leave state alone.

use std::collections::BTreeSet;

use candle_core::{DType, Device, Tensor, Var};
use qat_core::{QDType, QScheme};
use qat_fakequant::*;
use qat_observer::{
    MinMaxObserver, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver,
    ObserverConfig,
};

fn batch(seed: u64, dims: &[usize], shift: f32) -> Tensor {
    let n: usize = dims.iter().product();
    let mut s = seed;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0 + shift
        })
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn compare(cfg: ObserverConfig, dims: &[usize], c: f32) {
    let plain = match cfg.scheme {
        QScheme::PerTensorAffine | QScheme::PerTensorSymmetric => {
            FakeQuantize::new(Box::new(MovingAverageMinMaxObserver::new(cfg, c).unwrap()))
        }
        _ => FakeQuantize::new(Box::new(
            MovingAveragePerChannelMinMaxObserver::new(cfg, c).unwrap(),
        )),
    };
    let fused = FusedMovingAvgObsFakeQuantize::new(cfg, c).unwrap();
    for step in 0..6u64 {
        if step == 4 {
            plain.enable_observer(false);
            fused.enable_observer(false);
        }
        let x = batch(step + 11, dims, step as f32 * 0.3);
        let (xa, xb) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&x).unwrap());
        let (ya, yb) = (plain.forward(&xa).unwrap(), fused.forward(&xb).unwrap());
        assert_eq!(bits(&ya), bits(&yb), "step {step}: outputs differ");
        assert_eq!(
            plain.qparams().unwrap(),
            fused.qparams().unwrap(),
            "step {step}"
        );
        let ga = ya.sum_all().unwrap().backward().unwrap();
        let gb = yb.sum_all().unwrap().backward().unwrap();
        assert_eq!(bits(ga.get(&xa).unwrap()), bits(gb.get(&xb).unwrap()));
    }
    let (sa, sb) = (plain.state().unwrap(), fused.state().unwrap());
    let names = |s: &State| s.keys().cloned().collect::<BTreeSet<String>>();
    assert_eq!(names(&sa), names(&sb));
    for k in sa.keys() {
        assert_eq!(sa[k].dims(), sb[k].dims(), "{k}");
        assert_eq!(values(&sa[k]), values(&sb[k]), "{k}");
    }
    // The fused module reads the plain one's state (and vice versa) and carries on equal.
    let fused2 = FusedMovingAvgObsFakeQuantize::new(cfg, c).unwrap();
    fused2.load_state(&sa).unwrap();
    plain.enable_observer(true);
    fused2.enable_observer(true);
    let x = batch(99, dims, -0.4);
    assert_eq!(
        bits(&plain.forward(&x).unwrap()),
        bits(&fused2.forward(&x).unwrap())
    );
}

#[test]
fn fused_equals_fake_quantize_with_moving_average_observer() {
    compare(ObserverConfig::default(), &[4, 3, 5, 7], 0.01);
    compare(
        ObserverConfig::new(QDType::qint8(), QScheme::PerTensorSymmetric),
        &[300],
        0.1,
    );
    compare(
        ObserverConfig::new(QDType::qint8(), QScheme::PerChannelSymmetric { axis: 0 }),
        &[6, 3, 3, 3],
        0.01,
    );
    compare(
        ObserverConfig::new(QDType::quint8(), QScheme::PerChannelAffine { axis: 1 }),
        &[2, 5, 4, 20],
        0.5,
    );
}

#[test]
fn switches_work_independently() {
    let fq = FakeQuantize::new(Box::new(
        MinMaxObserver::new(ObserverConfig::default()).unwrap(),
    ));
    let x = batch(1, &[100], 0.0);
    let y = fq.forward(&x).unwrap();
    let q = fq.qparams().unwrap();
    let (lo, hi) = (-2.0f32, 2.0f32); // roughly the batch range
    assert!(q.scale[0] > (hi - lo) / 255.0 * 0.9 && q.scale[0] < (hi - lo) / 255.0 * 1.1);
    // observer off, fake quant on: frozen qparams.
    fq.enable_observer(false);
    let big = (x.clone() * 100.0).unwrap();
    fq.forward(&big).unwrap();
    assert_eq!(fq.qparams().unwrap(), q);
    // fake quant off: identity, observer can still run.
    fq.enable_fake_quant(false);
    fq.enable_observer(true);
    assert_eq!(bits(&fq.forward(&big).unwrap()), bits(&big));
    assert_ne!(fq.qparams().unwrap(), q);
    assert!(!fq.fake_quant_enabled() && fq.observer_enabled());
    let st = fq.state().unwrap();
    assert_eq!(values(&st["fake_quant_enabled"]), [0.0]);
    assert_eq!(values(&st["observer_enabled"]), [1.0]);
    let _ = y;
}

#[test]
fn non_finite_batches_leave_state_untouched() {
    let cfg = ObserverConfig::default();
    let fused = FusedMovingAvgObsFakeQuantize::new(cfg, 0.01).unwrap();
    let plain = FakeQuantize::new(Box::new(
        MovingAverageMinMaxObserver::new(cfg, 0.01).unwrap(),
    ));
    let x = batch(3, &[64], 0.0);
    fused.forward(&x).unwrap();
    plain.forward(&x).unwrap();
    let (qf, qp) = (fused.qparams().unwrap(), plain.qparams().unwrap());
    let (sf, sp) = (fused.state().unwrap(), plain.state().unwrap());
    let bad = Tensor::new(&[1.0f32, f32::NAN, f32::INFINITY, 0.5], &Device::Cpu).unwrap();
    let e = fused.forward(&bad).unwrap_err().to_string();
    assert!(
        e.contains("FusedMovingAvgObsFakeQuantize") && e.contains("2 non-finite"),
        "{e}"
    );
    let e = plain.forward(&bad).unwrap_err().to_string();
    assert!(
        e.contains("MovingAverageMinMaxObserver") && e.contains("2 non-finite"),
        "{e}"
    );
    assert_eq!(fused.qparams().unwrap(), qf);
    assert_eq!(plain.qparams().unwrap(), qp);
    for (a, b) in [(&sf, fused.state().unwrap()), (&sp, plain.state().unwrap())] {
        for k in a.keys() {
            assert_eq!(values(&a[k]), values(&b[k]), "{k}");
        }
    }
    let empty = Tensor::zeros(0, DType::F32, &Device::Cpu).unwrap();
    assert!(fused
        .forward(&empty)
        .unwrap_err()
        .to_string()
        .contains("empty"));
}

#[test]
fn per_channel_without_qparams_is_an_error() {
    let cfg = ObserverConfig::new(QDType::qint8(), QScheme::PerChannelSymmetric { axis: 0 });
    let fq = FakeQuantize::new(Box::new(
        MovingAveragePerChannelMinMaxObserver::new(cfg, 0.01).unwrap(),
    ));
    fq.enable_observer(false);
    let e = fq.forward(&batch(1, &[4, 3], 0.0)).unwrap_err().to_string();
    assert!(e.contains("4 channels"), "{e}");
}

#[test]
fn bad_states_are_refused_without_change() {
    let fq = FakeQuantize::new(Box::new(
        MinMaxObserver::new(ObserverConfig::default()).unwrap(),
    ));
    fq.forward(&batch(5, &[50], 0.0)).unwrap();
    let good = fq.state().unwrap();
    let q = fq.qparams().unwrap();
    let mut bad = good.clone();
    bad.insert(
        "scale".into(),
        Tensor::new(&[-1.0f32], &Device::Cpu).unwrap(),
    );
    assert!(fq
        .load_state(&bad)
        .unwrap_err()
        .to_string()
        .contains("scale[0] -1"));
    let mut bad = good.clone();
    bad.insert(
        "zero_point".into(),
        Tensor::new(&[300i32], &Device::Cpu).unwrap(),
    );
    assert!(fq.load_state(&bad).is_err());
    let mut bad = good.clone();
    bad.remove("observer_enabled");
    assert!(fq
        .load_state(&bad)
        .unwrap_err()
        .to_string()
        .contains("observer_enabled"));
    let mut bad = good.clone();
    bad.insert("bogus".into(), Tensor::new(&[1u8], &Device::Cpu).unwrap());
    assert!(fq
        .load_state(&bad)
        .unwrap_err()
        .to_string()
        .contains("bogus"));
    assert_eq!(fq.qparams().unwrap(), q);
    // Round trip into a fresh module.
    let fresh = FakeQuantize::new(Box::new(
        MinMaxObserver::new(ObserverConfig::default()).unwrap(),
    ));
    fresh.load_state(&good).unwrap();
    assert_eq!(fresh.qparams().unwrap(), q);
    let x = batch(6, &[50], 0.1);
    assert_eq!(
        bits(&fq.forward(&x).unwrap()),
        bits(&fresh.forward(&x).unwrap())
    );
}

#[test]
fn learnable_module_estimates_then_learns() {
    let cfg = ObserverConfig::new(QDType::qint8(), QScheme::PerChannelAffine { axis: 0 });
    let obs = qat_observer::PerChannelMinMaxObserver::new(cfg).unwrap();
    let fq = LearnableFakeQuantize::new(Box::new(obs), Some(3), true).unwrap();
    let x = batch(8, &[3, 40], 0.2);
    let y0 = fq.forward(&x).unwrap();
    let (s, z) = fq.qparams().unwrap();
    // Static estimate: the observer's qparams, and the plain fake-quant output.
    let oq = {
        let mut o = qat_observer::PerChannelMinMaxObserver::new(cfg).unwrap();
        qat_observer::Observer::observe(&mut o, &x).unwrap();
        qat_observer::Observer::qparams(&o).unwrap()
    };
    assert_eq!(s, oq.scale);
    assert_eq!(
        z,
        oq.zero_point.iter().map(|&v| v as f32).collect::<Vec<_>>()
    );
    let st = Tensor::new(oq.scale.as_slice(), &Device::Cpu).unwrap();
    let zt = Tensor::new(oq.zero_point.as_slice(), &Device::Cpu).unwrap();
    let want = fake_quantize_per_channel(&x, &st, &zt, 0, -128, 127).unwrap();
    assert_eq!(bits(&y0), bits(&want));
    // No gradients reach the variables while estimating statically.
    let g = y0.sum_all().unwrap().backward().unwrap();
    assert!(g.get(fq.vars()[0].as_tensor()).is_none());
    // Learning: gradients for both variables, of the per-channel shape.
    fq.enable_param_learning();
    let y = fq.forward(&x).unwrap();
    let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    for v in fq.vars() {
        assert_eq!(g.get(v.as_tensor()).expect("a gradient").dims(), [3]);
    }
    // State round trip.
    let state = fq.state().unwrap();
    for k in [
        "scale",
        "zero_point",
        "fake_quant_enabled",
        "static_enabled",
        "learning_enabled",
        "eps",
    ] {
        assert!(state.contains_key(k), "{k}");
    }
    let obs2 = qat_observer::PerChannelMinMaxObserver::new(cfg).unwrap();
    let fq2 = LearnableFakeQuantize::new(Box::new(obs2), Some(3), true).unwrap();
    fq2.load_state(&state).unwrap();
    assert_eq!(fq2.qparams().unwrap(), fq.qparams().unwrap());
    assert_eq!(
        bits(&fq2.forward(&x).unwrap()),
        bits(&fq.forward(&x).unwrap())
    );
}
