//! One-pass statistics over contiguous `f32` data: min, max and the number of non-finite
//! values, per tensor or per channel.

use crate::{ObserverError, Result};

const LANES: usize = 16;
const EXP_MASK: u32 = 0x7f80_0000;

/// Min, max and the count of NaN / ±Inf values of a slice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct MinMax {
    pub min: f32,
    pub max: f32,
    pub non_finite: usize,
}

/// A non-finite f32 has every exponent bit set; testing the bits (not `is_finite`) keeps the
/// loop branch-free so it vectorizes.
#[inline(always)]
fn non_finite(v: f32) -> u32 {
    u32::from((v.to_bits() & EXP_MASK) == EXP_MASK)
}

/// Min / max / non-finite count in one pass. The comparisons skip NaN, which is fine: any
/// NaN is counted and the caller refuses the tensor.
pub(crate) fn min_max(data: &[f32]) -> MinMax {
    let mut mn = [f32::INFINITY; LANES];
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut bad = [0u32; LANES];
    let chunks = data.chunks_exact(LANES);
    let tail = chunks.remainder();
    let mut bad_total = 0usize;
    for (k, c) in chunks.enumerate() {
        for i in 0..LANES {
            let v = c[i];
            mn[i] = if v < mn[i] { v } else { mn[i] };
            mx[i] = if v > mx[i] { v } else { mx[i] };
            bad[i] += non_finite(v);
        }
        // Flush the u32 lane counters long before they could overflow.
        if k % (1 << 20) == (1 << 20) - 1 {
            bad_total += bad.iter().map(|&b| b as usize).sum::<usize>();
            bad = [0; LANES];
        }
    }
    let mut out = MinMax {
        min: f32::INFINITY,
        max: f32::NEG_INFINITY,
        non_finite: bad_total + bad.iter().map(|&b| b as usize).sum::<usize>(),
    };
    for i in 0..LANES {
        out.min = out.min.min(mn[i]);
        out.max = out.max.max(mx[i]);
    }
    for &v in tail {
        out.min = if v < out.min { v } else { out.min };
        out.max = if v > out.max { v } else { out.max };
        out.non_finite += non_finite(v) as usize;
    }
    out
}

/// Per-channel min / max along `axis` of a row-major tensor of shape `dims`, in one pass over
/// the data (no transpose): the data is `[outer, channels, inner]` and each inner run is
/// reduced where it lies.
pub(crate) struct ChannelMinMax {
    pub min: Vec<f32>,
    pub max: Vec<f32>,
    pub non_finite: usize,
}

/// The `[outer, channels, inner]` view of `dims` around `axis`.
pub(crate) fn split_axis(
    observer: &'static str,
    dims: &[usize],
    axis: usize,
) -> Result<(usize, usize, usize)> {
    if axis >= dims.len() {
        return Err(ObserverError::BadAxis {
            observer,
            axis,
            rank: dims.len(),
        });
    }
    let outer = dims[..axis].iter().product();
    let inner = dims[axis + 1..].iter().product();
    Ok((outer, dims[axis], inner))
}

pub(crate) fn channel_min_max(
    data: &[f32],
    outer: usize,
    ch: usize,
    inner: usize,
) -> ChannelMinMax {
    debug_assert_eq!(data.len(), outer * ch * inner);
    let mut min = vec![f32::INFINITY; ch];
    let mut max = vec![f32::NEG_INFINITY; ch];
    let mut non_finite_count = 0usize;
    if inner == 1 {
        // Channels last: each row of `ch` values updates every channel; elementwise over the
        // row vectorizes.
        let mut bad = vec![0u32; ch];
        for (k, row) in data.chunks_exact(ch).enumerate() {
            for (((m, x), b), &v) in min
                .iter_mut()
                .zip(max.iter_mut())
                .zip(bad.iter_mut())
                .zip(row)
            {
                *m = if v < *m { v } else { *m };
                *x = if v > *x { v } else { *x };
                *b += non_finite(v);
            }
            if k % (1 << 20) == (1 << 20) - 1 {
                non_finite_count += bad.iter().map(|&b| b as usize).sum::<usize>();
                bad.iter_mut().for_each(|b| *b = 0);
            }
        }
        non_finite_count += bad.iter().map(|&b| b as usize).sum::<usize>();
    } else {
        for (i, run) in data.chunks_exact(inner).enumerate() {
            let c = i % ch;
            let s = min_max(run);
            min[c] = min[c].min(s.min);
            max[c] = max[c].max(s.max);
            non_finite_count += s.non_finite;
        }
    }
    ChannelMinMax {
        min,
        max,
        non_finite: non_finite_count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_max_counts_non_finite_and_handles_tails() {
        for n in [1usize, 5, 16, 17, 40] {
            let mut v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let s = min_max(&v);
            let lo = v.iter().cloned().fold(f32::INFINITY, f32::min);
            let hi = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!((s.min, s.max, s.non_finite), (lo, hi, 0), "n={n}");
            v[n - 1] = f32::NAN;
            v[0] = f32::NEG_INFINITY;
            let expect = if n == 1 { 1 } else { 2 };
            assert_eq!(min_max(&v).non_finite, expect, "n={n}");
        }
    }

    #[test]
    fn channel_min_max_matches_a_scalar_reference() {
        let dims = [3usize, 4, 5];
        let data: Vec<f32> = (0..60).map(|i| ((i * 7919) % 61) as f32 - 30.0).collect();
        for axis in 0..3 {
            let (o, c, n) = split_axis("t", &dims, axis).unwrap();
            let r = channel_min_max(&data, o, c, n);
            for ch in 0..c {
                let mut lo = f32::INFINITY;
                let mut hi = f32::NEG_INFINITY;
                for (idx, &v) in data.iter().enumerate() {
                    let coords = [idx / 20, (idx / 5) % 4, idx % 5];
                    if coords[axis] == ch {
                        lo = lo.min(v);
                        hi = hi.max(v);
                    }
                }
                assert_eq!((r.min[ch], r.max[ch]), (lo, hi), "axis {axis} ch {ch}");
            }
        }
        assert!(split_axis("t", &dims, 3).is_err());
    }
}
