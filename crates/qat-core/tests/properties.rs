//! Property tests of the scalar spec.

use proptest::prelude::*;
use qat_core::*;

fn dtypes() -> impl Strategy<Value = QDType> {
    prop_oneof![
        Just(QDType::quint8()),
        Just(QDType::qint8()),
        (2u32..=8).prop_map(|b| QDType::unsigned(b).unwrap()),
        (2u32..=8).prop_map(|b| QDType::signed(b).unwrap()),
    ]
}

proptest! {
    #[test]
    fn round_trip_error_is_at_most_half_a_step(
        dtype in dtypes(),
        lo in -100.0f32..0.0,
        hi in 0.0f32..100.0,
        t in 0.0f32..=1.0,
    ) {
        let q = choose_qparams(lo, hi, dtype, false, DEFAULT_EPS).unwrap();
        let x = lo + (hi - lo) * t;
        let qx = quantize(x, q, dtype);
        prop_assert!(qx >= dtype.quant_min && qx <= dtype.quant_max);
        let y = dequantize(qx, q);
        // Half a step, plus the f32 rounding of x * inv_scale and of the dequantize.
        prop_assert!((x - y).abs() <= q.scale * 0.5 + x.abs() * 4.0 * f32::EPSILON + 1e-6,
            "x {x} y {y} scale {}", q.scale);
    }

    #[test]
    fn quantize_is_monotonic(dtype in dtypes(), a in -50.0f32..50.0, b in -50.0f32..50.0) {
        let q = QParams { scale: 0.37, zero_point: (dtype.quant_min + dtype.quant_max) / 2 };
        let (a, b) = if a <= b { (a, b) } else { (b, a) };
        prop_assert!(quantize(a, q, dtype) <= quantize(b, q, dtype));
    }

    #[test]
    fn zero_is_exact(dtype in dtypes(), lo in -100.0f32..=0.0, hi in 0.0f32..100.0, sym in any::<bool>()) {
        let q = choose_qparams(lo, hi, dtype, sym, DEFAULT_EPS).unwrap();
        prop_assert_eq!(dequantize(quantize(0.0, q, dtype), q), 0.0);
    }

    #[test]
    fn fake_quantize_equals_dequantize_of_quantize(dtype in dtypes(), x in -1000.0f32..1000.0, scale in 0.001f32..10.0) {
        let zp = dtype.quant_min + (dtype.quant_max - dtype.quant_min) / 3;
        let q = QParams { scale, zero_point: zp };
        let (y, pass) = fake_quantize(x, q, dtype);
        prop_assert_eq!(y, dequantize(quantize(x, q, dtype), q));
        let unclamped = zp as f64 + ((x * inv_scale(scale)).round_ties_even()) as f64;
        prop_assert_eq!(pass, unclamped >= dtype.quant_min as f64 && unclamped <= dtype.quant_max as f64);
    }

    #[test]
    fn requantize_stays_in_range(acc in any::<i32>(), m in 1e-8f32..10.0, zp in 0i32..=255) {
        let r = requantize(acc, m, zp, 0, 255);
        prop_assert!((0..=255).contains(&r));
    }
}
