//! What every observer is configured with.

use qat_core::{QDType, QScheme, DEFAULT_EPS};

use crate::{ObserverError, Result};

/// The target of an observer: the quantized range, the scheme and the scale floor.
///
/// `reduce_range` is not a separate flag: pass `QDType::quint8().reduce_range()` (or call
/// [`ObserverConfig::with_reduce_range`]), exactly the range PyTorch's `reduce_range=True`
/// selects. For per-channel observers the channel axis is the scheme's axis.
///
/// ```
/// use qat_observer::{ObserverConfig, QDType, QScheme};
/// let cfg = ObserverConfig::new(QDType::qint8(), QScheme::PerChannelSymmetric { axis: 0 });
/// assert_eq!(cfg.eps, f32::EPSILON);
/// let reduced = ObserverConfig::default().with_reduce_range();
/// assert_eq!(reduced.dtype.range(), (0, 127));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ObserverConfig {
    /// The quantized range the qparams target.
    pub dtype: QDType,
    /// Per-tensor or per-channel, affine or symmetric.
    pub scheme: QScheme,
    /// Lower bound of the scale (PyTorch's `eps`, default `f32::EPSILON`).
    pub eps: f32,
}

impl Default for ObserverConfig {
    /// PyTorch's default activation observer target: quint8, per-tensor affine.
    fn default() -> Self {
        Self::new(QDType::quint8(), QScheme::PerTensorAffine)
    }
}

impl ObserverConfig {
    /// A config with PyTorch's default `eps`.
    pub fn new(dtype: QDType, scheme: QScheme) -> Self {
        Self {
            dtype,
            scheme,
            eps: DEFAULT_EPS,
        }
    }

    /// The same config with another scale floor.
    pub fn with_eps(self, eps: f32) -> Self {
        Self { eps, ..self }
    }

    /// The same config with PyTorch's `reduce_range` applied to the dtype.
    pub fn with_reduce_range(self) -> Self {
        Self {
            dtype: self.dtype.reduce_range(),
            ..self
        }
    }

    /// Checks `eps` and that the scheme suits the observer (`per_channel` or per-tensor).
    pub(crate) fn check(&self, observer: &'static str, per_channel: bool) -> Result<()> {
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(ObserverError::Invalid {
                observer,
                msg: format!("eps must be finite and > 0, got {}", self.eps),
            });
        }
        if self.scheme.is_per_channel() != per_channel {
            let want = if per_channel {
                "a per-channel"
            } else {
                "a per-tensor"
            };
            return Err(ObserverError::Invalid {
                observer,
                msg: format!("needs {want} scheme, got {:?}", self.scheme),
            });
        }
        Ok(())
    }
}

/// Checks a moving-average constant: PyTorch's update `m += c * (x - m)` needs `0 < c <= 1`.
pub(crate) fn check_averaging_constant(observer: &'static str, c: f32) -> Result<()> {
    if c.is_finite() && c > 0.0 && c <= 1.0 {
        Ok(())
    } else {
        Err(ObserverError::Invalid {
            observer,
            msg: format!("averaging_constant must be in (0, 1], got {c}"),
        })
    }
}
