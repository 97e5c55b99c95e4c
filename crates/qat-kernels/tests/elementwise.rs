//! Quantized add, global average pool, quantize / dequantize: every SIMD path against the
//! scalar reference (tolerance 0, bitwise for f32), the references against a naive f64
//! computation, thread-count invariance, bad inputs.

mod common;

use common::{for_each_isa, pool, random_bytes, random_zero_point, ACTS};
use qat_core::QParams;
use qat_kernels::elementwise::{dequantize_u8, global_avg_pool, quantize_u8, QuantizedAdd};
use qat_kernels::{Activation, Isa, KernelError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random_q(rng: &mut StdRng) -> QParams {
    QParams {
        scale: rng.gen_range(0.002..0.2),
        zero_point: random_zero_point(rng),
    }
}

const LENGTHS: [usize; 9] = [1, 3, 7, 8, 15, 17, 64, 333, 40_000];

#[test]
fn add_every_isa_equals_scalar() {
    let mut rng = StdRng::seed_from_u64(10);
    for_each_isa("add", |isa| {
        let mut ran = None;
        for round in 0..40 {
            let add = QuantizedAdd::new(
                random_q(&mut rng),
                random_q(&mut rng),
                random_q(&mut rng),
                ACTS[round % 3],
            )
            .unwrap();
            let n = LENGTHS[round % LENGTHS.len()];
            let extreme = round % 4 == 0;
            let a = random_bytes(&mut rng, n, extreme);
            let b = random_bytes(&mut rng, n, extreme);
            let mut want = vec![0u8; n];
            let mut got = vec![0u8; n];
            add.run(&a, &b, &mut want, Isa::Scalar, 1).unwrap();
            ran = Some(add.run(&a, &b, &mut got, isa, 1).unwrap());
            assert_eq!(got, want, "{isa} round {round} n={n}");
        }
        println!("add {isa}: equal to scalar (kernel {})", ran.unwrap());
    });
}

#[test]
fn add_reference_matches_f64_away_from_ties() {
    let mut rng = StdRng::seed_from_u64(11);
    let (mut total, mut ties) = (0, 0);
    for round in 0..30 {
        let (qa, qb, qo) = (random_q(&mut rng), random_q(&mut rng), random_q(&mut rng));
        let act = ACTS[round % 3];
        let add = QuantizedAdd::new(qa, qb, qo, act).unwrap();
        let (lo, hi) = act.bounds(qo);
        let a: Vec<u8> = (0..2000).map(|_| rng.gen()).collect();
        let b: Vec<u8> = (0..2000).map(|_| rng.gen()).collect();
        let mut got = vec![0u8; a.len()];
        add.run(&a, &b, &mut got, Isa::Scalar, 1).unwrap();
        for i in 0..a.len() {
            let real = ((a[i] as i32 - qa.zero_point) as f64 * qa.scale as f64
                + (b[i] as i32 - qb.zero_point) as f64 * qb.scale as f64)
                / qo.scale as f64;
            let want =
                (real.round_ties_even() as i64 + qo.zero_point as i64).clamp(lo as i64, hi as i64);
            total += 1;
            if ((real - real.floor()) - 0.5).abs() < 1e-3 {
                ties += 1;
                assert!((got[i] as i64 - want).abs() <= 1);
            } else {
                assert_eq!(got[i] as i64, want, "round {round} i={i} real={real}");
            }
        }
    }
    println!("add scalar vs f64: {total} elements, {ties} near a tie");
    assert!(ties * 100 < total);
}

fn naive_pool(x: &[u8], n: usize, hw: usize, c: usize, qi: QParams, qo: QParams) -> Vec<(u8, f64)> {
    let mut out = Vec::new();
    for b in 0..n {
        for ch in 0..c {
            let s: i64 = (0..hw)
                .map(|p| x[(b * hw + p) * c + ch] as i64 - qi.zero_point as i64)
                .sum();
            let real = s as f64 * qi.scale as f64 / (qo.scale as f64 * hw as f64);
            let q = (real.round_ties_even() as i64 + qo.zero_point as i64).clamp(0, 255);
            out.push((q as u8, real));
        }
    }
    out
}

#[test]
fn pool_every_isa_equals_scalar_and_reference_matches_f64() {
    let mut rng = StdRng::seed_from_u64(12);
    let shapes = [
        (1, 1, 1, 1),
        (2, 7, 7, 24),
        (1, 2, 3, 17),
        (3, 1, 5, 33),
        (1, 7, 7, 1280),
        (2, 4, 4, 15),
        (1, 13, 11, 8),
        // More pixels than a u16 lane can sum at 255 (the AVX-512 kernel's runs of 257).
        (1, 23, 17, 70),
        (2, 20, 20, 64),
    ];
    let mut ties = 0;
    for_each_isa("pool", |isa| {
        let mut ran = None;
        for (round, &(n, h, w, c)) in shapes.iter().cycle().take(36).enumerate() {
            let (qi, qo) = (random_q(&mut rng), random_q(&mut rng));
            let x: Vec<u8> = (0..n * h * w * c)
                .map(|_| if round % 4 == 0 { 255 } else { rng.gen() })
                .collect();
            let mut want = vec![0u8; n * c];
            let mut got = vec![0u8; n * c];
            global_avg_pool(&x, n, h, w, c, qi, qo, &mut want, Isa::Scalar, 1).unwrap();
            ran = Some(global_avg_pool(&x, n, h, w, c, qi, qo, &mut got, isa, 1).unwrap());
            assert_eq!(got, want, "{isa} shape {:?}", (n, h, w, c));
            if isa == Isa::Scalar {
                for (g, (q, real)) in want.iter().zip(naive_pool(&x, n, h * w, c, qi, qo)) {
                    if ((real - real.floor()) - 0.5).abs() < 1e-3 {
                        ties += 1;
                        assert!((*g as i32 - q as i32).abs() <= 1);
                    } else {
                        assert_eq!(*g, q, "real {real}");
                    }
                }
            }
        }
        println!("pool {isa}: equal to scalar (kernel {})", ran.unwrap());
    });
    println!("pool scalar vs f64: {ties} outputs near a tie");
}

/// Values that probe every branch of quantize: ties, NaN, ±Inf, ±0, huge, subnormal.
fn special_floats(rng: &mut StdRng, scale: f32, n: usize) -> Vec<f32> {
    let specials = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        f32::MAX,
        f32::MIN,
        1e-40,
        -1e-40,
        3e9,
        -3e9,
    ];
    (0..n)
        .map(|i| match i % 4 {
            0 => specials[rng.gen_range(0..specials.len())],
            1 => (rng.gen_range(-300..300) as f32 + 0.5) * scale,
            _ => rng.gen_range(-5.0f32..5.0),
        })
        .collect()
}

