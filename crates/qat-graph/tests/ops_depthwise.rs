//! Depthwise conv2d: fast op vs candle's grouped conv (values and all gradients), finite
//! differences against an f64 direct convolution, bad inputs, non-contiguous inputs.

mod ops_util;

use candle_core::{DType, Device, Result, Tensor};
use ops_util::{assert_close, check_fd, expect_err, grads_of, randn};
use qat_graph::ops::{depthwise_conv2d, depthwise_conv2d_dilated, depthwise_conv2d_slow};

/// (n, c, h, w, k, stride, padding, dilation)
type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

const CASES: &[Case] = &[
    (1, 3, 7, 7, 3, 1, 1, 1),
    (3, 4, 9, 11, 3, 2, 1, 1),
    (2, 5, 8, 8, 3, 2, 0, 1),
    (1, 2, 13, 10, 5, 1, 2, 1),
    (3, 3, 11, 9, 5, 2, 2, 1),
    (2, 4, 6, 5, 3, 1, 0, 1),
    (1, 6, 5, 7, 3, 2, 2, 1),
    (2, 3, 10, 10, 3, 1, 2, 2),
    (1, 2, 9, 12, 3, 2, 1, 2),
    (2, 2, 4, 4, 1, 2, 0, 1),
    (1, 3, 3, 3, 3, 3, 0, 1),
    (1, 2, 1, 1, 3, 2, 1, 1),
    (3, 1, 12, 3, 2, 1, 1, 1),
];

#[test]
fn ops_depthwise_matches_candle_grouped_conv() -> Result<()> {
    for (ci, &(n, c, h, w, k, s, p, d)) in CASES.iter().enumerate() {
        for with_bias in [false, true] {
            let seed = 100 * ci as u64 + with_bias as u64;
            let mut inputs = vec![randn(seed, &[n, c, h, w])?, randn(seed + 1, &[c, 1, k, k])?];
            if with_bias {
                inputs.push(randn(seed + 2, &[c])?);
            }
            let run = |slow: bool| {
                grads_of(&inputs, seed + 3, |t| {
                    let b = t.get(2);
                    if slow {
                        depthwise_conv2d_slow(&t[0], &t[1], b, s, p, d)
                    } else {
                        depthwise_conv2d_dilated(&t[0], &t[1], b, s, p, d)
                    }
                })
            };
            let (yf, gf) = run(false)?;
            let (ys, gs) = run(true)?;
            let what = format!("case {ci} {:?} bias {with_bias}", CASES[ci]);
            assert_close(&yf, &ys, 1e-5, &format!("{what}: output"));
            for (i, (a, b)) in gf.iter().zip(&gs).enumerate() {
                assert_close(a, b, 1e-4, &format!("{what}: gradient of input {i}"));
            }
        }
    }
    Ok(())
}

/// Direct f64 depthwise conv with bias, the finite-difference reference.
#[allow(clippy::too_many_arguments)]
fn reference(
    xs: &[Vec<f64>],
    (n, c, h, w): (usize, usize, usize, usize),
    k: usize,
    s: usize,
    p: usize,
    d: usize,
) -> Vec<f64> {
    let ho = (h + 2 * p - d * (k - 1) - 1) / s + 1;
    let wo = (w + 2 * p - d * (k - 1) - 1) / s + 1;
    let mut y = vec![0f64; n * c * ho * wo];
    for ni in 0..n {
        for ch in 0..c {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = xs[2][ch];
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * s + ky * d) as isize - p as isize;
                            let ix = (ox * s + kx * d) as isize - p as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            let xv = xs[0][((ni * c + ch) * h + iy as usize) * w + ix as usize];
                            acc += xv * xs[1][(ch * k + ky) * k + kx];
                        }
                    }
                    y[((ni * c + ch) * ho + oy) * wo + ox] = acc;
                }
            }
        }
    }
    y
}

#[test]
fn ops_depthwise_gradients_match_finite_differences() -> Result<()> {
    for (ci, &(n, c, h, w, k, s, p, d)) in [
        (2, 3, 5, 6, 3, 2, 1, 1),
        (1, 2, 7, 6, 5, 1, 2, 1),
        (2, 2, 6, 7, 3, 1, 1, 2),
    ]
    .iter()
    .enumerate()
    {
        let seed = 7000 + 10 * ci as u64;
        let inputs = [
            randn(seed, &[n, c, h, w])?,
            randn(seed + 1, &[c, 1, k, k])?,
            randn(seed + 2, &[c])?,
        ];
        let (y, grads) = grads_of(&inputs, seed + 3, |t| {
            depthwise_conv2d_dilated(&t[0], &t[1], Some(&t[2]), s, p, d)
        })?;
        check_fd(&inputs, &grads, y.elem_count(), seed + 3, 1e-4, |xs| {
            reference(xs, (n, c, h, w), k, s, p, d)
        });
    }
    Ok(())
}

