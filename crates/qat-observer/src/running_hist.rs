//! A running histogram over a moving `[min, max]`, updated the way PyTorch's
//! `HistogramObserver.forward` does it (torch 2.x: `histc` over the combined range, the old
//! histogram re-binned into the new range by `_upscale_histogram`). Shared by the histogram
//! and percentile observers. The f32 / f64 split of each step follows the ATen kernel it
//! mirrors, so the bins match PyTorch's.

use crate::state::{self, State};
use crate::{ObserverError, Result};

/// Bins, their range, and how finely old bins are split when the range grows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunningHistogram {
    pub hist: Vec<f32>,
    pub min: f32,
    pub max: f32,
    pub upsample_rate: usize,
}

/// `torch.linspace(start, end, steps)` in f32 (the CPU kernel's formula: the first half counted
/// from `start`, the second half from `end`, so both ends are exact).
pub(crate) fn linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                start + step * i as f32
            } else {
                end - step * (steps - i - 1) as f32
            }
        })
        .collect()
}

/// `torch.histc(data, bins, min, max)` added into `hist`: the bin is
/// `trunc((x - min) * bins / (max - min))` in f32, values outside `[min, max]` are dropped,
/// `max` itself goes to the last bin, and an empty range is widened to `[min - 1, max + 1]`.
pub(crate) fn histc_into(hist: &mut [f32], data: &[f32], min: f32, max: f32) {
    let (lo, hi) = if min == max {
        ((min as f64 - 1.0) as f32, (max as f64 + 1.0) as f32)
    } else {
        (min, max)
    };
    let bins = hist.len();
    let nb = bins as f32;
    let width = hi - lo;
    for &x in data {
        if !(x >= lo && x <= hi) {
            continue;
        }
        // `as usize` saturates (and maps NaN to 0), so a degenerate width cannot index out.
        let pos = (((x - lo) * nb / width) as usize).min(bins - 1);
        hist[pos] += 1.0;
    }
}

impl RunningHistogram {
    pub fn new(bins: usize, upsample_rate: usize) -> Self {
        Self {
            hist: vec![0.0; bins],
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            upsample_rate,
        }
    }

    pub fn bins(&self) -> usize {
        self.hist.len()
    }

    pub fn is_empty(&self) -> bool {
        self.min == f32::INFINITY || self.max == f32::NEG_INFINITY
    }

    pub fn reset(&mut self) {
        self.hist.iter_mut().for_each(|h| *h = 0.0);
        self.min = f32::INFINITY;
        self.max = f32::NEG_INFINITY;
    }

    /// Adds one batch of finite values whose min / max are `x_min` / `x_max`.
    pub fn add(&mut self, data: &[f32], x_min: f32, x_max: f32) {
        let bins = self.bins();
        if self.is_empty() {
            self.hist = vec![0.0; bins];
            histc_into(&mut self.hist, data, x_min, x_max);
            self.min = x_min;
            self.max = x_max;
            return;
        }
        let new_min = self.min.min(x_min);
        let new_max = self.max.max(x_max);
        let mut update = vec![0.0; bins];
        histc_into(&mut update, data, new_min, new_max);
        if new_min == self.min && new_max == self.max {
            for (h, u) in self.hist.iter_mut().zip(&update) {
                *h += u;
            }
            return;
        }
        let old = if self.min == self.max {
            // A histogram of one value: all its mass goes to that value's bin in the new range.
            let mass: f32 = sum_f32(&self.hist);
            let mut one = vec![0.0; bins];
            histc_into(&mut one, &[self.min], new_min, new_max);
            one.iter().map(|&h| h * mass).collect()
        } else {
            self.upscale(new_min, new_max)
        };
        for (u, o) in update.iter_mut().zip(&old) {
            *u += o;
        }
        self.hist = update;
        self.min = new_min;
        self.max = new_max;
    }

    /// PyTorch's `_upscale_histogram`: each old bin is split into `upsample_rate` equal parts,
    /// and each part lands in the new bin containing its midpoint.
    fn upscale(&self, new_min: f32, new_max: f32) -> Vec<f32> {
        let bins = self.bins();
        let up = self.upsample_rate;
        let n = bins * up;
        let bin_size = (self.max - self.min) / n as f32;
        let half = 0.5 * bin_size;
        let mids = linspace(self.min, self.max, n + 1);
        let bounds = linspace(new_min, new_max, bins + 1);
        let mut out = vec![0.0f32; bins];
        for (j, &m) in mids[..n].iter().enumerate() {
            let w = self.hist[j / up] / up as f32;
            if w == 0.0 {
                // Adding +0.0 changes nothing; skipping saves the search.
                continue;
            }
            let mid = m + half;
            // `bucketize(right=True) - 1`, clamped into the histogram.
            let b = bounds.partition_point(|&e| e <= mid);
            let b = b.saturating_sub(1).min(bins - 1);
            out[b] += w;
        }
        out
    }

