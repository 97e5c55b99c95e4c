//! Per-tensor running min / max, plain or as a moving average.

use candle_core::Tensor;
use qat_core::{choose_qparams, QDType, QScheme, TensorQParams};

use crate::config::check_averaging_constant;
use crate::forward::{forward_config, forward_range};
use crate::state::{self, State};
use crate::{data, stats, Observer, ObserverConfig, ObserverError, Result};

/// The running `(min, max)` of per-tensor observers; `(+inf, -inf)` until the first batch.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Range {
    min: f32,
    max: f32,
}

impl Default for Range {
    fn default() -> Self {
        Range::EMPTY
    }
}

impl Range {
    const EMPTY: Range = Range {
        min: f32::INFINITY,
        max: f32::NEG_INFINITY,
    };

    fn is_empty(&self) -> bool {
        self.min == f32::INFINITY && self.max == f32::NEG_INFINITY
    }

    fn qparams(&self, cfg: &ObserverConfig) -> Result<TensorQParams> {
        let q = choose_qparams(
            self.min,
            self.max,
            cfg.dtype,
            cfg.scheme.is_symmetric(),
            cfg.eps,
        )?;
        Ok(TensorQParams::per_tensor(cfg.dtype, cfg.scheme, q))
    }

    fn state(&self) -> Result<State> {
        Ok(State::from([
            ("min_val".to_string(), state::scalar(self.min)?),
            ("max_val".to_string(), state::scalar(self.max)?),
        ]))
    }

    fn load(observer: &'static str, st: &State) -> Result<Range> {
        state::check_names(observer, st, &["min_val", "max_val"])?;
        let min = state::one_value(observer, st, "min_val")?;
        let max = state::one_value(observer, st, "max_val")?;
        state::check_range(observer, min, max)?;
        Ok(Range { min, max })
    }
}

/// Min / max of one batch, refusing NaN / Inf before anything is changed.
fn batch_range(observer: &'static str, x: &Tensor) -> Result<Range> {
    let s = data::with_f32(x, observer, |d| Ok(stats::min_max(d)))?;
    if s.non_finite > 0 {
        return Err(ObserverError::NonFinite {
            observer,
            count: s.non_finite,
        });
    }
    Ok(Range {
        min: s.min,
        max: s.max,
    })
}

/// PyTorch's `MinMaxObserver`: the running minimum and maximum of everything observed.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use qat_observer::{MinMaxObserver, Observer, ObserverConfig};
/// let mut obs = MinMaxObserver::new(ObserverConfig::default()).unwrap();
/// obs.observe(&Tensor::new(&[-1.0f32, 0.5], &Device::Cpu).unwrap()).unwrap();
/// obs.observe(&Tensor::new(&[3.0f32], &Device::Cpu).unwrap()).unwrap();
/// assert_eq!((obs.min_val(), obs.max_val()), (-1.0, 3.0));
/// let q = obs.qparams().unwrap();
/// assert_eq!(q.zero_point, vec![64]);
/// ```
#[derive(Debug, Clone)]
pub struct MinMaxObserver {
    config: ObserverConfig,
    range: Range,
}

impl MinMaxObserver {
    const NAME: &'static str = "MinMaxObserver";

    /// A fresh observer; the scheme must be per-tensor.
    pub fn new(config: ObserverConfig) -> Result<Self> {
        config.check(Self::NAME, false)?;
        Ok(Self {
            config,
            range: Range::EMPTY,
        })
    }

    /// The running minimum (`+inf` before the first batch).
    pub fn min_val(&self) -> f32 {
        self.range.min
    }

    /// The running maximum (`-inf` before the first batch).
    pub fn max_val(&self) -> f32 {
        self.range.max
    }
}

impl Observer for MinMaxObserver {
    forward_config!();
    forward_range!(range: Range);

    fn observe(&mut self, x: &Tensor) -> Result<()> {
        let b = batch_range(Self::NAME, x)?;
        self.range.min = self.range.min.min(b.min);
        self.range.max = self.range.max.max(b.max);
        Ok(())
    }
}

/// PyTorch's `MovingAverageMinMaxObserver`: the first batch sets min / max, each later batch
/// moves them by `averaging_constant` towards its own (`m += c * (batch_m - m)`, in f32).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use qat_observer::{MovingAverageMinMaxObserver, Observer, ObserverConfig};
/// let mut obs = MovingAverageMinMaxObserver::new(ObserverConfig::default(), 0.5).unwrap();
/// obs.observe(&Tensor::new(&[0.0f32, 2.0], &Device::Cpu).unwrap()).unwrap();
/// obs.observe(&Tensor::new(&[0.0f32, 4.0], &Device::Cpu).unwrap()).unwrap();
/// assert_eq!(obs.max_val(), 3.0);
/// ```
#[derive(Debug, Clone)]
pub struct MovingAverageMinMaxObserver {
    config: ObserverConfig,
    averaging_constant: f32,
    range: Range,
}

impl MovingAverageMinMaxObserver {
    const NAME: &'static str = "MovingAverageMinMaxObserver";

    /// A fresh observer; `averaging_constant` in `(0, 1]` (PyTorch's default is 0.01).
    pub fn new(config: ObserverConfig, averaging_constant: f32) -> Result<Self> {
        config.check(Self::NAME, false)?;
        check_averaging_constant(Self::NAME, averaging_constant)?;
        Ok(Self {
            config,
            averaging_constant,
            range: Range::EMPTY,
        })
    }

    /// The averaging constant.
    pub fn averaging_constant(&self) -> f32 {
        self.averaging_constant
    }

    /// The averaged minimum (`+inf` before the first batch).
    pub fn min_val(&self) -> f32 {
        self.range.min
    }

    /// The averaged maximum (`-inf` before the first batch).
    pub fn max_val(&self) -> f32 {
        self.range.max
    }
}

impl Observer for MovingAverageMinMaxObserver {
    forward_config!();
    forward_range!(range: Range);

    fn observe(&mut self, x: &Tensor) -> Result<()> {
        let b = batch_range(Self::NAME, x)?;
        if self.range.is_empty() {
            self.range = b;
        } else {
            let c = self.averaging_constant;
            self.range.min += c * (b.min - self.range.min);
            self.range.max += c * (b.max - self.range.max);
        }
        Ok(())
    }
}
