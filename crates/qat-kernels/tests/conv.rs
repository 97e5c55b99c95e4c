//! k×k convolution (1×1 direct GEMM, im2col + GEMM, groups, stem, depthwise routing): every ISA
//! against the scalar reference (tolerance 0), the reference against a naive i64 / f64
//! computation, thread-count invariance, bad inputs.

mod common;

use common::{first_difference, for_each_isa, pool, ConvCase as Case, Draw};
use qat_core::QParams;
use qat_kernels::conv::{Conv2d, Conv2dGeometry};
use qat_kernels::{Activation, Isa, KernelError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A random case of `(C_in, C_out, groups)` on `h × w` images.
fn make_case(
    rng: &mut StdRng,
    channels: (usize, usize, usize),
    g: Conv2dGeometry,
    hw: (usize, usize),
    extreme: bool,
) -> Case {
    let draw = Draw {
        weight_scale: 0.0005..0.02,
        output_scale: 0.02..0.5,
        bias: 30000,
        bias_p: 0.8,
        extreme,
    };
    Case::random(rng, channels, g, hw, &draw)
}

fn random_case(rng: &mut StdRng, extreme: bool) -> Case {
    let groups = [1, 1, 1, 2, 3][rng.gen_range(0..5)];
    let ci = groups * [1, 3, 5, 8, 17][rng.gen_range(0..5)];
    let co = groups * [1, 4, 7, 16, 33][rng.gen_range(0..5)];
    let k = [1, 1, 3, 3, 5][rng.gen_range(0..5)];
    let stride = rng.gen_range(1..=2);
    let pad = if k == 1 && rng.gen_bool(0.5) {
        0
    } else {
        rng.gen_range(0..=k / 2 + 1)
    };
    let mut g = Conv2dGeometry::square(k, stride, pad);
    if rng.gen_bool(0.15) {
        g.dilation_h = 2;
        g.dilation_w = 2;
    }
    let span = g.dilation_h * (k - 1) + 1;
    let min_hw = span.saturating_sub(2 * pad).max(1);
    let h = rng.gen_range(min_hw..=min_hw + 8);
    let w = rng.gen_range(min_hw..=min_hw + 8);
    make_case(rng, (ci, co, groups), g, (h, w), extreme)
}

fn check_isas(cases: &[Case]) {
    for_each_isa("conv", |isa| {
        let mut kernels = std::collections::BTreeSet::new();
        for case in cases {
            let want = case.reference();
            let got = case.run(isa, 1);
            kernels.insert(case.conv(isa).kernel_name());
            if let Some(i) = first_difference(&got, &want) {
                panic!(
                    "{isa}: {} differs from the reference at {i}: {} vs {}",
                    case.describe(),
                    got[i],
                    want[i]
                );
            }
        }
        println!(
            "{isa}: {} cases equal to the reference; kernels {kernels:?}",
            cases.len()
        );
    });
}

#[test]
fn every_isa_equals_reference_on_random_convs() {
    let mut rng = StdRng::seed_from_u64(20);
    let cases: Vec<Case> = (0..60).map(|i| random_case(&mut rng, i % 4 == 0)).collect();
    check_isas(&cases);
}

#[test]
fn stem_1x1_depthwise_and_tiny_inputs() {
    let mut rng = StdRng::seed_from_u64(21);
    let sq = Conv2dGeometry::square;
    let cases = vec![
        // The 3-channel stem: K = 27.
        make_case(&mut rng, (3, 16, 1), sq(3, 2, 1), (17, 15), false),
        make_case(&mut rng, (3, 32, 1), sq(3, 2, 1), (9, 11), true),
        // 1×1 straight over pixels, with groups too.
        make_case(&mut rng, (24, 40, 1), sq(1, 1, 0), (9, 11), false),
        make_case(&mut rng, (16, 8, 4), sq(1, 1, 0), (5, 3), false),
        // 1×1 stride 2 goes through im2col.
        make_case(&mut rng, (17, 9, 1), sq(1, 2, 0), (7, 7), false),
        // Depthwise routes to the direct kernel (also a 7×7 one, which runs scalar).
        make_case(&mut rng, (33, 33, 33), sq(3, 2, 1), (9, 8), false),
        make_case(&mut rng, (17, 17, 17), sq(5, 1, 2), (6, 7), true),
        make_case(&mut rng, (5, 5, 5), sq(7, 1, 3), (4, 4), false),
        // Channel multiplier 2: grouped GEMM.
        make_case(&mut rng, (4, 8, 4), sq(3, 1, 1), (5, 5), false),
        // Tiny spatial sizes.
        make_case(&mut rng, (8, 8, 1), sq(3, 1, 1), (1, 1), false),
        make_case(&mut rng, (8, 5, 1), sq(3, 1, 1), (2, 2), true),
        make_case(&mut rng, (3, 4, 1), sq(3, 2, 1), (2, 2), false),
    ];
    check_isas(&cases);
}

/// Naive definition: i64 accumulation, f64 requantization.
fn naive(c: &Case) -> (Vec<u8>, Vec<f64>) {
    let g = &c.g;
    let (oh, ow) = g.output_hw(c.h, c.w).unwrap();
    let (cg, og) = (c.ci / c.groups, c.co / c.groups);
    let (qmin, qmax) = c.act.bounds(c.output_q);
    let (mut out, mut exact) = (Vec::new(), Vec::new());
    for b in 0..c.n {
        for oy in 0..oh {
            for ox in 0..ow {
                for oc in 0..c.co {
                    let mut acc = c.bias.as_ref().map_or(0, |v| v[oc] as i64);
                    for ic in 0..cg {
                        for ky in 0..g.kernel_h {
                            for kx in 0..g.kernel_w {
                                let iy =
                                    (oy * g.stride_h + ky * g.dilation_h) as i64 - g.pad_h as i64;
                                let ix =
                                    (ox * g.stride_w + kx * g.dilation_w) as i64 - g.pad_w as i64;
                                let x = if iy < 0 || ix < 0 || iy >= c.h as i64 || ix >= c.w as i64
                                {
                                    c.input_q.zero_point as i64
                                } else {
                                    c.x[((b * c.h + iy as usize) * c.w + ix as usize) * c.ci
                                        + (oc / og) * cg
                                        + ic] as i64
                                };
                                let wt = c.weights
                                    [((oc * cg + ic) * g.kernel_h + ky) * g.kernel_w + kx]
                                    as i64;
                                acc += wt * (x - c.input_q.zero_point as i64);
                            }
                        }
                    }
                    let real = acc as f64 * c.input_q.scale as f64 * c.w_scale[oc] as f64
                        / c.output_q.scale as f64;
                    exact.push(real);
                    out.push(
                        (real.round_ties_even() as i64 + c.output_q.zero_point as i64)
                            .clamp(qmin as i64, qmax as i64) as u8,
                    );
                }
            }
        }
    }
    (out, exact)
}

#[test]
fn reference_matches_naive_definition() {
    let mut rng = StdRng::seed_from_u64(22);
    let (mut total, mut ties) = (0usize, 0usize);
    for i in 0..60 {
        let case = random_case(&mut rng, i % 3 == 0);
        let got = case.reference();
        let (want, exact) = naive(&case);
        for (j, ((&g, &w), &e)) in got.iter().zip(&want).zip(&exact).enumerate() {
            total += 1;
            if ((e - e.floor()) - 0.5).abs() < 1e-3 {
                ties += 1;
                assert!(
                    (g as i32 - w as i32).abs() <= 1,
                    "{} at {j}",
                    case.describe()
                );
            } else {
                assert_eq!(g, w, "{} at {j}: exact {e}", case.describe());
            }
        }
    }
    println!("reference vs naive: {total} outputs, {ties} near a tie (±1 allowed there)");
    assert!(ties * 100 < total);
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let pool = pool(3);
    let mut rng = StdRng::seed_from_u64(23);
    let sq = Conv2dGeometry::square;
    let mut cases: Vec<Case> = (0..8).map(|_| random_case(&mut rng, false)).collect();
    cases.push(make_case(
        &mut rng,
        (3, 16, 1),
        sq(3, 2, 1),
        (31, 29),
        false,
    ));
    cases.push(make_case(
        &mut rng,
        (32, 48, 1),
        sq(1, 1, 0),
        (23, 21),
        false,
    ));
    for case in &cases {
        for isa in Isa::supported() {
            let one = case.run(isa, 1);
            for threads in [2, 3] {
                let many = pool.install(|| case.run(isa, threads));
                assert_eq!(one, many, "{isa} threads={threads}: {}", case.describe());
            }
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let q = QParams {
        scale: 0.1,
        zero_point: 3,
    };
    let g = Conv2dGeometry::square(3, 1, 1);
    let new = |ci: usize, co: usize, groups: usize, g: Conv2dGeometry, wlen: usize, s: &[f32]| {
        Conv2d::new(
            ci,
            co,
            groups,
            g,
            &vec![1i8; wlen],
            s,
            None,
            q,
            q,
            Activation::None,
            Isa::Scalar,
        )
    };
    assert!(matches!(
        new(0, 4, 1, g, 0, &[1.0; 4]),
        Err(KernelError::Shape(_))
    ));
    assert!(matches!(
        new(4, 4, 0, g, 0, &[1.0; 4]),
        Err(KernelError::Shape(_))
    ));
    assert!(matches!(
        new(4, 6, 4, g, 54, &[1.0; 6]),
        Err(KernelError::Param(_))
    ));
    assert!(matches!(
        new(4, 4, 1, g, 143, &[1.0; 4]),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        new(4, 4, 1, g, 144, &[1.0; 3]),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        new(
            4,
            4,
            1,
            Conv2dGeometry::square(3, 1, 1),
            144,
            &[1.0, 1.0, f32::NAN, 1.0]
        ),
        Err(KernelError::Scale { .. })
    ));
    assert!(matches!(
        new(4, 4, 1, Conv2dGeometry::square(3, 0, 1), 144, &[1.0; 4]),
        Err(KernelError::Param(_))
    ));
    let bias_err = Conv2d::new(
        4,
        4,
        1,
        g,
        &[1; 144],
        &[1.0; 4],
        Some(&[0; 3]),
        q,
        q,
        Activation::None,
        Isa::Scalar,
    );
    assert!(matches!(bias_err, Err(KernelError::Length { .. })));
    for bad in [0.0, -1.0, f32::NAN] {
        let qb = QParams {
            scale: bad,
            zero_point: 0,
        };
        let r = Conv2d::new(
            4,
            4,
            1,
            g,
            &[1; 144],
            &[1.0; 4],
            None,
            q,
            qb,
            Activation::Relu,
            Isa::Scalar,
        );
        assert!(matches!(r, Err(KernelError::Scale { .. })));
    }
    let conv = new(4, 4, 1, g, 144, &[1.0; 4]).unwrap();
    let mut y = vec![0u8; 4 * 3 * 3];
    assert!(matches!(
        conv.run(&[0; 35], 1, 3, 3, &mut y, 1),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        conv.run(&[0; 36], 1, 3, 3, &mut y[1..], 1),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        conv.run(&[], 0, 3, 3, &mut [], 1),
        Err(KernelError::Shape(_))
    ));
    assert!(matches!(
        conv.run(&[], 1, 0, 3, &mut [], 1),
        Err(KernelError::Shape(_))
    ));
    let unpadded = new(4, 4, 1, Conv2dGeometry::square(3, 1, 0), 144, &[1.0; 4]).unwrap();
    assert!(matches!(
        unpadded.run(&[0; 16], 1, 2, 2, &mut [], 1),
        Err(KernelError::Param(_))
    ));
    if let Some(missing) = Isa::ALL.into_iter().find(|i| !i.is_supported()) {
        let r = Conv2d::new(
            4,
            4,
            1,
            g,
            &[1; 144],
            &[1.0; 4],
            None,
            q,
            q,
            Activation::None,
            missing,
        );
        assert!(matches!(r, Err(KernelError::Unsupported(_))));
    }
    conv.run(&[0; 36], 1, 3, 3, &mut y, 1).unwrap();
}
