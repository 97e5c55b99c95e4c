//! Every GEMM kernel this CPU runs against the scalar spec, tolerance 0: ragged shapes, ruy's
//! shape list, large K, extreme values, every epilogue, strided A / C, thread counts.

mod gemm_common;

use gemm_common::{isas, Problem};
use qat_core::Requant;
use qat_kernels::gemm::{reference, PackedGemm};
use qat_kernels::{Isa, KernelError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// ruy's shape list (`test_fast.cc`): small sizes and the edges of powers of two.
const RUY: [usize; 19] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 16, 17, 31, 32, 33, 63, 64, 65,
];

#[test]
fn reference_equals_i64_triple_loop() {
    for seed in 0..20 {
        let mut rng = StdRng::seed_from_u64(seed);
        let (m, k, n) = (
            rng.gen_range(1..12),
            rng.gen_range(1..70),
            rng.gen_range(1..12),
        );
        let p = Problem::random(m, k, n, seed as usize % 3, seed);
        let got = p.reference_i32();
        for i in 0..m {
            for j in 0..n {
                let mut acc: i64 = p.bias.as_ref().map_or(0, |b| b[j] as i64);
                for kk in 0..k {
                    acc += (p.a[i * p.lda + kk] as i64 - p.zp_a as i64) * p.w[j * k + kk] as i64;
                }
                assert_eq!(got[i * n + j] as i64, acc);
            }
        }
        let got8 = p.reference_u8();
        for (idx, (&acc, &q)) in got.iter().zip(&got8).enumerate() {
            let r = p.requant[idx % n];
            let real = (acc as f64 * r.multiplier as f64).round_ties_even() + r.zero_point as f64;
            let want = real.clamp(r.qmin as f64, r.qmax as f64);
            // f32 products can differ from f64 ones by one step on exact-tie boundaries only.
            assert!((q as f64 - want).abs() <= 1.0, "{q} vs {want}");
        }
    }
}

#[test]
fn ruy_shapes_every_isa() {
    for isa in isas("ruy_shapes_every_isa") {
        for (mi, &m) in RUY.iter().enumerate() {
            for (ni, &n) in RUY.iter().enumerate() {
                let k = RUY[(mi * 7 + ni * 3) % RUY.len()];
                Problem::random(m, k, n, (mi + ni) % 3, (mi * 100 + ni) as u64).check(isa, 1);
            }
        }
        // K sweep at a fixed ragged M × N.
        for &k in RUY.iter().chain(&[127, 128, 129, 255, 256, 257]) {
            Problem::random(11, k, 53, 1, k as u64).check(isa, 1);
        }
    }
}

#[test]
fn degenerate_and_large_k() {
    for isa in isas("degenerate_and_large_k") {
        for (m, k, n) in [
            (1, 1, 1),
            (1, 1, 100),
            (100, 1, 1),
            (1, 300, 1),
            (7, 5001, 50),
        ] {
            Problem::random(m, k, n, 2, (m * k + n) as u64).check(isa, 1);
        }
        // Tiles spanning whole panels plus ragged ones (AVX-512's 48-column panels).
        for (m, k, n) in [(17, 33, 96), (9, 40, 97), (25, 64, 143), (3, 7, 200)] {
            Problem::random(m, k, n, 0, (m + k * n) as u64).check(isa, 1);
        }
    }
}

/// 255 × -128 (and friends) at the largest K the i32 accumulator allows: a kernel that
/// saturates anywhere (AVX2 `vpmaddubsw`'s i16 pairs) fails here.
#[test]
fn extreme_values_at_large_k() {
    let k = 65_000;
    for isa in isas("extreme_values_at_large_k") {
        for (a, w, zp_a) in [
            (255u8, -128i8, 0),
            (255, 127, 0),
            (0, 127, 255),
            (0, -128, 255),
            (255, -128, 255),
        ] {
            let (m, n) = (9, 50);
            let acc = (a as i64 - zp_a as i64) * w as i64 * k as i64;
            assert!(acc.abs() <= i32::MAX as i64);
            let p = Problem {
                m,
                k,
                n,
                lda: k,
                ldc: n,
                a: vec![a; m * k],
                w: vec![w; n * k],
                bias: None,
                zp_a,
                requant: vec![Requant {
                    multiplier: 100.0 / (acc.abs().max(1) as f32),
                    zero_point: 128,
                    qmin: 0,
                    qmax: 255,
                }],
            };
            let want = p.reference_i32();
            assert!(want.iter().all(|&v| v as i64 == acc));
            p.check(isa, 1);
        }
    }
}

