//! 1×1 conv as GEMMs: values and gradients vs candle's conv2d, finite differences against an
//! f64 reference, stride 2 on odd sizes, non-contiguous and bad inputs.

mod ops_util;

use candle_core::{DType, Result, Tensor};
use ops_util::{assert_close, check_fd, grads_of, randn};
use qat_graph::ops::{conv1x1, conv1x1_slow};

#[test]
fn ops_pointwise_matches_candle_conv2d() -> Result<()> {
    // (n, c, o, h, w, stride)
    for (ci, &(n, c, o, h, w, s)) in [
        (1, 3, 5, 7, 7, 1),
        (3, 8, 4, 9, 11, 1),
        (2, 5, 6, 9, 7, 2),
        (1, 16, 24, 6, 6, 2),
        (3, 7, 3, 5, 8, 3),
        (2, 24, 20, 14, 14, 1), // > 32768 elements: threaded GEMM when more threads exist
        (5, 40, 48, 7, 7, 1),   // planes <= 64 pixels: one GEMM over the batch
    ]
    .iter()
    .enumerate()
    {
        for with_bias in [false, true] {
            let seed = 50 * ci as u64 + with_bias as u64;
            let mut inputs = vec![randn(seed, &[n, c, h, w])?, randn(seed + 1, &[o, c, 1, 1])?];
            if with_bias {
                inputs.push(randn(seed + 2, &[o])?);
            }
            let run = |slow: bool| {
                grads_of(&inputs, seed + 3, |t| {
                    if slow {
                        conv1x1_slow(&t[0], &t[1], t.get(2), s)
                    } else {
                        conv1x1(&t[0], &t[1], t.get(2), s)
                    }
                })
            };
            let ((yf, gf), (ys, gs)) = (run(false)?, run(true)?);
            let what = format!("case {ci} bias {with_bias}");
            assert_close(&yf, &ys, 1e-5, &format!("{what}: output"));
            for (i, (a, b)) in gf.iter().zip(&gs).enumerate() {
                assert_close(a, b, 1e-4, &format!("{what}: gradient {i}"));
            }
        }
    }
    Ok(())
}

#[test]
fn ops_pointwise_gradients_match_finite_differences() -> Result<()> {
    let (n, c, o, h, w, s) = (2, 3, 4, 5, 3, 2);
    let inputs = [
        randn(1, &[n, c, h, w])?,
        randn(2, &[o, c, 1, 1])?,
        randn(3, &[o])?,
    ];
    let (y, grads) = grads_of(&inputs, 4, |t| conv1x1(&t[0], &t[1], Some(&t[2]), s))?;
    let (ho, wo) = (h.div_ceil(s), w.div_ceil(s));
    check_fd(&inputs, &grads, y.elem_count(), 4, 1e-4, |xs| {
        let mut out = vec![0f64; n * o * ho * wo];
        for ni in 0..n {
            for oi in 0..o {
                for y in 0..ho {
                    for x in 0..wo {
                        let mut acc = xs[2][oi];
                        for ci in 0..c {
                            acc +=
                                xs[1][oi * c + ci] * xs[0][((ni * c + ci) * h + y * s) * w + x * s];
                        }
                        out[((ni * o + oi) * ho + y) * wo + x] = acc;
                    }
                }
            }
        }
        out
    });
    Ok(())
}

#[test]
fn ops_pointwise_non_contiguous_inputs() -> Result<()> {
    let xt = randn(1, &[2, 4, 6, 5])?; // viewed as [2, 4, 5, 6]
    let w = randn(2, &[3, 4, 1, 1])?;
    let (yf, gf) = grads_of(&[xt.clone(), w.clone()], 3, |t| {
        conv1x1(&t[0].transpose(2, 3)?, &t[1], None, 1)
    })?;
    let (ys, gs) = grads_of(&[xt, w], 3, |t| {
        conv1x1_slow(&t[0].transpose(2, 3)?.contiguous()?, &t[1], None, 1)
    })?;
    assert_close(&yf, &ys, 1e-5, "output");
    assert_close(&gf[0], &gs[0], 1e-4, "input gradient");
    assert_close(&gf[1], &gs[1], 1e-4, "weight gradient");
    Ok(())
}

#[test]
fn ops_pointwise_bad_inputs_are_errors() -> Result<()> {
    let x = randn(1, &[2, 4, 5, 5])?;
    let w = randn(2, &[3, 4, 1, 1])?;
    let err = |r: Result<Tensor>, needle: &str| {
        let e = r.expect_err(needle).to_string();
        assert!(e.contains(needle), "{e:?} should mention {needle:?}");
    };
    err(conv1x1(&x.flatten_from(2)?, &w, None, 1), "rank 4");
    err(
        conv1x1(&x, &randn(2, &[3, 5, 1, 1])?, None, 1),
        "input channels",
    );
    err(
        conv1x1(&x, &randn(2, &[3, 4, 3, 3])?, None, 1),
        "[O, C, 1, 1]",
    );
    err(conv1x1(&x, &w, None, 0), "stride");
    err(
        conv1x1(&x, &w, Some(&randn(3, &[4])?), 1),
        "bias must have shape",
    );
    err(
        conv1x1(&x.to_dtype(DType::F64)?, &w, None, 1),
        "must be f32",
    );
    Ok(())
}
