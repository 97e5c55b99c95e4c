//! # qat-observer — choosing quantization parameters from data
//!
//! Observers watch tensors and produce [`TensorQParams`] with PyTorch's exact rules
//! (`torch.ao.quantization.observer`): [`MinMaxObserver`], [`MovingAverageMinMaxObserver`],
//! [`PerChannelMinMaxObserver`], [`MovingAveragePerChannelMinMaxObserver`],
//! [`HistogramObserver`] (L2-error range search), and our own [`PercentileObserver`]. The
//! qparams always come from `qat_core::choose_qparams`, so observers, fake-quant and kernels agree.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use qat_observer::{MinMaxObserver, Observer, ObserverConfig, QDType, QScheme};
//! let cfg = ObserverConfig::new(QDType::qint8(), QScheme::PerTensorSymmetric);
//! let mut obs: Box<dyn Observer> = Box::new(MinMaxObserver::new(cfg).unwrap());
//! obs.observe(&Tensor::new(&[-2.0f32, 1.0], &Device::Cpu).unwrap()).unwrap();
//! let q = obs.qparams().unwrap();
//! assert_eq!(q.zero_point, vec![0]);
//! assert_eq!(q.scale, vec![2.0 / 127.5]);
//! ```

use std::collections::HashMap;

use candle_core::Tensor;
pub use qat_core::{QDType, QParams, QScheme, TensorQParams};

mod config;
mod data;
mod error;
mod forward;
mod histogram;
mod minmax;
mod per_channel;
mod percentile;
mod running_hist;
mod state;
mod stats;

pub use config::ObserverConfig;
pub use error::{ObserverError, Result};
pub use histogram::HistogramObserver;
pub use minmax::{MinMaxObserver, MovingAverageMinMaxObserver};
pub use per_channel::{MovingAveragePerChannelMinMaxObserver, PerChannelMinMaxObserver};
pub use percentile::PercentileObserver;

/// Something that watches tensors and chooses quantization parameters for them.
///
/// State (min / max, histograms) is exported as named tensors so it can be saved in a
/// checkpoint next to the model's parameters and loaded back.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// A short name for messages (`"MinMaxObserver"`, ...).
    fn name(&self) -> &'static str;
    /// Update the statistics with one tensor. NaN / Inf, empty tensors or a bad channel axis
    /// give an `Err` and leave the state untouched.
    fn observe(&mut self, x: &Tensor) -> Result<()>;
    /// The parameters chosen from everything observed so far.
    fn qparams(&self) -> Result<TensorQParams>;
    /// Forget everything observed.
    fn reset(&mut self);
    /// The state as named tensors (names relative to the observer, e.g. `min_val`).
    fn state(&self) -> Result<HashMap<String, Tensor>>;
    /// Restore a state produced by [`Observer::state`].
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()>;
    /// The dtype whose range the qparams target.
    fn dtype(&self) -> QDType;
    /// The scheme of the produced qparams.
    fn scheme(&self) -> QScheme;
}
