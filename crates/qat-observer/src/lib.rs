//! # qat-observer — choosing quantization parameters from data
//!
//! Observers watch tensors and produce [`TensorQParams`] with PyTorch's exact rules.

use std::collections::HashMap;

use candle_core::Tensor;
pub use qat_core::{QDType, QParams, QScheme, TensorQParams};

mod error;
pub use error::{ObserverError, Result};

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
