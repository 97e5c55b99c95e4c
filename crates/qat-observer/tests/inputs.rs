//! Every float dtype and layout is read correctly.

use candle_core::{DType, Device, Tensor};
use qat_observer::{
    MinMaxObserver, Observer, ObserverConfig, PerChannelMinMaxObserver, QDType, QScheme,
};

fn data() -> Tensor {
    let v: Vec<f32> = (0..60)
        .map(|i| ((i * 37) % 61) as f32 / 8.0 - 3.5)
        .collect();
    Tensor::from_vec(v, (3, 4, 5), &Device::Cpu).unwrap()
}

fn minmax_of(x: &Tensor) -> (f32, f32) {
    let mut o = MinMaxObserver::new(ObserverConfig::default()).unwrap();
    o.observe(x).unwrap();
    (o.min_val(), o.max_val())
}

#[test]
fn float_dtypes_are_converted() {
    let x = data();
    let want = minmax_of(&x);
    // Every value is a multiple of 1/8 in [-3.5, 4], exact in each of these dtypes.
    for dt in [DType::F16, DType::BF16, DType::F64] {
        assert_eq!(minmax_of(&x.to_dtype(dt).unwrap()), want, "{dt:?}");
    }
}

#[test]
fn strided_and_offset_views_are_read_correctly() {
    let x = data();
    let t = x.transpose(0, 2).unwrap();
    assert!(!t.is_contiguous());
    assert_eq!(minmax_of(&t), minmax_of(&t.contiguous().unwrap()));
    // A narrowed view starts at an offset inside the storage.
    let n = x.narrow(0, 1, 2).unwrap();
    let v = n.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let lo = v.iter().cloned().fold(f32::INFINITY, f32::min);
    let hi = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    assert_eq!(minmax_of(&n), (lo, hi));
}

#[test]
fn per_channel_any_axis_matches_a_transposed_reference() {
    let x = data();
    for axis in 0..3 {
        let cfg = ObserverConfig::new(QDType::quint8(), QScheme::PerChannelAffine { axis });
        let mut o = PerChannelMinMaxObserver::new(cfg).unwrap();
        o.observe(&x).unwrap();
        // Reference: move the axis to the front and reduce each row.
        let rows = x
            .transpose(0, axis)
            .unwrap()
            .contiguous()
            .unwrap()
            .flatten_from(1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (c, row) in rows.iter().enumerate() {
            let lo = row.iter().cloned().fold(f32::INFINITY, f32::min);
            let hi = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(
                (o.min_val()[c], o.max_val()[c]),
                (lo, hi),
                "axis {axis} ch {c}"
            );
        }
        // A strided input gives the same statistics.
        let mut s = PerChannelMinMaxObserver::new(ObserverConfig::new(
            QDType::quint8(),
            QScheme::PerChannelAffine { axis: 2 - axis },
        ))
        .unwrap();
        s.observe(&x.permute((2, 1, 0)).unwrap()).unwrap();
        assert_eq!(s.min_val(), o.min_val(), "strided, axis {axis}");
    }
}