#[test]
fn every_epilogue() {
    for isa in isas("every_epilogue") {
        let base = Problem::random(13, 77, 61, 1, 7);
        let acc = base.reference_i32();
        let max = acc.iter().map(|&v| (v as i64).abs()).max().unwrap() as f32;
        for (zp, qmin, qmax) in [
            (0, 0, 255),
            (200, 0, 255),
            (128, 128, 255),
            (30, 30, 90),
            (255, 255, 255),
            (0, 0, 0),
        ] {
            let mut p = base.clone();
            p.requant = vec![Requant {
                multiplier: 255.0 / max,
                zero_point: zp,
                qmin,
                qmax,
            }];
            p.check(isa, 1);
        }
    }
}

/// The AVX-512 epilogue leaves out the zero-point add, the `qmin` max and the `qmax` min when
/// no column needs them (zero point 0, `qmin` 0, `qmax` 255): every combination of the three,
/// needed by one column only (the last, or the first of the last panel) or by all, for one,
/// two and three vectors per row, with and without the float clamp (huge multipliers).
#[test]
fn byte_steps_skipped_only_when_identities() {
    for isa in isas("byte_steps_skipped_only_when_identities") {
        for n in [5, 16, 29, 48, 61, 97] {
            let base = Problem::random(19, 24, n, 1, 40 + n as u64);
            let acc = base.reference_i32();
            let max = acc.iter().map(|&v| (v as i64).abs()).max().unwrap() as f32;
            for steps in 0..8u32 {
                for one_column in [n - 1, (n - 1) / 48 * 48, usize::MAX] {
                    for multiplier in [255.0 / max, 1.0e9] {
                        let mut p = base.clone();
                        p.requant = (0..n)
                            .map(|j| {
                                let needed = one_column == usize::MAX || j == one_column;
                                let on = |bit: u32| needed && steps & bit != 0;
                                let zero_point = if on(1) { 60 } else { 0 };
                                Requant {
                                    multiplier,
                                    zero_point,
                                    qmin: if on(2) { zero_point + 7 } else { 0 },
                                    qmax: if on(4) { 200 } else { 255 },
                                }
                            })
                            .collect();
                        p.check(isa, 1);
                    }
                }
            }
        }
    }
}

/// Multipliers so large that `f32(acc) · m` leaves the i32 range (even reaches ±∞) in both
/// directions: the float upper clamp and the saturating narrowing must still give exactly
/// `qmin` / `qmax`, on every ISA and for every column count (one, two and three vectors).
#[test]
fn huge_multipliers_saturate_exactly() {
    for isa in isas("huge_multipliers_saturate_exactly") {
        for n in [5, 16, 29, 48, 61] {
            let base = Problem::random(11, 37, n, 0, 3);
            for multiplier in [3.0e4f32, 1.0e9, 3.0e38] {
                for (zp, qmin, qmax) in [(0, 0, 255), (77, 77, 200), (255, 0, 255), (10, 3, 9)] {
                    let mut p = base.clone();
                    p.requant = vec![Requant {
                        multiplier,
                        zero_point: zp,
                        qmin,
                        qmax,
                    }];
                    p.check(isa, 1);
                }
            }
        }
    }
}

/// Narrow outputs (one or two 16-column vectors per row, which the AVX-512 kernel requantizes
/// four or two rows at a time): every row count of a tile, contiguous rows (`ldc == n`) and
/// padded ones, full and ragged column counts, both epilogue paths (plain and huge multipliers).
#[test]
fn narrow_outputs_every_row_count() {
    for isa in isas("narrow_outputs_every_row_count") {
        for n in [1, 8, 15, 16, 17, 24, 32] {
            for m in [1, 2, 3, 4, 5, 6, 7, 8, 9, 13] {
                for pad in [0, 3] {
                    let p = Problem::random(m, 16, n, pad, (m * 100 + n * 7 + pad) as u64);
                    p.check(isa, 1);
                    let mut huge = p.clone();
                    huge.requant.iter_mut().for_each(|r| r.multiplier = 1.0e9);
                    huge.check(isa, 1);
                }
            }
        }
    }
}

#[test]
fn thread_counts_agree() {
    for isa in isas("thread_counts_agree") {
        for (m, k, n) in [(200, 64, 40), (5, 90, 300), (1, 33, 1000), (64, 17, 48)] {
            let p = Problem::random(m, k, n, 1, (m * n) as u64);
            for threads in [1, 2, 3, 8] {
                p.check(isa, threads);
            }
        }
    }
}

