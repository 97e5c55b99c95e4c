//! The f32 ops of float islands: plain loops with a fixed summation order, so the result does
//! not depend on the number of threads (rows are split, never a sum).

use rayon::prelude::*;

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 64;

/// `out[r][o] = (Σ_i x[r][i] · w[o][i]) + bias[o]`, the sum taken in f32 in order `i = 0..k`.
pub(crate) fn matrix(
    x: &[f32],
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
    threads: usize,
) {
    let row = |xr: &[f32], or: &mut [f32]| {
        for (o, dst) in or.iter_mut().enumerate() {
            let wr = &w[o * k..(o + 1) * k];
            let mut acc = 0f32;
            for (a, b) in xr.iter().zip(wr) {
                acc += a * b;
            }
            *dst = acc + bias.map_or(0.0, |b| b[o]);
        }
    };
    if threads <= 1 {
        for (xr, or) in x.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
            row(xr, or);
        }
    } else {
        out.par_chunks_mut(n * ROWS_PER_TASK)
            .zip(x.par_chunks(k * ROWS_PER_TASK))
            .for_each(|(o, x)| {
                for (xr, or) in x.chunks_exact(k).zip(o.chunks_exact_mut(n)) {
                    row(xr, or);
                }
            });
    }
}

/// `max(x, 0)` (NaN → 0).
pub(crate) fn relu(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v.max(0.0);
    }
}

/// PyTorch's Hardswish: `x · min(max(x + 3, 0), 6) / 6`.
pub(crate) fn hardswish(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v * (v + 3.0).clamp(0.0, 6.0) / 6.0;
    }
}

/// `a + b`.
pub(crate) fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}
