//! PyTorch's `HistogramObserver`: a running histogram, and a range chosen by minimizing the
//! L2 quantization error over it (`_non_linear_param_search`).

use candle_core::Tensor;
use qat_core::{choose_qparams, QDType, QScheme, TensorQParams};

use crate::forward::{forward_config, forward_histogram};
use crate::running_hist::{sum_f32, RunningHistogram};
use crate::state::State;
use crate::{data, stats, Observer, ObserverConfig, ObserverError, Result};

/// PyTorch's `dst_nbins = 2 ** torch.iinfo(dtype).bits`: the error model always assumes 256
/// levels (the storage type's), even for a narrower `quant_min` / `quant_max`.
const DST_NBINS: f64 = 256.0;

/// Reads one batch into the histogram after checking it: NaN / Inf is refused before the
/// state changes (PyTorch drops ±Inf with a warning; we refuse, as every observer here does).
pub(crate) fn observe_into(
    observer: &'static str,
    rh: &mut RunningHistogram,
    x: &Tensor,
) -> Result<()> {
    data::with_f32(x, observer, |d| {
        let s = stats::min_max(d);
        if s.non_finite > 0 {
            return Err(ObserverError::NonFinite {
                observer,
                count: s.non_finite,
            });
        }
        rh.add(d, s.min, s.max);
        Ok(())
    })
}

pub(crate) fn check_bins(observer: &'static str, bins: usize, upsample_rate: usize) -> Result<()> {
    if bins < 2 || upsample_rate < 1 {
        return Err(ObserverError::Invalid {
            observer,
            msg: format!("needs bins >= 2 and upsample_rate >= 1, got {bins} and {upsample_rate}"),
        });
    }
    Ok(())
}

/// PyTorch's `HistogramObserver`: keeps a histogram of everything observed (default 2048
/// bins) and picks the `[min, max]` that minimizes the L2 error of quantizing that histogram
/// to 256 levels, cutting outliers; qparams follow from that range as in [`crate::MinMaxObserver`].
///
/// ```
/// use candle_core::{Device, Tensor};
/// use qat_observer::{HistogramObserver, Observer, ObserverConfig};
/// let mut obs = HistogramObserver::new(ObserverConfig::default(), 2048).unwrap();
/// // A bulk in [-1, 1) and a thin tail out to 3: the L2 search trims the tail.
/// let mut v: Vec<f32> = (0..100_000).map(|i| ((i % 2000) as f32 - 1000.0) / 1000.0).collect();
/// v.extend((0..20).map(|i| 1.0 + i as f32 / 10.0));
/// obs.observe(&Tensor::new(v.as_slice(), &Device::Cpu).unwrap()).unwrap();
/// let (lo, hi) = obs.search_range().unwrap();
/// assert!(lo == -1.0 && hi < obs.max_val(), "{lo} {hi}");
/// let full_range_scale = (obs.max_val() - obs.min_val()) / 255.0;
/// assert!(obs.qparams().unwrap().scale[0] < full_range_scale);
/// ```
#[derive(Debug, Clone)]
pub struct HistogramObserver {
    config: ObserverConfig,
    hist: RunningHistogram,
}

impl HistogramObserver {
    const NAME: &'static str = "HistogramObserver";

    /// A fresh observer with `bins` bins (PyTorch's default is 2048) and PyTorch's upsample
    /// rate of 16; the scheme must be per-tensor.
    pub fn new(config: ObserverConfig, bins: usize) -> Result<Self> {
        config.check(Self::NAME, false)?;
        check_bins(Self::NAME, bins, 16)?;
        Ok(Self {
            config,
            hist: RunningHistogram::new(bins, 16),
        })
    }

    /// The same observer with another upsample rate (how finely old bins are split when the
    /// range grows).
    pub fn with_upsample_rate(mut self, upsample_rate: usize) -> Result<Self> {
        check_bins(Self::NAME, self.hist.bins(), upsample_rate)?;
        self.hist.upsample_rate = upsample_rate;
        Ok(self)
    }

    /// The histogram's bins.
    pub fn histogram(&self) -> &[f32] {
        &self.hist.hist
    }

    /// The minimum observed (`+inf` before the first batch).
    pub fn min_val(&self) -> f32 {
        self.hist.min
    }

    /// The maximum observed (`-inf` before the first batch).
    pub fn max_val(&self) -> f32 {
        self.hist.max
    }

    /// The range the L2 search picks (PyTorch's `_non_linear_param_search`); `None` before
    /// the first batch.
    pub fn search_range(&self) -> Option<(f32, f32)> {
        (!self.hist.is_empty()).then(|| non_linear_param_search(&self.hist))
    }
}

impl Observer for HistogramObserver {
    forward_config!();
    forward_histogram!(search_range);
}

/// `torch.div(a, b, rounding_mode="floor")` for f32 (ATen's `div_floor_floating`).
fn div_floor(a: f32, b: f32) -> f32 {
    if b == 0.0 {
        return a / b;
    }
    let m = a % b;
    let mut d = (a - m) / b;
    if m != 0.0 && (b < 0.0) != (m < 0.0) {
        d -= 1.0;
    }
    if d != 0.0 {
        let mut f = d.floor();
        if d - f > 0.5 {
            f += 1.0;
        }
        f
    } else {
        (0.0f32).copysign(a / b)
    }
}