    /// `histogram`, `min_val`, `max_val` (PyTorch's buffer names and shapes).
    pub fn state(&self) -> Result<State> {
        Ok(State::from([
            ("histogram".to_string(), state::vector(&self.hist)?),
            ("min_val".to_string(), state::scalar(self.min)?),
            ("max_val".to_string(), state::scalar(self.max)?),
        ]))
    }

    /// Validated state: the same bin count, finite non-negative bins, a valid range, and
    /// mass exactly when observed.
    pub fn load(&mut self, observer: &'static str, st: &State) -> Result<()> {
        state::check_names(observer, st, &["histogram", "min_val", "max_val"])?;
        let invalid = |msg: String| ObserverError::Invalid { observer, msg };
        if st["histogram"].rank() != 1 {
            return Err(invalid(format!(
                "state `histogram` must be a vector, got shape {:?}",
                st["histogram"].dims()
            )));
        }
        let hist = state::values(observer, st, "histogram")?;
        if hist.len() != self.bins() {
            return Err(invalid(format!(
                "state `histogram` has {} bins, this observer has {}",
                hist.len(),
                self.bins()
            )));
        }
        if hist.iter().any(|h| !(h.is_finite() && *h >= 0.0)) {
            return Err(invalid(
                "state `histogram` holds a negative or non-finite count".to_string(),
            ));
        }
        let min = state::one_value(observer, st, "min_val")?;
        let max = state::one_value(observer, st, "max_val")?;
        state::check_range(observer, min, max)?;
        let unobserved = min == f32::INFINITY;
        let mass = hist.iter().any(|&h| h > 0.0);
        if unobserved == mass {
            return Err(invalid(format!(
                "state `histogram` {} but the range says it is {}",
                if mass { "holds counts" } else { "is empty" },
                if unobserved { "unobserved" } else { "observed" }
            )));
        }
        self.hist = hist;
        self.min = min;
        self.max = max;
        Ok(())
    }
}

/// A sum of f32 counts; exact for the counts a histogram holds (multiples of
/// `1 / upsample_rate` far below 2^24), so the summation order does not matter.
pub(crate) fn sum_f32(v: &[f32]) -> f32 {
    v.iter().map(|&x| x as f64).sum::<f64>() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_ends_are_exact() {
        let v = linspace(-1.3, 2.7, 2049);
        assert_eq!((v[0], v[2048]), (-1.3, 2.7));
        assert!(v.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn histc_counts_every_value_once() {
        let data: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.731).sin()).collect();
        let mut h = vec![0.0; 64];
        histc_into(&mut h, &data, -1.0, 1.0);
        assert_eq!(sum_f32(&h), 1000.0);
        let mut one = vec![0.0; 64];
        histc_into(&mut one, &[1.0], -1.0, 1.0);
        assert_eq!(one[63], 1.0, "max goes to the last bin");
        let mut c = vec![0.0; 8];
        histc_into(&mut c, &[0.5, 0.5], 0.5, 0.5);
        assert_eq!(c[4], 2.0, "an empty range is widened around the value");
    }

    #[test]
    fn growing_the_range_keeps_the_mass() {
        let mut rh = RunningHistogram::new(128, 16);
        let a: Vec<f32> = (0..500).map(|i| (i as f32 * 0.01).cos()).collect();
        rh.add(
            &a,
            -1.0f32.max(a.iter().cloned().fold(f32::INFINITY, f32::min)),
            1.0,
        );
        let b: Vec<f32> = (0..300).map(|i| 3.0 * (i as f32 * 0.02).sin()).collect();
        let (lo, hi) = (
            b.iter().cloned().fold(f32::INFINITY, f32::min),
            b.iter().cloned().fold(f32::NEG_INFINITY, f32::max),
        );
        rh.add(&b, lo, hi);
        assert_eq!(sum_f32(&rh.hist), 800.0);
        assert_eq!((rh.min, rh.max), (lo.min(rh.min), hi));
    }
}
