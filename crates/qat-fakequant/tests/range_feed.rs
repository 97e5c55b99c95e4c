//! `RangeFeed`: an op that found its output's range itself feeds the module's observer and
//! fake-quantizes with the qparams returned; over a run of batches that equals the module's
//! own `forward` (state, qparams, outputs bit for bit) for per-tensor configs, with the
//! switches in every position; errors leave the state alone.

use candle_core::{Device, Tensor};
use qat_core::{QDType, QScheme};
use qat_fakequant::{fake_quantize_per_tensor, FusedMovingAvgObsFakeQuantize};
use qat_observer::ObserverConfig;
use qat_testutil::lcg_values;

fn batch(seed: u64, n: usize, shift: f32) -> Vec<f32> {
    lcg_values(n, seed, 4.0)
        .into_iter()
        .map(|v| v + shift)
        .collect()
}

fn bits(t: &Tensor) -> Vec<u32> {
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v.iter().map(|v| v.to_bits()).collect()
}

/// What an op does with the feed: its range, the observer step, then fake quantization with
/// the returned qparams (none: the values as they are).
fn through_feed(fq: &FusedMovingAvgObsFakeQuantize, x: &[f32]) -> candle_core::Result<Tensor> {
    let feed = fq.range_feed().expect("per-tensor");
    let min = x.iter().fold(f32::INFINITY, |m, &v| m.min(v));
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let bad = x.iter().filter(|v| !v.is_finite()).count();
    let t = Tensor::from_slice(x, x.len(), &Device::Cpu)?;
    let (lo, hi) = feed.quant_range();
    match feed.observe(min, max, bad)? {
        Some((scale, zp)) => fake_quantize_per_tensor(&t, scale, zp, lo, hi),
        None => Ok(t),
    }
}

fn configs() -> Vec<ObserverConfig> {
    vec![
        ObserverConfig::default(),
        ObserverConfig::new(QDType::qint8(), QScheme::PerTensorSymmetric),
        ObserverConfig::new(QDType::quint8().reduce_range(), QScheme::PerTensorAffine),
        ObserverConfig::new(QDType::unsigned(4).unwrap(), QScheme::PerTensorAffine).with_eps(1e-3),
    ]
}

#[test]
fn feed_equals_forward_over_batches_and_switches() {
    for cfg in configs() {
        let (a, b) = (
            FusedMovingAvgObsFakeQuantize::new(cfg, 0.05).unwrap(),
            FusedMovingAvgObsFakeQuantize::new(cfg, 0.05).unwrap(),
        );
        for step in 0..8u64 {
            // Step 3 runs with the observer off, step 5 with fake quantization off.
            for m in [&a, &b] {
                m.enable_observer(step != 3);
                m.enable_fake_quant(step != 5);
            }
            let x = batch(step, 301, step as f32 * 0.7 - 1.0);
            let want = a
                .forward(&Tensor::from_slice(&x, x.len(), &Device::Cpu).unwrap())
                .unwrap();
            let got = through_feed(&b, &x).unwrap();
            assert_eq!(bits(&got), bits(&want), "{cfg:?} step {step}: values");
            assert_eq!(b.min_max().unwrap(), a.min_max().unwrap(), "step {step}");
            let (qa, qb) = (a.qparams().unwrap(), b.qparams().unwrap());
            assert_eq!((qb.scale, qb.zero_point), (qa.scale, qa.zero_point));
        }
    }
}

#[test]
fn feed_refuses_what_forward_refuses_and_keeps_the_state() {
    let fq = FusedMovingAvgObsFakeQuantize::new(ObserverConfig::default(), 0.01).unwrap();
    let feed = fq.range_feed().unwrap();
    feed.observe(-1.0, 2.0, 0).unwrap();
    let before = fq.min_max().unwrap();
    let e = feed.observe(-1.0, 5.0, 3).unwrap_err().to_string();
    assert!(e.contains("3 non-finite values"), "{e}");
    let e = feed.observe(1.0, -1.0, 0).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    assert!(feed.observe(f32::NAN, 1.0, 0).is_err());
    assert_eq!(fq.min_max().unwrap(), before);
    // The module's own forward refuses the same batch with the same words.
    let x = Tensor::new(
        &[1.0f32, f32::NAN, f32::INFINITY, 2.0, f32::NAN],
        &Device::Cpu,
    )
    .unwrap();
    let e2 = fq.forward(&x).unwrap_err().to_string();
    assert!(e2.contains("3 non-finite values"), "{e2}");
    // Observer off: nothing is observed, so nothing is refused (as `forward`).
    fq.enable_observer(false);
    assert!(feed.observe(f32::NAN, f32::NAN, 4).unwrap().is_some());
    assert_eq!(fq.min_max().unwrap(), before);
}

#[test]
fn per_channel_modules_have_no_feed() {
    let cfg = ObserverConfig::new(QDType::qint8(), QScheme::PerChannelSymmetric { axis: 0 });
    let fq = FusedMovingAvgObsFakeQuantize::new(cfg, 0.01).unwrap();
    assert!(fq.range_feed().is_none());
}
