//! Choosing scale and zero point from an observed range — PyTorch's rules, bit for bit.

use crate::{QDType, QScheme, QuantError, Result};

/// `torch.finfo(torch.float32).eps`, PyTorch observers' default scale floor.
pub const DEFAULT_EPS: f32 = f32::EPSILON;

/// One affine mapping `real = (q - zero_point) * scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: i32,
}

impl QParams {
    /// A checked pair: `scale` finite and positive, `zero_point` inside `dtype`'s range.
    pub fn new(scale: f32, zero_point: i32, dtype: QDType) -> Result<Self> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(QuantError::InvalidScale(scale));
        }
        if zero_point < dtype.quant_min || zero_point > dtype.quant_max {
            return Err(QuantError::ZeroPointOutOfRange {
                zero_point,
                quant_min: dtype.quant_min,
                quant_max: dtype.quant_max,
            });
        }
        Ok(Self { scale, zero_point })
    }
}

/// The parameters a whole tensor is quantized with: one pair, or one per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorQParams {
    pub dtype: QDType,
    pub scheme: QScheme,
    pub scale: Vec<f32>,
    pub zero_point: Vec<i32>,
}

impl TensorQParams {
    /// A per-tensor set.
    pub fn per_tensor(dtype: QDType, scheme: QScheme, q: QParams) -> Self {
        Self {
            dtype,
            scheme,
            scale: vec![q.scale],
            zero_point: vec![q.zero_point],
        }
    }

    /// The pair of channel `c` (or the only pair of a per-tensor set).
    pub fn get(&self, c: usize) -> QParams {
        let i = if self.scale.len() == 1 { 0 } else { c };
        QParams {
            scale: self.scale[i],
            zero_point: self.zero_point[i],
        }
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.scale.len()
    }

    /// True when there are no pairs (a per-channel set over zero channels).
    pub fn is_empty(&self) -> bool {
        self.scale.is_empty()
    }
}

/// PyTorch's `UniformQuantizationObserverBase._calculate_qparams` for one channel.
///
/// The range is widened to include 0, the scale floored at `eps`; symmetric schemes fix the
/// zero point at 0 (signed) or 128 (unsigned default range; the midpoint of a customized
/// range). An unobserved range (`min = +inf`, `max = -inf`) gives PyTorch's fallback
/// `(1.0, 0)`. All arithmetic is f32, as in PyTorch.
///
/// ```
/// use qat_core::{choose_qparams, QDType, DEFAULT_EPS};
/// let q = choose_qparams(-1.0, 3.0, QDType::quint8(), false, DEFAULT_EPS).unwrap();
/// assert_eq!(q.zero_point, 64);
/// assert!((q.scale - 4.0 / 255.0).abs() < 1e-9);
/// ```
pub fn choose_qparams(
    min: f32,
    max: f32,
    dtype: QDType,
    symmetric: bool,
    eps: f32,
) -> Result<QParams> {
    if !(eps.is_finite() && eps > 0.0) {
        return Err(QuantError::InvalidEps(eps));
    }
    if min == f32::INFINITY && max == f32::NEG_INFINITY {
        return Ok(QParams {
            scale: 1.0,
            zero_point: 0,
        });
    }
    if !(min.is_finite() && max.is_finite()) {
        return Err(QuantError::NonFiniteRange { min, max });
    }
    if min > max {
        return Err(QuantError::MinGreaterThanMax { min, max });
    }
    let (qmin, qmax) = dtype.range();
    let min_neg = min.min(0.0);
    let max_pos = max.max(0.0);
    if symmetric {
        let max_abs = (-min_neg).max(max_pos);
        let scale = (max_abs / ((qmax - qmin) as f32 / 2.0)).max(eps);
        let zero_point = if dtype.is_unsigned() {
            if dtype.custom {
                (qmin + qmax).div_euclid(2)
            } else {
                128
            }
        } else {
            0
        };
        Ok(QParams { scale, zero_point })
    } else {
        let scale = ((max_pos - min_neg) / (qmax - qmin) as f32).max(eps);
        let zero_point = qmin - (min_neg / scale).round_ties_even() as i32;
        Ok(QParams {
            scale,
            zero_point: zero_point.clamp(qmin, qmax),
        })
    }
}

