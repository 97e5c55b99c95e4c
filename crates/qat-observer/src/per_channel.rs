//! Per-channel running min / max, plain or as a moving average.

use candle_core::Tensor;
use qat_core::{choose_qparams_per_channel, QDType, QScheme, TensorQParams};

use crate::config::check_averaging_constant;
use crate::forward::{forward_config, forward_range};
use crate::state::{self, State};
use crate::{data, stats, Observer, ObserverConfig, ObserverError, Result};

/// Per-channel `(min, max)`; empty until the first batch (PyTorch's `[0]`-shaped buffers).
#[derive(Debug, Clone, Default, PartialEq)]
struct Ranges {
    min: Vec<f32>,
    max: Vec<f32>,
}

impl Ranges {
    fn qparams(&self, cfg: &ObserverConfig) -> Result<TensorQParams> {
        if self.min.is_empty() {
            // PyTorch's `_calculate_qparams` on unobserved (empty) buffers: scale 1, zero point 0.
            return Ok(TensorQParams {
                dtype: cfg.dtype,
                scheme: cfg.scheme,
                scale: vec![1.0],
                zero_point: vec![0],
            });
        }
        Ok(choose_qparams_per_channel(
            &self.min, &self.max, cfg.dtype, cfg.scheme, cfg.eps,
        )?)
    }

    fn state(&self) -> Result<State> {
        Ok(State::from([
            ("min_val".to_string(), state::vector(&self.min)?),
            ("max_val".to_string(), state::vector(&self.max)?),
        ]))
    }

    fn load(observer: &'static str, st: &State) -> Result<Ranges> {
        state::check_names(observer, st, &["min_val", "max_val"])?;
        for name in ["min_val", "max_val"] {
            if st[name].rank() != 1 {
                return Err(ObserverError::Invalid {
                    observer,
                    msg: format!(
                        "state `{name}` must be a vector, got shape {:?}",
                        st[name].dims()
                    ),
                });
            }
        }
        let min = state::values(observer, st, "min_val")?;
        let max = state::values(observer, st, "max_val")?;
        if min.len() != max.len() {
            return Err(ObserverError::Invalid {
                observer,
                msg: format!(
                    "state `min_val` has {} channels but `max_val` has {}",
                    min.len(),
                    max.len()
                ),
            });
        }
        for (&lo, &hi) in min.iter().zip(&max) {
            state::check_range(observer, lo, hi)?;
        }
        Ok(Ranges { min, max })
    }

    /// Observe batch `x` along the config's channel axis: the first batch sets the ranges,
    /// later ones fold in per channel (`min = fold_min(min, batch_min)`, likewise max).
    /// Nothing changes on an error.
    fn observe(
        &mut self,
        observer: &'static str,
        cfg: &ObserverConfig,
        x: &Tensor,
        fold_min: impl Fn(f32, f32) -> f32,
        fold_max: impl Fn(f32, f32) -> f32,
    ) -> Result<()> {
        let axis = cfg
            .scheme
            .axis()
            .expect("checked per-channel at construction");
        let expect = (!self.min.is_empty()).then_some(self.min.len());
        let b = batch_ranges(observer, x, axis, expect)?;
        if self.min.is_empty() {
            *self = b;
            return Ok(());
        }
        for (m, v) in self.min.iter_mut().zip(&b.min) {
            *m = fold_min(*m, *v);
        }
        for (m, v) in self.max.iter_mut().zip(&b.max) {
            *m = fold_max(*m, *v);
        }
        Ok(())
    }
}

/// Per-channel min / max of one batch along `axis`, checked before any state changes:
/// NaN / Inf, a bad axis, or a channel count different from `expect` (when observed before).
fn batch_ranges(
    observer: &'static str,
    x: &Tensor,
    axis: usize,
    expect: Option<usize>,
) -> Result<Ranges> {
    let (outer, ch, inner) = stats::split_axis(observer, x.dims(), axis)?;
    if let Some(n) = expect {
        if n != ch {
            return Err(ObserverError::Invalid {
                observer,
                msg: format!(
                    "channel count changed: observed {n} channels before, got {ch} along axis {axis}"
                ),
            });
        }
    }
    let r = data::with_f32(x, observer, |d| {
        Ok(stats::channel_min_max(d, outer, ch, inner))
    })?;
    if r.non_finite > 0 {
        return Err(ObserverError::NonFinite {
            observer,
            count: r.non_finite,
        });
    }
    Ok(Ranges {
        min: r.min,
        max: r.max,
    })
}

