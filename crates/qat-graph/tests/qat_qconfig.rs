//! QConfig presets and override resolution.

use qat_core::{QScheme, DEFAULT_EPS};
use qat_graph::qconfig::{FakeQuantKind, ObserverKind, QConfig};
use qat_graph::{BnCfg, Conv2dCfg, FusedBn, Op};

#[test]
fn qat_presets_have_the_documented_ranges() {
    let d = *QConfig::default_qat().global().unwrap();
    assert_eq!(d.activation.dtype.range(), (0, 255));
    assert_eq!(d.activation.scheme, QScheme::PerTensorAffine);
    assert_eq!(d.activation.kind, FakeQuantKind::FusedMovingAverage);
    assert_eq!(
        d.activation.observer,
        ObserverKind::MovingAverageMinMax {
            averaging_constant: 0.01
        }
    );
    assert_eq!(d.weight.dtype.range(), (-128, 127));
    assert_eq!(d.weight.scheme, QScheme::PerChannelSymmetric { axis: 0 });
    assert_eq!(d.weight.eps, DEFAULT_EPS);

    // get_default_qat_qconfig('x86'): quant_min=0, quant_max=255, reduce_range=True.
    let x86 = *QConfig::pytorch_x86().global().unwrap();
    assert_eq!(x86.activation.dtype.range(), (0, 127));
    assert!(x86.activation.dtype.custom);
    assert_eq!(x86.weight, d.weight);

    for bits in 2..=8 {
        let l = *QConfig::lsq(bits).unwrap().global().unwrap();
        assert_eq!(l.activation.dtype.range(), (0, (1 << bits) - 1));
        assert_eq!(
            l.weight.dtype.range(),
            (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
        );
        assert!(matches!(l.weight.kind, FakeQuantKind::Learnable { .. }));
    }
    for bad in [0, 1, 9, 32] {
        let e = QConfig::lsq(bad).unwrap_err().to_string();
        assert!(e.contains("2 to 8 bits"), "{e}");
    }

    let p = *QConfig::ptq().global().unwrap();
    assert_eq!(
        p.activation.observer,
        ObserverKind::Histogram { bins: 2048 }
    );
    assert_eq!(p.activation.kind, FakeQuantKind::ObserveOnly);
    assert_eq!(p.weight.observer, ObserverKind::MinMax);
    assert_eq!(p.weight.scheme, QScheme::PerChannelSymmetric { axis: 0 });
}

#[test]
fn qat_qconfig_resolution_precedence() {
    let base = *QConfig::default_qat().global().unwrap();
    let four = *QConfig::lsq(4).unwrap().global().unwrap();
    let x86 = *QConfig::pytorch_x86().global().unwrap();
    let q = QConfig::default_qat()
        .with_op_type("Conv2d", Some(four))
        .with_op_type("ConvBnReLU62d", Some(x86))
        .with_prefix("features.1", None)
        .with_prefix("features.1.conv.2", Some(four))
        .with_name("features.1.conv.2.1", Some(base))
        .with_name("classifier.1", None);
    // No override: global.
    assert_eq!(q.resolve(&["features.9.add"], "Add"), Some(&base));
    // Base op type selects fused variants; the exact fused type beats the base type.
    assert_eq!(q.resolve(&["features.0.0"], "ConvBn2d"), Some(&four));
    assert_eq!(q.resolve(&["features.0.0"], "ConvBnReLU62d"), Some(&x86));
    // Prefix beats type; the longest prefix wins; prefixes stop at `.` boundaries.
    assert_eq!(q.resolve(&["features.1.conv.0.0"], "ConvBnReLU62d"), None);
    assert_eq!(q.resolve(&["features.1.conv.2"], "ConvBn2d"), Some(&four));
    assert_eq!(
        q.resolve(&["features.10.conv.0.0"], "ConvBn2d"),
        Some(&four)
    );
    // Exact name beats everything, and a fused node answers to its BN's name too.
    assert_eq!(
        q.resolve(&["features.1.conv.2", "features.1.conv.2.1"], "ConvBn2d"),
        Some(&base)
    );
    assert_eq!(q.resolve(&["classifier.1"], "Linear"), None);
    // Later overrides of the same key replace earlier ones.
    let q2 = q.clone().with_name("classifier.1", Some(four));
    assert_eq!(q2.resolve(&["classifier.1"], "Linear"), Some(&four));
    // Float everywhere unless overridden.
    let f = QConfig::float().with_op_type("Linear", Some(base));
    assert_eq!(f.resolve(&["a"], "Conv2d"), None);
    assert_eq!(f.resolve(&["fc"], "LinearReLU"), Some(&base));

    // for_node passes the folded BN's name.
    let op = Op::ConvBn {
        conv: Conv2dCfg::new(3, 4, 3),
        bn: FusedBn {
            name: "features.1.conv.2.1".into(),
            cfg: BnCfg::new(4),
        },
        act: None,
    };
    assert_eq!(q.for_node("features.1.conv.2", &op), Some(&base));
}

#[test]
fn qat_specs_reject_impossible_observers() {
    let mut w = QConfig::default_qat().global().unwrap().weight;
    w.observer = ObserverKind::Histogram { bins: 256 };
    w.kind = FakeQuantKind::FakeQuantize;
    let e = w.build(4).unwrap_err().to_string();
    assert!(e.contains("per-channel"), "{e}");
    let mut a = QConfig::default_qat().global().unwrap().activation;
    a.observer = ObserverKind::MinMax;
    let e = a.build(1).unwrap_err().to_string();
    assert!(e.contains("FusedMovingAverage needs"), "{e}");
}