#[test]
fn quantize_and_dequantize_every_isa_equal_scalar() {
    let mut rng = StdRng::seed_from_u64(13);
    for_each_isa("quantize", |isa| {
        let mut ran = None;
        for round in 0..30 {
            let q = random_q(&mut rng);
            let n = LENGTHS[round % LENGTHS.len()];
            let x = special_floats(&mut rng, q.scale, n);
            let mut want = vec![0u8; n];
            let mut got = vec![0u8; n];
            quantize_u8(&x, q, &mut want, Isa::Scalar, 1).unwrap();
            ran = Some(quantize_u8(&x, q, &mut got, isa, 1).unwrap());
            assert_eq!(got, want, "quantize {isa} n={n} {q:?}");
            // The scalar path is the qat-core formula itself.
            for (v, &g) in x.iter().zip(&want) {
                let spec = qat_core::quantize_with_inv(*v, 1.0 / q.scale, q.zero_point, 0, 255);
                assert_eq!(g as i32, spec);
            }
            let mut dw = vec![0f32; n];
            let mut dg = vec![0f32; n];
            dequantize_u8(&want, q, &mut dw, Isa::Scalar, 1).unwrap();
            dequantize_u8(&want, q, &mut dg, isa, 1).unwrap();
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&dg), bits(&dw), "dequantize {isa}");
            for (&u, &d) in want.iter().zip(&dw) {
                let exact = (u as f64 - q.zero_point as f64) * q.scale as f64;
                assert!((d as f64 - exact).abs() <= exact.abs() * 1e-7);
            }
        }
        println!(
            "quantize/dequantize {isa}: equal to scalar (kernel {})",
            ran.unwrap()
        );
    });
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let pool = pool(3);
    let mut rng = StdRng::seed_from_u64(14);
    let n = 100_003;
    let q = random_q(&mut rng);
    let a: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
    let b: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
    let x = special_floats(&mut rng, q.scale, n);
    let add =
        QuantizedAdd::new(q, random_q(&mut rng), random_q(&mut rng), Activation::Relu).unwrap();
    for isa in Isa::supported() {
        let run = |threads: usize| {
            let mut s = vec![0u8; n];
            add.run(&a, &b, &mut s, isa, threads).unwrap();
            let mut qx = vec![0u8; n];
            quantize_u8(&x, q, &mut qx, isa, threads).unwrap();
            let mut d = vec![0f32; n];
            dequantize_u8(&a, q, &mut d, isa, threads).unwrap();
            let mut p = vec![0u8; 3 * 16];
            global_avg_pool(&a[..3 * 49 * 16], 3, 7, 7, 16, q, q, &mut p, isa, threads).unwrap();
            (s, qx, d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), p)
        };
        let one = run(1);
        for threads in [2, 3] {
            assert!(
                pool.install(|| run(threads)) == one,
                "{isa} threads={threads}"
            );
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let q = QParams {
        scale: 0.1,
        zero_point: 3,
    };
    for bad in [0.0, -0.5, f32::NAN, f32::INFINITY] {
        let b = QParams {
            scale: bad,
            zero_point: 3,
        };
        assert!(matches!(
            QuantizedAdd::new(q, b, q, Activation::None),
            Err(KernelError::Scale { .. })
        ));
        assert!(matches!(
            quantize_u8(&[1.0], b, &mut [0], Isa::Scalar, 1),
            Err(KernelError::Scale { .. })
        ));
        assert!(matches!(
            dequantize_u8(&[1], b, &mut [0.0], Isa::Scalar, 1),
            Err(KernelError::Scale { .. })
        ));
        assert!(matches!(
            global_avg_pool(&[1], 1, 1, 1, 1, q, b, &mut [0], Isa::Scalar, 1),
            Err(KernelError::Scale { .. })
        ));
    }
    let bad_zp = QParams {
        scale: 0.1,
        zero_point: -1,
    };
    assert!(matches!(
        QuantizedAdd::new(q, q, bad_zp, Activation::None),
        Err(KernelError::ZeroPoint { .. })
    ));
    assert!(matches!(
        quantize_u8(&[1.0], bad_zp, &mut [0], Isa::Scalar, 1),
        Err(KernelError::ZeroPoint { .. })
    ));
    let add = QuantizedAdd::new(q, q, q, Activation::None).unwrap();
    assert!(matches!(
        add.run(&[1, 2], &[1], &mut [0, 0], Isa::Scalar, 1),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        add.run(&[1, 2], &[1, 2], &mut [0], Isa::Scalar, 1),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        add.run(&[], &[], &mut [], Isa::Scalar, 1),
        Err(KernelError::Shape(_))
    ));
    assert!(matches!(
        quantize_u8(&[1.0, 2.0], q, &mut [0], Isa::Scalar, 1),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        quantize_u8(&[], q, &mut [], Isa::Scalar, 1),
        Err(KernelError::Shape(_))
    ));
    assert!(matches!(
        dequantize_u8(&[1, 2], q, &mut [0.0], Isa::Scalar, 1),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        global_avg_pool(&[1; 4], 1, 2, 2, 1, q, q, &mut [0; 2], Isa::Scalar, 1),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        global_avg_pool(&[1; 3], 1, 2, 2, 1, q, q, &mut [0], Isa::Scalar, 1),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        global_avg_pool(&[], 1, 0, 2, 1, q, q, &mut [0], Isa::Scalar, 1),
        Err(KernelError::Shape(_))
    ));
    if let Some(missing) = Isa::ALL.into_iter().find(|i| !i.is_supported()) {
        assert!(matches!(
            add.run(&[1], &[1], &mut [0], missing, 1),
            Err(KernelError::Unsupported(_))
        ));
    }
}
