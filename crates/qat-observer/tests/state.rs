//! `state()` / `load_state()`: PyTorch's names and shapes, round trips, and refusal of
//! mismatched state.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use qat_observer::{
    HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver, Observer, ObserverConfig, PerChannelMinMaxObserver,
    PercentileObserver, QDType, QScheme,
};

type Make = fn() -> Box<dyn Observer>;
/// Expected state entries: name and shape.
type Entries = &'static [(&'static str, &'static [usize])];

fn makers() -> Vec<(Make, Entries)> {
    vec![
        (
            || Box::new(MinMaxObserver::new(ObserverConfig::default()).unwrap()),
            &[("min_val", &[]), ("max_val", &[])],
        ),
        (
            || Box::new(MovingAverageMinMaxObserver::new(ObserverConfig::default(), 0.1).unwrap()),
            &[("min_val", &[]), ("max_val", &[])],
        ),
        (
            || {
                Box::new(
                    PerChannelMinMaxObserver::new(ObserverConfig::new(
                        QDType::qint8(),
                        QScheme::PerChannelSymmetric { axis: 1 },
                    ))
                    .unwrap(),
                )
            },
            &[("min_val", &[3]), ("max_val", &[3])],
        ),
        (
            || {
                Box::new(
                    MovingAveragePerChannelMinMaxObserver::new(
                        ObserverConfig::new(
                            QDType::quint8(),
                            QScheme::PerChannelAffine { axis: 1 },
                        ),
                        0.1,
                    )
                    .unwrap(),
                )
            },
            &[("min_val", &[3]), ("max_val", &[3])],
        ),
        (
            || Box::new(HistogramObserver::new(ObserverConfig::default(), 128).unwrap()),
            &[("histogram", &[128]), ("min_val", &[]), ("max_val", &[])],
        ),
        (
            || {
                Box::new(
                    PercentileObserver::with_bins(ObserverConfig::default(), 1.0, 99.0, 128)
                        .unwrap(),
                )
            },
            &[("histogram", &[128]), ("min_val", &[]), ("max_val", &[])],
        ),
    ]
}

fn batch(seed: u32) -> Tensor {
    let v: Vec<f32> = (0..24)
        .map(|i| ((i * 7 + seed * 13) as f32 * 0.61).sin() * (1.0 + seed as f32))
        .collect();
    Tensor::from_vec(v, (2, 3, 4), &Device::Cpu).unwrap()
}

fn values(s: &HashMap<String, Tensor>, k: &str) -> Vec<f32> {
    s[k].flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn state_uses_pytorch_names_and_shapes_and_round_trips() {
    for (make, names) in makers() {
        let mut a = make();
        for s in 0..3 {
            a.observe(&batch(s)).unwrap();
        }
        let st = a.state().unwrap();
        assert_eq!(st.len(), names.len(), "{}", a.name());
        for (n, shape) in names.iter() {
            assert_eq!(st[*n].dims(), *shape, "{}: {n}", a.name());
        }
        let mut b = make();
        b.load_state(&st).unwrap();
        assert_eq!(b.qparams().unwrap(), a.qparams().unwrap(), "{}", a.name());
        // Both continue identically after the round trip.
        a.observe(&batch(7)).unwrap();
        b.observe(&batch(7)).unwrap();
        let (sa, sb) = (a.state().unwrap(), b.state().unwrap());
        for (n, _) in names.iter() {
            assert_eq!(values(&sa, n), values(&sb, n), "{}: {n}", a.name());
        }
        assert_eq!(b.qparams().unwrap(), a.qparams().unwrap(), "{}", a.name());
        // The fresh state loads too, and equals a reset.
        let fresh = make().state().unwrap();
        b.load_state(&fresh).unwrap();
        a.reset();
        assert_eq!(b.qparams().unwrap(), a.qparams().unwrap(), "{}", a.name());
    }
}

#[test]
fn mismatched_state_is_refused_and_leaves_the_observer_alone() {
    for (make, names) in makers() {
        let mut a = make();
        a.observe(&batch(1)).unwrap();
        let good = a.state().unwrap();
        let q = a.qparams().unwrap();
        let mut bad_states: Vec<(String, HashMap<String, Tensor>)> = Vec::new();
        for (n, _) in names.iter() {
            let mut s = good.clone();
            s.remove(*n);
            bad_states.push((format!("missing {n}"), s));
            let mut s = good.clone();
            s.insert(
                n.to_string(),
                Tensor::zeros((5, 2), candle_core::DType::F32, &Device::Cpu).unwrap(),
            );
            bad_states.push((format!("wrong shape {n}"), s));
            let mut s = good.clone();
            let t = s[*n].to_dtype(candle_core::DType::U8).unwrap();
            s.insert(n.to_string(), t);
            bad_states.push((format!("integer {n}"), s));
        }
        let mut s = good.clone();
        s.insert("scale".into(), Tensor::new(1.0f32, &Device::Cpu).unwrap());
        bad_states.push(("extra entry".into(), s));
        let mut s = good.clone();
        let (lo, hi) = (s["min_val"].clone(), s["max_val"].clone());
        s.insert("min_val".into(), hi);
        s.insert("max_val".into(), lo.affine(1.0, -1.0).unwrap());
        bad_states.push(("min > max".into(), s));
        let mut s = good.clone();
        let nan = s["min_val"].affine(0.0, f64::NAN).unwrap();
        s.insert("min_val".into(), nan);
        bad_states.push(("NaN min".into(), s));
        if names.iter().any(|(n, _)| *n == "histogram") {
            let mut s = good.clone();
            let neg = s["histogram"].affine(-1.0, 0.0).unwrap();
            s.insert("histogram".into(), neg);
            bad_states.push(("negative counts".into(), s));
            let mut s = good.clone();
            s.insert(
                "histogram".into(),
                Tensor::zeros(64, candle_core::DType::F32, &Device::Cpu).unwrap(),
            );
            bad_states.push(("other bin count".into(), s));
        }
        if names
            .iter()
            .any(|(_, shape)| shape.len() == 1 && shape[0] == 3)
        {
            let mut s = good.clone();
            s.insert(
                "max_val".into(),
                Tensor::new(&[1.0f32, 2.0], &Device::Cpu).unwrap(),
            );
            bad_states.push(("channel counts differ".into(), s));
        }
        for (what, s) in bad_states {
            let err = a.load_state(&s);
            assert!(err.is_err(), "{}: accepted {what}", a.name());
            assert_eq!(
                a.qparams().unwrap(),
                q,
                "{}: {what} changed the state",
                a.name()
            );
        }
    }
}
