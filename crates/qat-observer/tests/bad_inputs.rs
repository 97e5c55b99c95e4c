//! Bad inputs get a clear `Err` and leave the observer's state untouched.

use candle_core::{DType, Device, Tensor};
use qat_observer::{
    HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver, Observer, ObserverConfig, ObserverError,
    PerChannelMinMaxObserver, PercentileObserver, QDType, QScheme,
};

fn per_tensor() -> ObserverConfig {
    ObserverConfig::default()
}

fn per_channel(axis: usize) -> ObserverConfig {
    ObserverConfig::new(QDType::qint8(), QScheme::PerChannelSymmetric { axis })
}

/// One of each observer, all already fed one good batch of shape [2, 3, 4].
fn all_observers() -> Vec<Box<dyn Observer>> {
    let mut v: Vec<Box<dyn Observer>> = vec![
        Box::new(MinMaxObserver::new(per_tensor()).unwrap()),
        Box::new(MovingAverageMinMaxObserver::new(per_tensor(), 0.01).unwrap()),
        Box::new(PerChannelMinMaxObserver::new(per_channel(1)).unwrap()),
        Box::new(MovingAveragePerChannelMinMaxObserver::new(per_channel(1), 0.1).unwrap()),
        Box::new(HistogramObserver::new(per_tensor(), 64).unwrap()),
        Box::new(PercentileObserver::with_defaults(per_tensor()).unwrap()),
    ];
    for o in &mut v {
        o.observe(&good()).unwrap();
    }
    v
}

fn good() -> Tensor {
    let v: Vec<f32> = (0..24).map(|i| (i as f32 * 0.7).sin() * 3.0).collect();
    Tensor::from_vec(v, (2, 3, 4), &Device::Cpu).unwrap()
}

fn with_values(vals: &[(usize, f32)]) -> Tensor {
    let mut v: Vec<f32> = (0..24).map(|i| i as f32 - 12.0).collect();
    for &(i, x) in vals {
        v[i] = x;
    }
    Tensor::from_vec(v, (2, 3, 4), &Device::Cpu).unwrap()
}

fn snapshot(o: &dyn Observer) -> Vec<(String, Vec<f32>)> {
    let mut s: Vec<(String, Vec<f32>)> = o
        .state()
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    s.sort_by(|a, b| a.0.cmp(&b.0));
    s
}

/// `observe(x)` must fail with an error matching `check`, leaving state and qparams as they were.
fn refused(x: &Tensor, check: impl Fn(&str, &ObserverError) -> bool) {
    for mut o in all_observers() {
        let before = snapshot(o.as_ref());
        let q_before = o.qparams().unwrap();
        let err = o
            .observe(x)
            .expect_err(&format!("{} accepted a bad tensor", o.name()));
        assert!(
            check(o.name(), &err),
            "{}: unexpected error {err}",
            o.name()
        );
        assert_eq!(snapshot(o.as_ref()), before, "{}: state changed", o.name());
        assert_eq!(
            o.qparams().unwrap(),
            q_before,
            "{}: qparams changed",
            o.name()
        );
    }
}

#[test]
fn nan_is_refused_with_the_count_and_the_observer_name() {
    let x = with_values(&[(0, f32::NAN), (5, f32::NAN), (23, f32::NAN)]);
    refused(&x, |name, e| {
        let msg = e.to_string();
        matches!(e, ObserverError::NonFinite { count: 3, .. })
            && msg.contains(name)
            && msg.contains("3 non-finite")
    });
}

#[test]
fn inf_is_refused() {
    let x = with_values(&[(7, f32::INFINITY), (8, f32::NEG_INFINITY)]);
    refused(&x, |_, e| {
        matches!(e, ObserverError::NonFinite { count: 2, .. })
    });
}

#[test]
fn empty_tensors_are_refused() {
    let x = Tensor::zeros((2, 3, 0), DType::F32, &Device::Cpu).unwrap();
    refused(&x, |_, e| matches!(e, ObserverError::Empty { .. }));
}

#[test]
fn integer_tensors_are_refused() {
    for dt in [DType::U8, DType::U32, DType::I64] {
        let x = Tensor::zeros((2, 3, 4), dt, &Device::Cpu).unwrap();
        refused(&x, |_, e| e.to_string().contains("integer"));
    }
}

#[test]
fn axis_out_of_range_is_refused() {
    let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    for mut o in [
        Box::new(PerChannelMinMaxObserver::new(per_channel(2)).unwrap()) as Box<dyn Observer>,
        Box::new(MovingAveragePerChannelMinMaxObserver::new(per_channel(5), 0.01).unwrap()),
    ] {
        let e = o.observe(&x).unwrap_err();
        assert!(matches!(e, ObserverError::BadAxis { rank: 2, .. }), "{e}");
        assert!(o.state().unwrap()["min_val"].elem_count() == 0);
    }
}

#[test]
fn channel_count_change_is_refused() {
    // Channel axis 1 has 3 channels in `good()`; this tensor has 5.
    let x = Tensor::zeros((2, 5, 4), DType::F32, &Device::Cpu).unwrap();
    for mut o in all_observers() {
        if !o.scheme().is_per_channel() {
            continue;
        }
        let before = snapshot(o.as_ref());
        let e = o.observe(&x).unwrap_err();
        assert!(e.to_string().contains("channel count changed"), "{e}");
        assert_eq!(snapshot(o.as_ref()), before);
    }
}

#[test]
fn bad_configs_are_refused() {
    let pc = per_channel(0);
    assert!(MinMaxObserver::new(pc).is_err());
    assert!(HistogramObserver::new(pc, 2048).is_err());
    assert!(PercentileObserver::with_defaults(pc).is_err());
    assert!(PerChannelMinMaxObserver::new(per_tensor()).is_err());
    assert!(MinMaxObserver::new(per_tensor().with_eps(0.0)).is_err());
    assert!(MinMaxObserver::new(per_tensor().with_eps(f32::NAN)).is_err());
    for c in [0.0, -0.1, 1.5, f32::NAN] {
        assert!(
            MovingAverageMinMaxObserver::new(per_tensor(), c).is_err(),
            "{c}"
        );
        assert!(
            MovingAveragePerChannelMinMaxObserver::new(pc, c).is_err(),
            "{c}"
        );
    }
    assert!(HistogramObserver::new(per_tensor(), 1).is_err());
    assert!(HistogramObserver::new(per_tensor(), 64)
        .unwrap()
        .with_upsample_rate(0)
        .is_err());
    for (lo, hi) in [(-1.0, 99.0), (50.0, 50.0), (60.0, 40.0), (0.0, 100.5)] {
        assert!(
            PercentileObserver::new(per_tensor(), lo, hi).is_err(),
            "{lo} {hi}"
        );
    }
}

#[test]
fn unobserved_observers_give_pytorch_defaults() {
    let fresh: Vec<Box<dyn Observer>> = vec![
        Box::new(MinMaxObserver::new(per_tensor()).unwrap()),
        Box::new(PerChannelMinMaxObserver::new(per_channel(0)).unwrap()),
        Box::new(HistogramObserver::new(per_tensor(), 64).unwrap()),
        Box::new(PercentileObserver::with_defaults(per_tensor()).unwrap()),
    ];
    for o in fresh {
        let q = o.qparams().unwrap();
        assert_eq!(
            (q.scale, q.zero_point),
            (vec![1.0], vec![0]),
            "{}",
            o.name()
        );
    }
}
