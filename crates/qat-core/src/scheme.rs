//! How a tensor's values map to quantization parameters.

/// Per-tensor or per-channel (along `axis`), affine (free zero point) or symmetric.
///
/// ```
/// use qat_core::QScheme;
/// let s = QScheme::PerChannelSymmetric { axis: 0 };
/// assert!(s.is_symmetric());
/// assert_eq!(s.axis(), Some(0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QScheme {
    PerTensorAffine,
    PerTensorSymmetric,
    PerChannelAffine { axis: usize },
    PerChannelSymmetric { axis: usize },
}

impl QScheme {
    /// Symmetric schemes fix the zero point (0, or the unsigned midpoint).
    pub const fn is_symmetric(&self) -> bool {
        matches!(
            self,
            QScheme::PerTensorSymmetric | QScheme::PerChannelSymmetric { .. }
        )
    }

    /// The channel axis of a per-channel scheme.
    pub const fn axis(&self) -> Option<usize> {
        match self {
            QScheme::PerChannelAffine { axis } | QScheme::PerChannelSymmetric { axis } => {
                Some(*axis)
            }
            _ => None,
        }
    }

    /// Whether this scheme has one qparams pair per channel.
    pub const fn is_per_channel(&self) -> bool {
        self.axis().is_some()
    }
}
