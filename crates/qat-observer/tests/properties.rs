//! Property tests against independent references.

use candle_core::{Device, Tensor};
use proptest::prelude::*;
use qat_core::{choose_qparams, DEFAULT_EPS};
use qat_observer::{
    MinMaxObserver, MovingAverageMinMaxObserver, Observer, ObserverConfig,
    PerChannelMinMaxObserver, PercentileObserver, QDType, QScheme,
};

fn t(v: &[f32]) -> Tensor {
    Tensor::from_slice(v, v.len(), &Device::Cpu).unwrap()
}

fn batches() -> impl Strategy<Value = Vec<Vec<f32>>> {
    prop::collection::vec(prop::collection::vec(-1e4f32..1e4, 1..300), 1..6)
}

proptest! {
    /// MinMax over split batches equals MinMax over their concatenation, and its qparams are
    /// `choose_qparams` of the f64-checked extremes.
    #[test]
    fn minmax_over_batches_equals_minmax_over_concatenation(bs in batches(), sym in any::<bool>()) {
        let scheme = if sym { QScheme::PerTensorSymmetric } else { QScheme::PerTensorAffine };
        let cfg = ObserverConfig::new(QDType::qint8(), scheme);
        let mut split = MinMaxObserver::new(cfg).unwrap();
        for b in &bs {
            split.observe(&t(b)).unwrap();
        }
        let all: Vec<f32> = bs.concat();
        let mut whole = MinMaxObserver::new(cfg).unwrap();
        whole.observe(&t(&all)).unwrap();
        prop_assert_eq!(split.qparams().unwrap(), whole.qparams().unwrap());
        let lo = all.iter().map(|&v| v as f64).fold(f64::INFINITY, f64::min) as f32;
        let hi = all.iter().map(|&v| v as f64).fold(f64::NEG_INFINITY, f64::max) as f32;
        prop_assert_eq!((split.min_val(), split.max_val()), (lo, hi));
        let q = choose_qparams(lo, hi, QDType::qint8(), sym, DEFAULT_EPS).unwrap();
        prop_assert_eq!(split.qparams().unwrap().get(0), q);
    }

    /// The moving average follows its recurrence, computed independently in f64 (within f32
    /// rounding of each step).
    #[test]
    fn moving_average_follows_the_recurrence(bs in batches(), c in 0.001f32..1.0) {
        let mut o = MovingAverageMinMaxObserver::new(ObserverConfig::default(), c).unwrap();
        let (mut lo, mut hi) = (f64::NAN, f64::NAN);
        for (i, b) in bs.iter().enumerate() {
            o.observe(&t(b)).unwrap();
            let bl = b.iter().cloned().fold(f32::INFINITY, f32::min) as f64;
            let bh = b.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            if i == 0 {
                (lo, hi) = (bl, bh);
            } else {
                lo += c as f64 * (bl - lo);
                hi += c as f64 * (bh - hi);
            }
            prop_assert!((o.min_val() as f64 - lo).abs() <= 1e-5 * (1.0 + lo.abs()) * (i + 1) as f64);
            prop_assert!((o.max_val() as f64 - hi).abs() <= 1e-5 * (1.0 + hi.abs()) * (i + 1) as f64);
        }
    }

    /// Per-channel MinMax over split batches equals per-channel MinMax over the concatenation
    /// along a non-channel axis.
    #[test]
    fn per_channel_over_batches_equals_over_concatenation(
        rows in prop::collection::vec(prop::collection::vec(-100f32..100.0, 4), 2..40),
        cut in 1usize..39,
    ) {
        let cut = cut.min(rows.len() - 1);
        let cfg = ObserverConfig::new(QDType::quint8(), QScheme::PerChannelAffine { axis: 1 });
        let mk = |r: &[Vec<f32>]| Tensor::from_vec(r.concat(), (r.len(), 4), &Device::Cpu).unwrap();
        let mut split = PerChannelMinMaxObserver::new(cfg).unwrap();
        split.observe(&mk(&rows[..cut])).unwrap();
        split.observe(&mk(&rows[cut..])).unwrap();
        let mut whole = PerChannelMinMaxObserver::new(cfg).unwrap();
        whole.observe(&mk(&rows)).unwrap();
        prop_assert_eq!(split.qparams().unwrap(), whole.qparams().unwrap());
        for c in 0..4 {
            let lo = rows.iter().map(|r| r[c]).fold(f32::INFINITY, f32::min);
            prop_assert_eq!(split.min_val()[c], lo);
        }
    }

    /// The percentile range lies inside the observed range, and the fraction of values it
    /// clips on each side is the requested one up to one bin's worth of values.
    #[test]
    fn percentile_clips_the_requested_fraction(
        v in prop::collection::vec(-50f32..50.0, 200..2000),
        lower in 0.0f64..20.0,
        upper in 80.0f64..100.0,
    ) {
        let mut o = PercentileObserver::with_bins(ObserverConfig::default(), lower, upper, 256).unwrap();
        o.observe(&t(&v)).unwrap();
        let (lo, hi) = o.range().unwrap();
        let (mn, mx) = (
            v.iter().cloned().fold(f32::INFINITY, f32::min),
            v.iter().cloned().fold(f32::NEG_INFINITY, f32::max),
        );
        prop_assert!(mn <= lo && lo <= hi && hi <= mx);
        let width = (mx - mn) / 256.0;
        let n = v.len() as f64;
        let below = v.iter().filter(|&&x| x < lo - width).count() as f64 / n * 100.0;
        let above = v.iter().filter(|&&x| x > hi + width).count() as f64 / n * 100.0;
        prop_assert!(below <= lower + 1e-9, "{} > {}", below, lower);
        prop_assert!(above <= 100.0 - upper + 1e-9, "{} > {}", above, 100.0 - upper);
    }
}

#[test]
fn percentile_extremes_are_min_and_max() {
    let v: Vec<f32> = (0..1000)
        .map(|i| ((i * 7919) % 1000) as f32 / 10.0 - 20.0)
        .collect();
    let mut o = PercentileObserver::new(ObserverConfig::default(), 0.0, 100.0).unwrap();
    o.observe(&t(&v)).unwrap();
    assert_eq!(o.range().unwrap(), (-20.0, 79.9));
}