/// PyTorch's `PerChannelMinMaxObserver`: running min / max of each slice along the scheme's
/// axis (the tensor is reduced over every other axis).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use qat_observer::{Observer, ObserverConfig, PerChannelMinMaxObserver, QDType, QScheme};
/// let cfg = ObserverConfig::new(QDType::qint8(), QScheme::PerChannelSymmetric { axis: 0 });
/// let mut obs = PerChannelMinMaxObserver::new(cfg).unwrap();
/// let w = Tensor::new(&[[1.0f32, -2.0], [0.5, 0.25]], &Device::Cpu).unwrap();
/// obs.observe(&w).unwrap();
/// assert_eq!(obs.min_val(), &[-2.0, 0.25]);
/// assert_eq!(obs.qparams().unwrap().scale, vec![2.0 / 127.5, 0.5 / 127.5]);
/// ```
#[derive(Debug, Clone)]
pub struct PerChannelMinMaxObserver {
    config: ObserverConfig,
    ranges: Ranges,
}

impl PerChannelMinMaxObserver {
    const NAME: &'static str = "PerChannelMinMaxObserver";

    /// A fresh observer; the scheme must be per-channel (its axis is the channel axis).
    pub fn new(config: ObserverConfig) -> Result<Self> {
        config.check(Self::NAME, true)?;
        Ok(Self {
            config,
            ranges: Ranges::default(),
        })
    }

    /// Per-channel running minima (empty before the first batch).
    pub fn min_val(&self) -> &[f32] {
        &self.ranges.min
    }

    /// Per-channel running maxima (empty before the first batch).
    pub fn max_val(&self) -> &[f32] {
        &self.ranges.max
    }
}

impl Observer for PerChannelMinMaxObserver {
    forward_config!();
    forward_range!(ranges: Ranges);

    fn observe(&mut self, x: &Tensor) -> Result<()> {
        self.ranges
            .observe(Self::NAME, &self.config, x, f32::min, f32::max)
    }
}

/// PyTorch's `MovingAveragePerChannelMinMaxObserver`: per channel, the first batch sets
/// min / max and later ones move them by `averaging_constant` (`m += c * (batch_m - m)`).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use qat_observer::{MovingAveragePerChannelMinMaxObserver, Observer, ObserverConfig, QDType, QScheme};
/// let cfg = ObserverConfig::new(QDType::quint8(), QScheme::PerChannelAffine { axis: 1 });
/// let mut obs = MovingAveragePerChannelMinMaxObserver::new(cfg, 0.5).unwrap();
/// obs.observe(&Tensor::new(&[[0.0f32, 2.0]], &Device::Cpu).unwrap()).unwrap();
/// obs.observe(&Tensor::new(&[[1.0f32, 4.0]], &Device::Cpu).unwrap()).unwrap();
/// assert_eq!(obs.max_val(), &[0.5, 3.0]);
/// ```
#[derive(Debug, Clone)]
pub struct MovingAveragePerChannelMinMaxObserver {
    config: ObserverConfig,
    averaging_constant: f32,
    ranges: Ranges,
}

impl MovingAveragePerChannelMinMaxObserver {
    const NAME: &'static str = "MovingAveragePerChannelMinMaxObserver";

    /// A fresh observer; per-channel scheme, `averaging_constant` in `(0, 1]`.
    pub fn new(config: ObserverConfig, averaging_constant: f32) -> Result<Self> {
        config.check(Self::NAME, true)?;
        check_averaging_constant(Self::NAME, averaging_constant)?;
        Ok(Self {
            config,
            averaging_constant,
            ranges: Ranges::default(),
        })
    }

    /// The averaging constant.
    pub fn averaging_constant(&self) -> f32 {
        self.averaging_constant
    }

    /// Per-channel averaged minima (empty before the first batch).
    pub fn min_val(&self) -> &[f32] {
        &self.ranges.min
    }

    /// Per-channel averaged maxima (empty before the first batch).
    pub fn max_val(&self) -> &[f32] {
        &self.ranges.max
    }
}

impl Observer for MovingAveragePerChannelMinMaxObserver {
    forward_config!();
    forward_range!(ranges: Ranges);

    fn observe(&mut self, x: &Tensor) -> Result<()> {
        let c = self.averaging_constant;
        let toward = |m: f32, v: f32| m + c * (v - m);
        self.ranges
            .observe(Self::NAME, &self.config, x, toward, toward)
    }
}