#[test]
fn ops_depthwise_large_parallel_path_matches() -> Result<()> {
    // Big enough (> 32768 output elements) to take the rayon path in every kernel.
    let (x, w) = (randn(1, &[2, 16, 41, 40])?, randn(2, &[16, 1, 3, 3])?);
    for s in [1, 2] {
        let (yf, gf) = grads_of(&[x.clone(), w.clone()], 3, |t| {
            depthwise_conv2d(&t[0], &t[1], None, s, 1)
        })?;
        let (ys, gs) = grads_of(&[x.clone(), w.clone()], 3, |t| {
            depthwise_conv2d_slow(&t[0], &t[1], None, s, 1, 1)
        })?;
        assert_close(&yf, &ys, 1e-5, "large: output");
        assert_close(&gf[0], &gs[0], 1e-4, "large: input gradient");
        assert_close(&gf[1], &gs[1], 1e-4, "large: weight gradient");
    }
    Ok(())
}

#[test]
fn ops_depthwise_non_contiguous_inputs() -> Result<()> {
    // x stored as NCWH and viewed as NCHW; w stored transposed as well.
    let xt = randn(11, &[2, 3, 7, 6])?;
    let wt = randn(12, &[3, 1, 3, 3])?;
    let (yf, gf) = grads_of(&[xt.clone(), wt.clone()], 13, |t| {
        depthwise_conv2d(&t[0].transpose(2, 3)?, &t[1].transpose(2, 3)?, None, 2, 1)
    })?;
    let (ys, gs) = grads_of(&[xt, wt], 13, |t| {
        let x = t[0].transpose(2, 3)?.contiguous()?;
        let w = t[1].transpose(2, 3)?.contiguous()?;
        depthwise_conv2d_slow(&x, &w, None, 2, 1, 1)
    })?;
    assert_close(&yf, &ys, 1e-5, "non-contiguous: output");
    assert_close(&gf[0], &gs[0], 1e-4, "non-contiguous: input gradient");
    assert_close(&gf[1], &gs[1], 1e-4, "non-contiguous: weight gradient");
    Ok(())
}

#[test]
fn ops_depthwise_bad_inputs_are_errors() -> Result<()> {
    let x = randn(1, &[2, 3, 5, 5])?;
    let w = randn(2, &[3, 1, 3, 3])?;
    expect_err(
        depthwise_conv2d(&x.flatten_from(2)?, &w, None, 1, 1),
        "rank 4",
    );
    expect_err(depthwise_conv2d(&x, &w.squeeze(1)?, None, 1, 1), "rank 4");
    expect_err(
        depthwise_conv2d(&x, &randn(3, &[4, 1, 3, 3])?, None, 1, 1),
        "weight must be [C, 1",
    );
    expect_err(
        depthwise_conv2d(&x, &randn(3, &[3, 2, 3, 3])?, None, 1, 1),
        "weight must be [C, 1",
    );
    expect_err(
        depthwise_conv2d(&x, &randn(3, &[3, 1, 9, 9])?, None, 1, 1),
        "larger than the padded",
    );
    expect_err(depthwise_conv2d(&x, &w, None, 0, 1), "stride");
    expect_err(
        depthwise_conv2d_dilated(&x, &w, None, 1, 0, 3),
        "larger than the padded",
    );
    expect_err(
        depthwise_conv2d(&x, &w, Some(&randn(4, &[4])?), 1, 1),
        "bias must have shape",
    );
    expect_err(
        depthwise_conv2d(&x.to_dtype(DType::F64)?, &w, None, 1, 1),
        "must be f32",
    );
    expect_err(
        depthwise_conv2d(&x, &w.to_dtype(DType::F16)?, None, 1, 1),
        "must be f32",
    );
    // Zero-sized batch is fine and gives an empty output.
    let empty = Tensor::zeros((0, 3, 5, 5), DType::F32, &Device::Cpu)?;
    assert_eq!(
        depthwise_conv2d(&empty, &w, None, 1, 1)?.dims(),
        &[0, 3, 5, 5]
    );
    Ok(())
}