#[test]
fn kernel_names_and_dispatch() {
    let expect = |isa: Isa| match isa {
        Isa::Scalar => "scalar_gemm_i32_4x4",
        Isa::Avx2 => "avx2_gemm_i32_4x16c2",
        Isa::AvxVnni => "avxvnni_gemm_i32_6x16c4",
        Isa::Avx512Vnni => "avx512vnni_gemm_i32_8x48c4",
        Isa::Neon => "neon_gemm_i32_8x8",
        Isa::Dotprod => "dotprod_gemm_i32_8x8c4",
        Isa::I8mm => "i8mm_gemm_i32_8x8c8",
    };
    let p = Problem::random(2, 3, 4, 0, 1);
    for isa in Isa::ALL {
        if isa.is_supported() {
            let g = p.pack(isa);
            assert_eq!(g.kernel_name(), expect(isa));
            assert_eq!(g.isa(), isa);
        } else {
            let err = PackedGemm::new(&p.w, 4, 3, None, 0, &p.requant, isa).unwrap_err();
            assert_eq!(err, KernelError::Unsupported(isa));
        }
    }
    let active = qat_kernels::isa::active();
    assert_eq!(p.pack(active).kernel_name(), expect(active));
    eprintln!("active ISA: {active} → {}", expect(active));
}

#[test]
fn bad_inputs_are_errors() {
    let rq = [Requant {
        multiplier: 0.1,
        zero_point: 0,
        qmin: 0,
        qmax: 255,
    }];
    let w = vec![1i8; 12];
    let new = |w: &[i8], n, k, bias: Option<&[i32]>, zp, rq: &[Requant]| {
        PackedGemm::new(w, n, k, bias, zp, rq, Isa::Scalar)
    };
    assert!(matches!(
        new(&w, 3, 5, None, 0, &rq),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        new(&w, 0, 12, None, 0, &rq),
        Err(KernelError::Shape(_))
    ));
    assert!(matches!(
        new(&w, 12, 0, None, 0, &rq),
        Err(KernelError::Shape(_))
    ));
    assert!(matches!(
        new(&w, 3, 4, Some(&[1, 2]), 0, &rq),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        new(&w, 3, 4, None, 256, &rq),
        Err(KernelError::ZeroPoint { .. })
    ));
    assert!(matches!(
        new(&w, 3, 4, None, -1, &rq),
        Err(KernelError::ZeroPoint { .. })
    ));
    assert!(matches!(
        new(&w, 3, 4, None, 0, &[rq[0]; 2]),
        Err(KernelError::Length { .. })
    ));
    for bad in [f32::NAN, 0.0, -1.0, f32::INFINITY] {
        let r = [Requant {
            multiplier: bad,
            ..rq[0]
        }];
        assert!(matches!(
            new(&w, 3, 4, None, 0, &r),
            Err(KernelError::Scale { .. })
        ));
    }
    for (zp, qmin, qmax) in [(0, 10, 5), (0, -1, 255), (0, 0, 256), (300, 0, 255)] {
        let r = [Requant {
            multiplier: 0.5,
            zero_point: zp,
            qmin,
            qmax,
        }];
        assert!(new(&w, 3, 4, None, 0, &r).is_err(), "{zp} {qmin} {qmax}");
    }
    // K too large for an exact i32 accumulator.
    let big = vec![0i8; 70_000];
    assert!(matches!(
        new(&big, 1, 70_000, None, 0, &rq),
        Err(KernelError::Param(_))
    ));

    let g = new(&w, 3, 4, None, 0, &rq).unwrap();
    let a = vec![0u8; 8];
    let mut out = vec![0u8; 6];
    assert!(g.gemm_u8(&a, 2, 4, &mut out, 3, 0).is_err(), "0 threads");
    assert!(g.gemm_u8(&a, 2, 3, &mut out, 3, 1).is_err(), "lda < k");
    assert!(g.gemm_u8(&a, 2, 4, &mut out, 2, 1).is_err(), "ldc < n");
    assert!(matches!(
        g.gemm_u8(&a, 3, 4, &mut out, 3, 1),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        g.gemm_u8(&a, 2, 4, &mut out[..5], 3, 1),
        Err(KernelError::Length { .. })
    ));
    let mut out32 = vec![0i32; 5];
    assert!(matches!(
        g.gemm_i32(&a, 2, 4, &mut out32, 3, 1),
        Err(KernelError::Length { .. })
    ));
    assert!(
        g.gemm_u8(&a, 0, 4, &mut [], 3, 1).is_ok(),
        "m = 0 is an empty product"
    );
    assert!(reference::gemm_i32_reference(&a, 2, 4, &w, 3, 5, None, 0).is_err());
}
