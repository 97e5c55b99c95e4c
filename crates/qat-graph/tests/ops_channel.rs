//! Per-channel scale / divide + shift on NCHW: fast ops vs candle broadcasts (values and all
//! gradients), finite differences of an f64 reference, non-contiguous and bad inputs.

mod ops_util;

use candle_core::{Result, Tensor};
use ops_util::{assert_close, check_fd, grads_of, randn};
use qat_graph::ops::{
    channel_affine_nchw, channel_affine_nchw_slow, channel_div_nchw, channel_div_nchw_slow,
};

type Op = fn(&Tensor, &Tensor, Option<&Tensor>) -> Result<Tensor>;

const OPS: [(&str, Op, Op, bool); 2] = [
    (
        "affine",
        channel_affine_nchw,
        channel_affine_nchw_slow,
        false,
    ),
    ("div", channel_div_nchw, channel_div_nchw_slow, true),
];

/// A scale / divisor away from zero (the divide's gradient grows as 1/s²).
fn scale(seed: u64, c: usize) -> Result<Tensor> {
    let r = randn(seed, &[c])?;
    (r.sign()? * (r.abs()? + 0.5)?)?.contiguous()
}

#[test]
fn ops_channel_match_candle_broadcasts() -> Result<()> {
    for (ci, &(n, c, h, w)) in [(1, 3, 5, 7), (3, 4, 9, 11), (2, 5, 1, 1), (4, 8, 32, 32)]
        .iter()
        .enumerate()
    {
        for (name, fast, slow, _) in OPS {
            for with_shift in [false, true] {
                let seed = 20 * ci as u64 + with_shift as u64;
                let mut ins = vec![randn(seed, &[n, c, h, w])?, scale(seed + 1, c)?];
                if with_shift {
                    ins.push(randn(seed + 2, &[c])?);
                }
                let f = grads_of(&ins, seed + 3, |t| fast(&t[0], &t[1], t.get(2)))?;
                let s = grads_of(&ins, seed + 3, |t| slow(&t[0], &t[1], t.get(2)))?;
                let what = format!("{name} case {ci} shift {with_shift}");
                // Same roundings as candle's separate multiply / divide and add: exact.
                assert_close(&f.0, &s.0, 0.0, &format!("{what}: output"));
                for (i, (a, b)) in f.1.iter().zip(&s.1).enumerate() {
                    assert_close(a, b, 1e-5, &format!("{what}: gradient {i}"));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn ops_channel_gradients_match_finite_differences() -> Result<()> {
    let (n, c, h, w) = (2, 3, 3, 4);
    for (name, fast, _, divide) in OPS {
        let ins = [randn(1, &[n, c, h, w])?, scale(2, c)?, randn(3, &[c])?];
        let (y, grads) = grads_of(&ins, 4, |t| fast(&t[0], &t[1], Some(&t[2])))?;
        check_fd(&ins, &grads, y.elem_count(), 4, 1e-5, |xs| {
            (0..n * c * h * w)
                .map(|i| {
                    let ch = i / (h * w) % c;
                    let v = xs[0][i];
                    let scaled = if divide { v / xs[1][ch] } else { v * xs[1][ch] };
                    scaled + xs[2][ch]
                })
                .collect()
        });
        let _ = name;
    }
    Ok(())
}

#[test]
fn ops_channel_non_contiguous_and_bad_inputs() -> Result<()> {
    let x = randn(1, &[2, 3, 5, 4])?;
    let s = scale(2, 3)?;
    let f = grads_of(&[x.clone(), s.clone()], 3, |t| {
        channel_div_nchw(&t[0].transpose(2, 3)?, &t[1], None)
    })?;
    let r = grads_of(&[x.clone(), s.clone()], 3, |t| {
        channel_div_nchw_slow(&t[0].transpose(2, 3)?.contiguous()?, &t[1], None)
    })?;
    assert_close(&f.0, &r.0, 0.0, "output");
    for (a, b) in f.1.iter().zip(&r.1) {
        assert_close(a, b, 1e-5, "gradient");
    }
    let err = |r: Result<Tensor>, needle: &str| {
        let e = r.expect_err("expected an error").to_string();
        assert!(e.contains(needle), "error {e:?} lacks {needle:?}");
    };
    err(
        channel_affine_nchw(&x, &scale(3, 4)?, None),
        "scale must have shape [3]",
    );
    err(
        channel_affine_nchw(&x, &s, Some(&scale(3, 2)?)),
        "shift must have shape [3]",
    );
    err(channel_div_nchw(&x.flatten_from(2)?, &s, None), "rank 4");
    err(
        channel_affine_nchw(&x.to_dtype(candle_core::DType::F64)?, &s, None),
        "f32",
    );
    Ok(())
}