/// PyTorch's `_get_norm` with its f32 evaluation order: `density * (e³ - b³) / 3`.
#[inline]
fn l2(begin: f32, end: f32, density: f32) -> f32 {
    density * ((end * end * end - begin * begin * begin) / 3.0)
}

/// PyTorch's `_compute_quantization_error`: the L2 error of quantizing the histogram to
/// `DST_NBINS` levels spanning bins `start..=end`. Scalars are Python doubles rounded to f32
/// where they meet the f32 tensors, as in PyTorch; the final sum is taken in f64.
fn quantization_error(rh: &RunningHistogram, start: usize, end: usize) -> f32 {
    let bins = rh.bins();
    let bin_width = (rh.max as f64 - rh.min as f64) / bins as f64;
    let dst_width = bin_width * (end - start + 1) as f64 / DST_NBINS;
    if dst_width == 0.0 {
        return 0.0;
    }
    let bw = bin_width as f32;
    let dw = dst_width as f32;
    let half = (dst_width / 2.0) as f32;
    let neg_half = (-dst_width / 2.0) as f32;
    let top = (DST_NBINS - 1.0) as f32;
    let full = (half * half * half - neg_half * neg_half * neg_half) / 3.0;
    let mut total = 0.0f64;
    for (i, &h) in rh.hist.iter().enumerate() {
        let src_begin = (i as f32 - start as f32) * bw;
        let src_end = src_begin + bw;
        let dst_begin = div_floor(src_begin, dw).clamp(0.0, top);
        let dst_begin_center = (dst_begin + 0.5) * dw;
        let dst_end = div_floor(src_end, dw).clamp(0.0, top);
        let density = h / bw;
        let mut norm = 0.0f32;
        norm += l2(src_begin - dst_begin_center, half, density);
        norm += (dst_end - dst_begin - 1.0) * (density * full);
        let dst_end_center = dst_end * dw + half;
        norm += l2(neg_half, src_end - dst_end_center, density);
        total += norm as f64;
    }
    total as f32
}

/// PyTorch's `_non_linear_param_search`: shrink `[start_bin, end_bin]` from whichever side
/// holds less mass, in quantile steps of 1e-5, while the L2 error keeps falling.
pub(crate) fn non_linear_param_search(rh: &RunningHistogram) -> (f32, f32) {
    let bins = rh.bins();
    let bin_width = (rh.max - rh.min) / bins as f32;
    let total = sum_f32(&rh.hist) as f64;
    // torch.cumsum on CPU accumulates f32 in double and stores f32.
    let mut acc = 0.0f64;
    let csum: Vec<f32> = rh
        .hist
        .iter()
        .map(|&h| {
            acc += h as f64;
            acc as f32
        })
        .collect();
    let stepsize = 1e-5f64;
    let (mut alpha, mut beta) = (0.0f64, 1.0f64);
    let (mut start_bin, mut end_bin) = (0usize, bins - 1);
    let mut norm_min = f32::INFINITY;
    while alpha < beta {
        let next_alpha = alpha + stepsize;
        let next_beta = beta - stepsize;
        // `cSum[l] < next_alpha * total` compares in f32 (a Python float meets an f32 tensor).
        // cSum is non-decreasing, so PyTorch's linear scans are binary searches here.
        let lo_thr = (next_alpha * total) as f32;
        let hi_thr = (next_beta * total) as f32;
        let l = start_bin + csum[start_bin..end_bin].partition_point(|&c| c < lo_thr);
        let below = csum[..=end_bin].partition_point(|&c| c <= hi_thr);
        let r = if below == end_bin + 1 {
            end_bin
        } else {
            below.saturating_sub(1).max(start_bin)
        };
        let (mut next_start, mut next_end) = (start_bin, end_bin);
        if l - start_bin > end_bin - r {
            next_start = l;
            alpha = next_alpha;
        } else {
            next_end = r;
            beta = next_beta;
        }
        if next_start == start_bin && next_end == end_bin {
            continue;
        }
        let norm = quantization_error(rh, next_start, next_end);
        if norm > norm_min {
            break;
        }
        norm_min = norm;
        start_bin = next_start;
        end_bin = next_end;
    }
    let new_min = rh.min + bin_width * start_bin as f32;
    let new_max = rh.min + bin_width * (end_bin + 1) as f32;
    (new_min, new_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn div_floor_is_python_floor_division() {
        assert_eq!(div_floor(7.0, 2.0), 3.0);
        assert_eq!(div_floor(-7.0, 2.0), -4.0);
        assert_eq!(div_floor(-0.5, 2.0), -1.0);
        assert_eq!(div_floor(0.0, 2.0), 0.0);
        assert_eq!(div_floor(6.0, 2.0), 3.0);
    }

    #[test]
    fn uniform_data_keeps_its_range() {
        let mut rh = RunningHistogram::new(256, 16);
        let d: Vec<f32> = (0..25_600).map(|i| i as f32 / 25_599.0).collect();
        rh.add(&d, 0.0, 1.0);
        let (lo, hi) = non_linear_param_search(&rh);
        assert!(lo <= 0.01 && hi >= 0.99, "{lo} {hi}");
    }
}
