//! The direct few-channel convolution ([`StemConv`]) against the scalar convolution reference
//! (`Conv2d::run_reference`, tolerance 0): shapes hitting every tail (output widths not a
//! multiple of 4, output channels not a multiple of 16, padding on all sides, strides 1 and 2,
//! 1–5 input channels), zero points at the extremes, outputs clipping at both ends, huge
//! multipliers, thread-count invariance, shapes only the scalar path takes, bad inputs.

mod common;

use common::{first_difference, ConvCase as Case, Draw};
use qat_core::QParams;
use qat_kernels::conv::{Conv2dGeometry, StemConv};
use qat_kernels::{Activation, KernelError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The case's convolution as a [`StemConv`].
fn stem(case: &Case) -> StemConv {
    StemConv::new(
        case.ci,
        case.co,
        case.g,
        &case.weights,
        &case.w_scale,
        case.bias.as_deref(),
        case.input_q,
        case.output_q,
        case.act,
    )
    .unwrap()
}

/// [`StemConv::run_with_scratch`] on `threads` threads.
fn run(case: &Case, threads: usize) -> Vec<u8> {
    let s = stem(case);
    let mut y = vec![0u8; case.out_len()];
    let mut scratch = vec![0u8; s.scratch_len(case.h, case.w, threads).unwrap()];
    s.run_with_scratch(
        &case.x,
        case.n,
        case.h,
        case.w,
        &mut y,
        threads,
        &mut scratch,
    )
    .unwrap();
    y
}

/// A random stem case: images from the smallest the geometry takes to 8–9 pixels more (30%
/// of rows 25–40 pixels wide: several 4-pixel blocks and a tail).
fn random_case(rng: &mut StdRng, ci: usize, co: usize, g: Conv2dGeometry) -> Case {
    let min_h = g.kernel_h.saturating_sub(2 * g.pad_h).max(1);
    let min_w = g.kernel_w.saturating_sub(2 * g.pad_w).max(1);
    let h = rng.gen_range(min_h..=min_h + 8);
    let w = if rng.gen_bool(0.3) {
        rng.gen_range(25..=40)
    } else {
        rng.gen_range(min_w..=min_w + 9)
    };
    let draw = Draw {
        weight_scale: 0.001..0.05,
        output_scale: 0.01..0.2,
        bias: 20000,
        bias_p: 0.8,
        extreme: false,
    };
    Case::random(rng, (ci, co, 1), g, (h, w), &draw)
}

fn check(cases: &[Case]) {
    for case in cases {
        let want = case.reference();
        for threads in [1, 3] {
            let got = run(case, threads);
            if let Some(i) = first_difference(&got, &want) {
                panic!(
                    "{} ({}, {threads} threads) differs from the reference at {i}: {} vs {}",
                    case.describe(),
                    stem(case).kernel_name(),
                    got[i],
                    want[i]
                );
            }
        }
    }
}

/// The shapes the SIMD kernel takes: 3×3 over 1–5 channels (and 5×3 / 3×5 over few).
fn simd_geometries(rng: &mut StdRng) -> Vec<(usize, Conv2dGeometry)> {
    let mut out = Vec::new();
    for ci in 1..=5 {
        for stride in [1, 2] {
            let mut g = Conv2dGeometry::square(3, stride, rng.gen_range(0..=3));
            g.pad_w = rng.gen_range(0..=3);
            out.push((ci, g));
        }
    }
    let mut g = Conv2dGeometry::square(5, 1, 2);
    g.kernel_w = 3;
    out.push((2, g));
    let mut g = Conv2dGeometry::square(3, 2, 1);
    g.kernel_w = 5;
    g.stride_h = 1;
    out.push((3, g));
    out
}

#[test]
fn equals_reference_on_stem_shapes() {
    let mut rng = StdRng::seed_from_u64(11);
    let mut cases = Vec::new();
    for (ci, g) in simd_geometries(&mut rng) {
        for co in [1, 8, 16, 17, 32, 40] {
            cases.push(random_case(&mut rng, ci, co, g));
        }
    }
    let fast = cases
        .iter()
        .filter(|c| StemConv::fast_path(c.ci, &c.g))
        .count();
    if fast == 0 {
        println!("SKIPPED the SIMD kernel: this CPU lacks AVX-512 VNNI + VBMI (scalar path only)");
    } else {
        assert_eq!(fast, cases.len(), "every shape here fits the SIMD kernel");
        assert_eq!(stem(&cases[0]).kernel_name(), "avx512vbmi_stem");
    }
    check(&cases);
}

/// Zero points and activations that put the clamps at the edges of the byte range (qmin 0 /
/// 1 / 134 / 135, qmax 120 / 121 / 254 / 255) with outputs clipping at both ends, and output
/// scales so small that products leave the i32 range (the float upper clamp).
#[test]
fn equals_reference_at_clamp_edges_and_huge_multipliers() {
    let mut rng = StdRng::seed_from_u64(12);
    let mut cases = Vec::new();
    let mut at = [0usize; 2];
    for zp in [0, 1, 134, 135] {
        for (ci, g) in simd_geometries(&mut rng).into_iter().step_by(3) {
            let mut case = random_case(&mut rng, ci, 16 + 16 * (zp as usize % 2), g);
            case.input_q.scale = 0.05;
            case.w_scale.iter_mut().for_each(|s| *s = 0.05);
            case.output_q = QParams {
                scale: 0.05,
                zero_point: zp,
            };
            case.act = Activation::Relu6;
            let y = case.reference();
            at[0] += y.iter().filter(|&&v| v as i32 == zp).count();
            at[1] += y.iter().filter(|&&v| v as i32 == zp + 120).count();
            cases.push(case.clone());
            case.output_q.scale = 1e-9;
            case.act = Activation::None;
            cases.push(case);
        }
    }
    assert!(
        at[0] > 200 && at[1] > 200,
        "clipped outputs {at:?}: too few"
    );
    check(&cases);
}

/// Shapes outside the SIMD kernel (wide kernel rows, dilation-free but 8 input channels) run
/// the scalar loop, still equal to the reference.
#[test]
fn scalar_path_equals_reference() {
    let mut rng = StdRng::seed_from_u64(13);
    let cases: Vec<Case> = [(8, 3, 1), (6, 3, 2), (2, 9, 1)]
        .into_iter()
        .map(|(ci, k, s)| {
            let g = Conv2dGeometry::square(k, s, 1);
            assert!(!StemConv::fast_path(ci, &g));
            random_case(&mut rng, ci, 17, g)
        })
        .collect();
    assert_eq!(stem(&cases[0]).kernel_name(), "scalar_stem");
    check(&cases);
}

#[test]
fn bad_inputs_are_errors() {
    let q = QParams {
        scale: 0.1,
        zero_point: 3,
    };
    let g = Conv2dGeometry::square(3, 1, 1);
    let new = |ci, co, g, w: &[i8], s: &[f32], b: Option<&[i32]>, qi, qo| {
        StemConv::new(ci, co, g, w, s, b, qi, qo, Activation::None)
    };
    let w = vec![1i8; 2 * 9];
    assert!(matches!(
        new(0, 2, g, &w, &[0.1; 2], None, q, q),
        Err(KernelError::Shape(_))
    ));
    assert!(matches!(
        new(1, 2, g, &w[..17], &[0.1; 2], None, q, q),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        new(1, 2, g, &w, &[0.1], None, q, q),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        new(1, 2, g, &w, &[0.1; 2], Some(&[1]), q, q),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        new(1, 2, g, &w, &[0.1, f32::NAN], None, q, q),
        Err(KernelError::Scale { .. })
    ));
    let bad_zp = QParams {
        scale: 0.1,
        zero_point: 256,
    };
    assert!(matches!(
        new(1, 2, g, &w, &[0.1; 2], None, bad_zp, q),
        Err(KernelError::ZeroPoint { .. })
    ));
    let mut dil = g;
    dil.dilation_w = 2;
    assert!(matches!(
        new(1, 2, dil, &w, &[0.1; 2], None, q, q),
        Err(KernelError::Param(_))
    ));
    let s = new(1, 2, g, &w, &[0.1; 2], None, q, q).unwrap();
    let x = vec![0u8; 4 * 4];
    let mut y = vec![0u8; 4 * 4 * 2];
    let mut scratch = vec![0u8; s.scratch_len(4, 4, 1).unwrap()];
    assert!(s
        .run_with_scratch(&x, 1, 4, 4, &mut y, 1, &mut scratch)
        .is_ok());
    assert!(matches!(
        s.run_with_scratch(&x[..15], 1, 4, 4, &mut y, 1, &mut scratch),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        s.run_with_scratch(&x, 1, 4, 4, &mut y[..31], 1, &mut scratch),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        s.run_with_scratch(&x, 0, 4, 4, &mut y, 1, &mut scratch),
        Err(KernelError::Shape(_))
    ));
    let short = scratch.len() - 1;
    assert!(matches!(
        s.run_with_scratch(&x, 1, 4, 4, &mut y, 1, &mut scratch[..short]),
        Err(KernelError::Length { .. })
    ));
}
