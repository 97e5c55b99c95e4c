//! A percentile-range observer (not in PyTorch).

use candle_core::Tensor;
use qat_core::{choose_qparams, QDType, QScheme, TensorQParams};

use crate::forward::{forward_config, forward_histogram};
use crate::histogram::check_bins;
use crate::running_hist::RunningHistogram;
use crate::state::State;
use crate::{Observer, ObserverConfig, ObserverError, Result};

/// Range from percentiles of everything observed: our own observer, not in PyTorch.
///
/// It keeps the same running histogram as [`crate::HistogramObserver`] (PyTorch's binning
/// and re-binning when the range grows) and takes `[min, max]` as the `lower` and `upper`
/// percentiles of the histogrammed values (defaults 0.01 % and 99.99 %), interpolating
/// linearly inside a bin. Cheaper than the L2 search and predictable: exactly the chosen
/// fraction of values is clipped on each side (up to the bin resolution,
/// `(max - min) / bins`). `lower = 0` and `upper = 100` give the plain min / max.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use qat_observer::{Observer, ObserverConfig, PercentileObserver};
/// let mut obs = PercentileObserver::new(ObserverConfig::default(), 1.0, 99.0).unwrap();
/// let v: Vec<f32> = (0..=1000).map(|i| i as f32 / 1000.0).collect();
/// obs.observe(&Tensor::new(v.as_slice(), &Device::Cpu).unwrap()).unwrap();
/// let (lo, hi) = obs.range().unwrap();
/// assert!((lo - 0.01).abs() < 1e-3 && (hi - 0.99).abs() < 1e-3);
/// ```
#[derive(Debug, Clone)]
pub struct PercentileObserver {
    config: ObserverConfig,
    lower: f64,
    upper: f64,
    hist: RunningHistogram,
}

impl PercentileObserver {
    const NAME: &'static str = "PercentileObserver";
    /// Default lower percentile.
    pub const DEFAULT_LOWER: f64 = 0.01;
    /// Default upper percentile.
    pub const DEFAULT_UPPER: f64 = 99.99;
    /// Default number of histogram bins.
    pub const DEFAULT_BINS: usize = 2048;

    /// A per-tensor observer clipping below the `lower` and above the `upper` percentile
    /// (`0 <= lower < upper <= 100`), with 2048 bins.
    pub fn new(config: ObserverConfig, lower: f64, upper: f64) -> Result<Self> {
        Self::with_bins(config, lower, upper, Self::DEFAULT_BINS)
    }

    /// The same with a chosen number of bins.
    pub fn with_bins(config: ObserverConfig, lower: f64, upper: f64, bins: usize) -> Result<Self> {
        config.check(Self::NAME, false)?;
        check_bins(Self::NAME, bins, 16)?;
        if !(lower >= 0.0 && lower < upper && upper <= 100.0) {
            return Err(ObserverError::Invalid {
                observer: Self::NAME,
                msg: format!("needs 0 <= lower < upper <= 100, got lower {lower}, upper {upper}"),
            });
        }
        Ok(Self {
            config,
            lower,
            upper,
            hist: RunningHistogram::new(bins, 16),
        })
    }

    /// The observer with the default percentiles (0.01 / 99.99).
    pub fn with_defaults(config: ObserverConfig) -> Result<Self> {
        Self::new(config, Self::DEFAULT_LOWER, Self::DEFAULT_UPPER)
    }

    /// The `(lower, upper)` percentiles.
    pub fn percentiles(&self) -> (f64, f64) {
        (self.lower, self.upper)
    }

    /// The chosen `(min, max)`; `None` before the first batch.
    pub fn range(&self) -> Option<(f32, f32)> {
        if self.hist.is_empty() {
            return None;
        }
        let lo = self.quantile(self.lower / 100.0);
        let hi = self.quantile(self.upper / 100.0);
        Some((lo, hi.max(lo)))
    }

    /// The value below which a fraction `q` of the histogram's mass lies (linear inside a
    /// bin), clamped to the observed range.
    fn quantile(&self, q: f64) -> f32 {
        let h = &self.hist;
        let (min, max) = (h.min as f64, h.max as f64);
        let total: f64 = h.hist.iter().map(|&c| c as f64).sum();
        let width = (max - min) / h.bins() as f64;
        let target = q * total;
        let mut cum = 0.0f64;
        for (b, &c) in h.hist.iter().enumerate() {
            let c = c as f64;
            if c > 0.0 && cum + c >= target {
                let frac = ((target - cum) / c).clamp(0.0, 1.0);
                return (min + width * (b as f64 + frac)).clamp(min, max) as f32;
            }
            cum += c;
        }
        h.max
    }
}

impl Observer for PercentileObserver {
    forward_config!();
    forward_histogram!(range);
}