/// [`choose_qparams`] over per-channel ranges.
pub fn choose_qparams_per_channel(
    min: &[f32],
    max: &[f32],
    dtype: QDType,
    scheme: QScheme,
    eps: f32,
) -> Result<TensorQParams> {
    if min.len() != max.len() {
        return Err(QuantError::LengthMismatch {
            what: "per-channel max",
            expected: min.len(),
            got: max.len(),
        });
    }
    let mut scale = Vec::with_capacity(min.len());
    let mut zero_point = Vec::with_capacity(min.len());
    for (&lo, &hi) in min.iter().zip(max) {
        let q = choose_qparams(lo, hi, dtype, scheme.is_symmetric(), eps)?;
        scale.push(q.scale);
        zero_point.push(q.zero_point);
    }
    Ok(TensorQParams {
        dtype,
        scheme,
        scale,
        zero_point,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_always_includes_zero() {
        let q = choose_qparams(2.0, 4.0, QDType::quint8(), false, DEFAULT_EPS).unwrap();
        assert_eq!(q.zero_point, 0);
        assert_eq!(q.scale, 4.0 / 255.0);
        let q = choose_qparams(-4.0, -2.0, QDType::quint8(), false, DEFAULT_EPS).unwrap();
        assert_eq!(q.zero_point, 255);
    }

    #[test]
    fn symmetric_zero_points() {
        let q = choose_qparams(-1.0, 2.0, QDType::qint8(), true, DEFAULT_EPS).unwrap();
        assert_eq!(q.zero_point, 0);
        assert_eq!(q.scale, 2.0 / 127.5);
        let q = choose_qparams(-1.0, 2.0, QDType::quint8(), true, DEFAULT_EPS).unwrap();
        assert_eq!(q.zero_point, 128);
        let u4 = QDType::unsigned(4).unwrap();
        let q = choose_qparams(-1.0, 2.0, u4, true, DEFAULT_EPS).unwrap();
        assert_eq!(q.zero_point, 7);
    }

    #[test]
    fn degenerate_ranges() {
        let q = choose_qparams(0.0, 0.0, QDType::quint8(), false, DEFAULT_EPS).unwrap();
        assert_eq!((q.scale, q.zero_point), (DEFAULT_EPS, 0));
        let q = choose_qparams(
            f32::INFINITY,
            f32::NEG_INFINITY,
            QDType::quint8(),
            false,
            DEFAULT_EPS,
        )
        .unwrap();
        assert_eq!((q.scale, q.zero_point), (1.0, 0));
    }

    #[test]
    fn bad_ranges_are_errors() {
        let d = QDType::quint8();
        assert!(choose_qparams(1.0, -1.0, d, false, DEFAULT_EPS).is_err());
        assert!(choose_qparams(f32::NAN, 1.0, d, false, DEFAULT_EPS).is_err());
        assert!(choose_qparams(0.0, f32::INFINITY, d, false, DEFAULT_EPS).is_err());
        assert!(choose_qparams(0.0, 1.0, d, false, 0.0).is_err());
        assert!(
            choose_qparams_per_channel(&[0.0], &[], d, QScheme::PerTensorAffine, 1e-7).is_err()
        );
    }

    #[test]
    fn qparams_are_checked() {
        let d = QDType::quint8();
        assert!(QParams::new(0.0, 0, d).is_err());
        assert!(QParams::new(f32::NAN, 0, d).is_err());
        assert!(QParams::new(0.1, 256, d).is_err());
        assert!(QParams::new(0.1, 255, d).is_ok());
    }
}
