//! Quantized integer ranges.

use crate::{QuantError, Result};

/// The integer type a quantized value is stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signedness {
    Unsigned,
    Signed,
}

/// A quantized integer range `[quant_min, quant_max]` and the storage type behind it.
///
/// PyTorch distinguishes a dtype's default range from a "customized" one (passed as
/// `quant_min` / `quant_max`): with a customized range the symmetric unsigned zero point is
/// the midpoint `(quant_min + quant_max) / 2`, with the default range it is 128. `custom`
/// carries that distinction.
///
/// ```
/// use qat_core::QDType;
/// assert_eq!(QDType::quint8().range(), (0, 255));
/// assert_eq!(QDType::qint8().reduce_range().range(), (-64, 63));
/// assert_eq!(QDType::signed(4).unwrap().range(), (-8, 7));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QDType {
    pub signedness: Signedness,
    pub quant_min: i32,
    pub quant_max: i32,
    /// The range was given explicitly (PyTorch's `has_customized_qrange`).
    pub custom: bool,
}

impl QDType {
    /// `torch.quint8`: `[0, 255]`.
    pub const fn quint8() -> Self {
        Self {
            signedness: Signedness::Unsigned,
            quant_min: 0,
            quant_max: 255,
            custom: false,
        }
    }

    /// `torch.qint8`: `[-128, 127]`.
    pub const fn qint8() -> Self {
        Self {
            signedness: Signedness::Signed,
            quant_min: -128,
            quant_max: 127,
            custom: false,
        }
    }

    /// An unsigned range of `bits` bits, `[0, 2^bits - 1]` (a customized range below 8 bits).
    pub fn unsigned(bits: u32) -> Result<Self> {
        check_bits(bits)?;
        if bits == 8 {
            return Ok(Self::quint8());
        }
        Self::custom(Signedness::Unsigned, 0, (1 << bits) - 1)
    }

    /// A signed range of `bits` bits, `[-2^(bits-1), 2^(bits-1) - 1]`.
    pub fn signed(bits: u32) -> Result<Self> {
        check_bits(bits)?;
        if bits == 8 {
            return Ok(Self::qint8());
        }
        let half = 1 << (bits - 1);
        Self::custom(Signedness::Signed, -half, half - 1)
    }

    /// An explicit `[quant_min, quant_max]` stored in a u8 or i8.
    ///
    /// The range must contain 0 and fit the storage type (PyTorch's rule).
    pub fn custom(signedness: Signedness, quant_min: i32, quant_max: i32) -> Result<Self> {
        let (lo, hi) = match signedness {
            Signedness::Unsigned => (0, 255),
            Signedness::Signed => (-128, 127),
        };
        let bad = |reason| {
            Err(QuantError::InvalidRange {
                quant_min,
                quant_max,
                reason,
            })
        };
        if quant_min > 0 || quant_max < 0 {
            return bad("the range must include 0");
        }
        if quant_min >= quant_max {
            return bad("quant_min must be < quant_max");
        }
        if quant_min < lo || quant_max > hi {
            return bad("the range must fit the storage type");
        }
        Ok(Self {
            signedness,
            quant_min,
            quant_max,
            custom: true,
        })
    }

    /// PyTorch's `reduce_range`: one bit less (`quant_min / 2`, `quant_max / 2`, flooring).
    ///
    /// Kept for parity with PyTorch's x86 / fbgemm presets; our kernels never need it.
    pub fn reduce_range(self) -> Self {
        Self {
            quant_min: self.quant_min.div_euclid(2),
            quant_max: self.quant_max.div_euclid(2),
            ..self
        }
    }

    /// `(quant_min, quant_max)`.
    pub const fn range(&self) -> (i32, i32) {
        (self.quant_min, self.quant_max)
    }

    /// Number of representable levels minus one (`quant_max - quant_min`).
    pub const fn span(&self) -> i32 {
        self.quant_max - self.quant_min
    }

    /// Whether the storage type is unsigned.
    pub const fn is_unsigned(&self) -> bool {
        matches!(self.signedness, Signedness::Unsigned)
    }
}

fn check_bits(bits: u32) -> Result<()> {
    if (2..=8).contains(&bits) {
        Ok(())
    } else {
        Err(QuantError::InvalidBits(bits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths() {
        assert_eq!(QDType::unsigned(4).unwrap().range(), (0, 15));
        assert_eq!(QDType::signed(2).unwrap().range(), (-2, 1));
        assert_eq!(QDType::signed(7).unwrap().range(), (-64, 63));
        assert!(QDType::unsigned(7).unwrap().custom);
        assert!(!QDType::unsigned(8).unwrap().custom);
        assert_eq!(QDType::unsigned(9), Err(QuantError::InvalidBits(9)));
        assert_eq!(QDType::signed(1), Err(QuantError::InvalidBits(1)));
    }

    #[test]
    fn reduce_range_matches_pytorch() {
        assert_eq!(QDType::quint8().reduce_range().range(), (0, 127));
        assert_eq!(QDType::qint8().reduce_range().range(), (-64, 63));
    }

    #[test]
    fn custom_ranges_are_checked() {
        assert!(QDType::custom(Signedness::Unsigned, 0, 300).is_err());
        assert!(QDType::custom(Signedness::Signed, 1, 10).is_err());
        assert!(QDType::custom(Signedness::Signed, 5, 5).is_err());
        assert_eq!(
            QDType::custom(Signedness::Signed, -127, 127)
                .unwrap()
                .range(),
            (-127, 127)
        );
    }
}
