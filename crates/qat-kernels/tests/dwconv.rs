//! Depthwise convolution: every SIMD path against the scalar reference (tolerance 0), the
//! scalar reference against a naive i64 / f64 computation, thread-count invariance, bad inputs.

use qat_core::QParams;
use qat_kernels::conv::Conv2dGeometry;
use qat_kernels::dwconv::DwConv;
use qat_kernels::{Activation, Isa, KernelError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

struct Case {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    g: Conv2dGeometry,
    weights: Vec<i8>,
    w_scale: Vec<f32>,
    bias: Vec<i32>,
    input_q: QParams,
    output_q: QParams,
    act: Activation,
    x: Vec<u8>,
}

impl Case {
    fn dw(&self) -> DwConv {
        DwConv::new(
            self.c,
            self.g,
            &self.weights,
            &self.w_scale,
            &self.bias,
            self.input_q,
            self.output_q,
            self.act,
        )
        .unwrap()
    }

    fn run(&self, isa: Isa, threads: usize) -> Vec<u8> {
        let dw = self.dw();
        let (oh, ow) = dw.output_hw(self.h, self.w).unwrap();
        let mut y = vec![0u8; self.n * oh * ow * self.c];
        dw.run(&self.x, self.n, self.h, self.w, &mut y, isa, threads)
            .unwrap();
        y
    }

    fn describe(&self) -> String {
        format!(
            "n={} h={} w={} c={} k={}x{} s={} p={} d={} zp_in={} zp_out={} act={:?}",
            self.n,
            self.h,
            self.w,
            self.c,
            self.g.kernel_h,
            self.g.kernel_w,
            self.g.stride_h,
            self.g.pad_h,
            self.g.dilation_h,
            self.input_q.zero_point,
            self.output_q.zero_point,
            self.act
        )
    }
}

/// Value mode for inputs / weights: random, or pinned at an extreme.
#[derive(Clone, Copy)]
enum Fill {
    Random,
    Extreme,
}

fn random_case(rng: &mut StdRng, fill: Fill) -> Case {
    let k = if rng.gen_bool(0.7) { 3 } else { 5 };
    let stride = rng.gen_range(1..=2);
    let pad = rng.gen_range(0..=k / 2 + 1);
    let dil = if rng.gen_bool(0.15) { 2 } else { 1 };
    let mut g = Conv2dGeometry::square(k, stride, pad);
    g.dilation_h = dil;
    g.dilation_w = dil;
    let span = dil * (k - 1) + 1;
    let min_hw = span.saturating_sub(2 * pad).max(1);
    let h = rng.gen_range(min_hw..=min_hw + 9);
    // Wide rows sometimes: the AVX-512 kernel switches variants by output width.
    let w = if rng.gen_bool(0.3) {
        rng.gen_range(27..=60)
    } else {
        rng.gen_range(min_hw..=min_hw + 9)
    };
    // 32, 65, 96, 144, 160: a last 64-channel block of at most 32 (folded in the 3×3 kernel).
    let c = [1, 3, 7, 8, 15, 16, 17, 24, 31, 32, 33, 48, 65, 96, 144, 160][rng.gen_range(0..16)];
    let n = rng.gen_range(1..=2);
    let zp = |rng: &mut StdRng| [0, 255, rng.gen_range(0..=255)][rng.gen_range(0..3)];
    let input_q = QParams {
        scale: rng.gen_range(0.005..0.05),
        zero_point: zp(rng),
    };
    let output_q = QParams {
        scale: rng.gen_range(0.01..0.2),
        zero_point: zp(rng),
    };
    let taps = k * k;
    let weights: Vec<i8> = (0..c * taps)
        .map(|_| match fill {
            Fill::Random => rng.gen(),
            Fill::Extreme => [-128i8, 127, -127][rng.gen_range(0..3)],
        })
        .collect();
    let x: Vec<u8> = (0..n * h * w * c)
        .map(|_| match fill {
            Fill::Random => rng.gen(),
            Fill::Extreme => [0u8, 255][rng.gen_range(0..2)],
        })
        .collect();
    let act = [Activation::None, Activation::Relu, Activation::Relu6][rng.gen_range(0..3)];
    Case {
        n,
        h,
        w,
        c,
        g,
        weights,
        w_scale: (0..c).map(|_| rng.gen_range(0.001..0.05)).collect(),
        bias: (0..c).map(|_| rng.gen_range(-20000..20000)).collect(),
        input_q,
        output_q,
        act,
        x,
    }
}

/// The naive definition: i64 accumulation, f64 requantization.
fn naive(case: &Case) -> (Vec<u8>, Vec<f64>) {
    let g = &case.g;
    let (oh, ow) = g.output_hw(case.h, case.w).unwrap();
    let (qmin, qmax) = case.act.bounds(case.output_q);
    let mut out = Vec::new();
    let mut exact = Vec::new();
    for b in 0..case.n {
        for oy in 0..oh {
            for ox in 0..ow {
                for c in 0..case.c {
                    let mut acc = case.bias[c] as i64;
                    for ky in 0..g.kernel_h {
                        for kx in 0..g.kernel_w {
                            let iy = (oy * g.stride_h + ky * g.dilation_h) as i64 - g.pad_h as i64;
                            let ix = (ox * g.stride_w + kx * g.dilation_w) as i64 - g.pad_w as i64;
                            let x =
                                if iy < 0 || ix < 0 || iy >= case.h as i64 || ix >= case.w as i64 {
                                    case.input_q.zero_point as i64
                                } else {
                                    case.x[((b * case.h + iy as usize) * case.w + ix as usize)
                                        * case.c
                                        + c] as i64
                                };
                            let wt = case.weights[(c * g.kernel_h + ky) * g.kernel_w + kx] as i64;
                            acc += wt * (x - case.input_q.zero_point as i64);
                        }
                    }
                    let real = acc as f64 * case.input_q.scale as f64 * case.w_scale[c] as f64
                        / case.output_q.scale as f64;
                    exact.push(real);
                    let q = (real.round_ties_even() as i64 + case.output_q.zero_point as i64)
                        .clamp(qmin as i64, qmax as i64);
                    out.push(q as u8);
                }
            }
        }
    }
    (out, exact)
}

#[test]
fn scalar_reference_matches_naive_definition() {
    let mut rng = StdRng::seed_from_u64(1);
    let (mut total, mut near_ties) = (0usize, 0usize);
    for i in 0..150 {
        let case = random_case(
            &mut rng,
            if i % 3 == 0 {
                Fill::Extreme
            } else {
                Fill::Random
            },
        );
        let got = case.run(Isa::Scalar, 1);
        let (want, exact) = naive(&case);
        assert_eq!(got.len(), want.len(), "{}", case.describe());
        for (j, ((&g, &w), &e)) in got.iter().zip(&want).zip(&exact).enumerate() {
            total += 1;
            // The f32 multiplier and product may round a value within 1e-3 of a .5 tie the
            // other way; anywhere else the f32 formula must equal the exact one.
            let frac = e - e.floor();
            if (frac - 0.5).abs() < 1e-3 {
                near_ties += 1;
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
    println!("scalar vs naive: {total} outputs, {near_ties} near a tie (±1 allowed there)");
    assert!(near_ties * 100 < total);
}

fn check_isas(cases: &[Case]) {
    for isa in Isa::ALL {
        if !isa.is_supported() {
            println!("SKIPPED {isa}: not supported on this CPU");
            continue;
        }
        let mut ran = std::collections::BTreeSet::new();
        for case in cases {
            let want = case.run(Isa::Scalar, 1);
            let got = case.run(isa, 1);
            ran.insert(case.dw().kernel_isa(isa).name());
            if got != want {
                let first = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
                panic!(
                    "{isa}: {} differs from scalar at {first}: {} vs {}",
                    case.describe(),
                    got[first],
                    want[first]
                );
            }
        }
        println!(
            "{isa}: {} cases equal to scalar (kernels {ran:?})",
            cases.len()
        );
    }
}

#[test]
fn every_isa_equals_scalar_on_random_shapes() {
    let mut rng = StdRng::seed_from_u64(2);
    let cases: Vec<Case> = (0..120)
        .map(|_| random_case(&mut rng, Fill::Random))
        .collect();
    check_isas(&cases);
}

#[test]
fn every_isa_equals_scalar_on_extreme_values() {
    let mut rng = StdRng::seed_from_u64(3);
    let cases: Vec<Case> = (0..80)
        .map(|_| random_case(&mut rng, Fill::Extreme))
        .collect();
    check_isas(&cases);
}

/// Requantization multipliers so large that `f32(acc) · m` leaves the i32 range in both
/// directions (output scale 1e-9): every output must still saturate to exactly `qmin` /
/// `qmax`, on every kernel (the AVX-512 ones clamp the low side after saturating packs).
#[test]
fn every_isa_equals_scalar_on_huge_multipliers() {
    let mut rng = StdRng::seed_from_u64(5);
    let cases: Vec<Case> = (0..60)
        .map(|i| {
            let fill = if i % 2 == 0 {
                Fill::Random
            } else {
                Fill::Extreme
            };
            let mut case = random_case(&mut rng, fill);
            case.output_q.scale = 1e-9;
            case
        })
        .collect();
    check_isas(&cases);
}

/// ReLU6 with `qmax` well below 255 and inputs large enough that many outputs clip at it,
/// with multipliers (0.05 · 0.05 / 0.05) far too small for any product to reach 2³¹: the
/// AVX-512 3×3 kernel then clamps the high side after converting (a byte `min`), which must
/// give the same bytes as the scalar float clamp.
#[test]
fn every_isa_equals_scalar_when_outputs_clip_high() {
    let mut rng = StdRng::seed_from_u64(6);
    let mut clipped = 0usize;
    let cases: Vec<Case> = (0..60)
        .map(|_| {
            let mut case = random_case(&mut rng, Fill::Random);
            case.input_q.scale = 0.05;
            case.w_scale.iter_mut().for_each(|s| *s = 0.05);
            case.output_q = QParams {
                scale: 0.05,
                zero_point: rng.gen_range(0..100),
            };
            case.act = Activation::Relu6;
            let (_, qmax) = case.act.bounds(case.output_q);
            assert!(qmax < 255);
            let y = case.run(Isa::Scalar, 1);
            clipped += y.iter().filter(|&&v| v as i32 == qmax).count();
            case
        })
        .collect();
    assert!(
        clipped > 1000,
        "only {clipped} outputs at qmax: the test needs clipping"
    );
    check_isas(&cases);
}

/// Clamps at the edges of the byte range: output zero points 0, 1, 134 and 135 with ReLU6 at
/// scale 0.05 give `qmin` 0 / 1 / 134 / 135 and `qmax` 120 / 121 / 254 / 255, with outputs
/// clipping at both ends. The AVX-512 3×3 kernel skips the byte `max` when `qmin` is 0, the
/// byte `min` when `qmax` is 255 and the zero-point add when it is 0: one off-by-one in those
/// conditions changes bytes here.
#[test]
fn every_isa_equals_scalar_at_clamp_boundaries() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut at = [0usize; 2];
    let mut cases = Vec::new();
    for zp in [0, 1, 134, 135] {
        for _ in 0..12 {
            let mut case = random_case(&mut rng, Fill::Random);
            case.input_q.scale = 0.05;
            case.w_scale.iter_mut().for_each(|s| *s = 0.05);
            case.output_q = QParams {
                scale: 0.05,
                zero_point: zp,
            };
            case.act = Activation::Relu6;
            let (qmin, qmax) = case.act.bounds(case.output_q);
            assert_eq!((qmin, qmax), (zp, zp + 120));
            let y = case.run(Isa::Scalar, 1);
            at[0] += y.iter().filter(|&&v| v as i32 == qmin).count();
            at[1] += y.iter().filter(|&&v| v as i32 == qmax).count();
            cases.push(case);
        }
    }
    assert!(
        at[0] > 1000 && at[1] > 1000,
        "clipped outputs {at:?}: too few"
    );
    check_isas(&cases);
}

#[test]
fn every_isa_equals_scalar_on_tiny_and_odd_inputs() {
    let mut rng = StdRng::seed_from_u64(4);
    let mut cases = Vec::new();
    for (h, w, k, s, p) in [
        (1, 1, 3, 1, 1),
        (2, 2, 3, 1, 1),
        (2, 2, 3, 2, 1),
        (1, 1, 5, 2, 2),
        (3, 3, 5, 1, 2),
        (7, 9, 3, 2, 1),
        (9, 7, 5, 2, 2),
        (5, 5, 3, 2, 0),
        (13, 11, 3, 2, 1),
        (3, 14, 3, 1, 1),
        (3, 13, 3, 1, 1),
        (2, 55, 3, 2, 1),
        (3, 56, 3, 2, 0),
        (3, 30, 5, 2, 2),
        (4, 33, 5, 1, 2),
        // Padding wider than the kernel's reach: whole border quads of zero points.
        (5, 9, 3, 1, 3),
        (6, 11, 3, 2, 3),
        (4, 30, 3, 1, 4),
    ] {
        for c in [1, 3, 15, 17, 32, 33, 96] {
            let mut case = random_case(&mut rng, Fill::Random);
            case.h = h;
            case.w = w;
            case.c = c;
            case.g = Conv2dGeometry::square(k, s, p);
            case.weights = (0..c * k * k).map(|_| rng.gen()).collect();
            case.w_scale = (0..c).map(|_| rng.gen_range(0.001..0.05)).collect();
            case.bias = (0..c).map(|_| rng.gen_range(-20000..20000)).collect();
            case.x = (0..case.n * h * w * c).map(|_| rng.gen()).collect();
            cases.push(case);
        }
    }
    check_isas(&cases);
}

/// Channel counts whose last 64-channel block holds 33–48 channels, which the AVX-512 3×3
/// kernel splits into a 2× and a 4× folded block (and 49, which it does not split).
#[test]
fn every_isa_equals_scalar_on_split_tail_blocks() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut cases = Vec::new();
    for c in [33, 40, 47, 48, 49, 112, 176] {
        for (h, w, s, p) in [(5, 28, 1, 1), (4, 29, 2, 1), (3, 9, 1, 0), (6, 15, 2, 2)] {
            let mut case = random_case(&mut rng, Fill::Random);
            let k = 3;
            case.h = h;
            case.w = w;
            case.c = c;
            case.g = Conv2dGeometry::square(k, s, p);
            case.weights = (0..c * k * k).map(|_| rng.gen()).collect();
            case.w_scale = (0..c).map(|_| rng.gen_range(0.001..0.05)).collect();
            case.bias = (0..c).map(|_| rng.gen_range(-20000..20000)).collect();
            case.x = (0..case.n * h * w * c).map(|_| rng.gen()).collect();
            cases.push(case);
        }
    }
    check_isas(&cases);
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    for _ in 0..20 {
        let mut case = random_case(&mut rng, Fill::Random);
        case.n = 2;
        case.h += 8;
        case.x = (0..case.n * case.h * case.w * case.c)
            .map(|_| rng.gen())
            .collect();
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
    let mk = |c: usize, g: Conv2dGeometry, wlen: usize, s: &[f32], b: &[i32], qi: QParams| {
        DwConv::new(c, g, &vec![1i8; wlen], s, b, qi, q, Activation::None)
    };
    assert!(matches!(
        mk(0, g, 0, &[], &[], q),
        Err(KernelError::Shape(_))
    ));
    assert!(matches!(
        mk(2, g, 17, &[1.0; 2], &[0; 2], q),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        mk(2, g, 18, &[1.0], &[0; 2], q),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        mk(2, g, 18, &[1.0; 2], &[0; 3], q),
        Err(KernelError::Length { .. })
    ));
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            mk(2, g, 18, &[1.0, bad], &[0; 2], q),
            Err(KernelError::Scale { .. })
        ));
        let qi = QParams {
            scale: bad,
            zero_point: 0,
        };
        assert!(matches!(
            mk(2, g, 18, &[1.0; 2], &[0; 2], qi),
            Err(KernelError::Scale { .. })
        ));
    }
    let qz = QParams {
        scale: 0.1,
        zero_point: 256,
    };
    assert!(matches!(
        mk(2, g, 18, &[1.0; 2], &[0; 2], qz),
        Err(KernelError::ZeroPoint { .. })
    ));
    assert!(matches!(
        mk(
            2,
            Conv2dGeometry::square(3, 0, 1),
            18,
            &[1.0; 2],
            &[0; 2],
            q
        ),
        Err(KernelError::Param(_))
    ));
    assert!(matches!(
        mk(2, Conv2dGeometry::square(0, 1, 1), 0, &[1.0; 2], &[0; 2], q),
        Err(KernelError::Param(_))
    ));

    let dw = mk(2, g, 18, &[1.0; 2], &[0; 2], q).unwrap();
    let mut y = vec![0u8; 2 * 4 * 4];
    assert!(matches!(
        dw.run(&[0u8; 31], 1, 4, 4, &mut y, Isa::Scalar, 1),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        dw.run(&[0u8; 32], 1, 4, 4, &mut y[1..], Isa::Scalar, 1),
        Err(KernelError::Length { .. })
    ));
    assert!(matches!(
        dw.run(&[], 0, 4, 4, &mut [], Isa::Scalar, 1),
        Err(KernelError::Shape(_))
    ));
    assert!(matches!(
        dw.run(&[], 1, 0, 4, &mut [], Isa::Scalar, 1),
        Err(KernelError::Shape(_))
    ));
    let valid_no_pad = mk(
        2,
        Conv2dGeometry::square(3, 1, 0),
        18,
        &[1.0; 2],
        &[0; 2],
        q,
    )
    .unwrap();
    assert!(matches!(
        valid_no_pad.run(&[0u8; 8], 1, 2, 2, &mut [], Isa::Scalar, 1),
        Err(KernelError::Param(_))
    ));
    if let Some(missing) = Isa::ALL.into_iter().find(|i| !i.is_supported()) {
        assert!(matches!(
            dw.run(&[0u8; 32], 1, 4, 4, &mut y, missing, 1),
            Err(KernelError::Unsupported(_))
        ));
    }
    dw.run(&[0u8; 32], 1, 4, 4, &mut y, Isa::Scalar, 1).unwrap();
}
