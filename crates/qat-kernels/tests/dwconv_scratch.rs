//! Depthwise kernels with caller scratch: the AVX-512 3×3 64-channel kernel and every other
//! variant against the scalar reference (tolerance 0) on ragged widths / channel counts, both
//! strides, paddings 0–2, zero points at the extremes, 1–3 threads; scratch reuse and a short
//! scratch as an error.

mod common;

use common::{pool, random_bytes, random_weights, ACTS};
use qat_core::QParams;
use qat_kernels::conv::Conv2dGeometry;
use qat_kernels::dwconv::DwConv;
use qat_kernels::{Activation, Isa, KernelError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

struct Layer {
    dw: DwConv,
    n: usize,
    h: usize,
    w: usize,
    x: Vec<u8>,
}

#[allow(clippy::too_many_arguments)]
fn layer(
    rng: &mut StdRng,
    c: usize,
    (h, w): (usize, usize),
    g: Conv2dGeometry,
    zp_in: i32,
    zp_out: i32,
    act: Activation,
    extreme: bool,
) -> Layer {
    let taps = g.taps();
    let weights = random_weights(rng, c * taps, extreme);
    let scales: Vec<f32> = (0..c).map(|_| rng.gen_range(0.001..0.05)).collect();
    let bias: Vec<i32> = (0..c).map(|_| rng.gen_range(-20000..20000)).collect();
    let input = QParams {
        scale: rng.gen_range(0.005..0.05),
        zero_point: zp_in,
    };
    let output = QParams {
        scale: rng.gen_range(0.01..0.2),
        zero_point: zp_out,
    };
    let dw = DwConv::new(c, g, &weights, &scales, &bias, input, output, act).unwrap();
    let n = rng.gen_range(1..=2);
    let x = random_bytes(rng, n * h * w * c, extreme);
    Layer { dw, n, h, w, x }
}

fn run(l: &Layer, isa: Isa, threads: usize, scratch: &mut Vec<u8>) -> Vec<u8> {
    let (oh, ow) = l.dw.output_hw(l.h, l.w).unwrap();
    let mut y = vec![0u8; l.n * oh * ow * l.dw.channels()];
    let need = l.dw.scratch_len(l.h, l.w, isa, threads).unwrap();
    if scratch.len() < need {
        scratch.resize(need, 0xA5);
    }
    l.dw.run_with_scratch(&l.x, l.n, l.h, l.w, &mut y, isa, threads, scratch)
        .unwrap();
    y
}

#[test]
fn every_variant_equals_scalar_with_caller_scratch() {
    let pool = pool(3);
    let mut rng = StdRng::seed_from_u64(31);
    let mut ran = std::collections::BTreeMap::<&str, usize>::new();
    // One scratch reused across every call: stale contents must not leak into results.
    let mut scratch = Vec::new();
    for (i, c) in [1usize, 16, 31, 32, 33, 48, 63, 64, 65, 72, 96, 130, 200]
        .into_iter()
        .enumerate()
    {
        for stride in [1, 2] {
            for pad in 0..=2 {
                let extreme = (i + stride + pad) % 3 == 0;
                let zps = [(0, 255), (255, 0), (128, 3)][(i + pad) % 3];
                let act = ACTS[(i + stride) % 3];
                let h = rng.gen_range(1..=9).max(3usize.saturating_sub(2 * pad));
                let w = rng.gen_range(1..=23).max(3usize.saturating_sub(2 * pad));
                let g = Conv2dGeometry::square(3, stride, pad);
                let l = layer(&mut rng, c, (h, w), g, zps.0, zps.1, act, extreme);
                let want = run(&l, Isa::Scalar, 1, &mut scratch);
                for isa in Isa::supported() {
                    for threads in [1, 2, 3] {
                        let got = pool.install(|| run(&l, isa, threads, &mut scratch));
                        let name = l.dw.kernel_name(isa, w).unwrap();
                        *ran.entry(name).or_default() += 1;
                        assert_eq!(
                            got, want,
                            "{isa} ({name}) c={c} {h}x{w} s={stride} p={pad} zp={zps:?} threads={threads}"
                        );
                    }
                }
            }
        }
    }
    println!("kernels run: {ran:?}");
    if Isa::Avx512Vnni.is_supported() {
        assert!(ran.contains_key("avx512vnni_dw3x3_c64"), "{ran:?}");
        assert!(ran.contains_key("avx512vnni_quad"), "{ran:?}");
    }
}

#[test]
fn wide_rows_and_asymmetric_strides_equal_scalar() {
    let mut rng = StdRng::seed_from_u64(32);
    let mut scratch = Vec::new();
    for (c, h, w, sh, sw, ph, pw) in [
        (96, 5, 57, 1, 1, 1, 1),
        (96, 6, 56, 2, 2, 1, 1),
        (144, 4, 29, 2, 1, 0, 2),
        (70, 7, 30, 1, 2, 2, 0),
        (64, 3, 112, 1, 1, 1, 1),
    ] {
        let mut g = Conv2dGeometry::square(3, sh, ph);
        g.stride_w = sw;
        g.pad_w = pw;
        let l = layer(&mut rng, c, (h, w), g, 77, 201, Activation::Relu6, false);
        let want = run(&l, Isa::Scalar, 1, &mut scratch);
        for isa in Isa::supported() {
            assert_eq!(run(&l, isa, 1, &mut scratch), want, "{isa} c={c} {h}x{w}");
            assert_eq!(
                run(&l, isa, 2, &mut scratch),
                want,
                "{isa} c={c} {h}x{w} 2 threads"
            );
        }
    }
}

#[test]
fn short_scratch_is_an_error() {
    let mut rng = StdRng::seed_from_u64(33);
    let l = layer(
        &mut rng,
        64,
        (8, 8),
        Conv2dGeometry::square(3, 1, 1),
        0,
        0,
        Activation::None,
        false,
    );
    for isa in Isa::supported() {
        let need = l.dw.scratch_len(8, 8, isa, 2).unwrap();
        let mut y = vec![0u8; l.n * 8 * 8 * 64];
        let mut short = vec![0u8; need - 1];
        let r =
            l.dw.run_with_scratch(&l.x, l.n, 8, 8, &mut y, isa, 2, &mut short);
        assert!(matches!(r, Err(KernelError::Length { .. })), "{isa}: {r:?}");
    }
    assert!(l.dw.scratch_len(1, 1, Isa::Scalar, 1).is_ok());
    let too_small = Conv2dGeometry::square(3, 1, 0);
    let l2 = layer(
        &mut rng,
        4,
        (3, 3),
        too_small,
        0,
        0,
        Activation::None,
        false,
    );
    assert!(l2.dw.scratch_len(2, 2, Isa::Scalar, 1).is_err());
    assert!(l2.dw.kernel_name(Isa::Scalar, 2).is_err());
}
