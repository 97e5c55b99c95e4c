//! Convolution geometry: kernel size, stride, padding, dilation, and the output size they give.

use crate::error::{KernelError, Result};

/// The spatial parameters of a 2-D convolution (PyTorch's `Conv2d` arguments).
///
/// Padding is symmetric per axis, as in PyTorch; a padded position reads the input zero point
/// (real 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conv2dGeometry {
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub pad_h: usize,
    pub pad_w: usize,
    pub dilation_h: usize,
    pub dilation_w: usize,
}

impl Conv2dGeometry {
    /// A square kernel with the same stride and padding on both axes, dilation 1.
    ///
    /// ```
    /// use qat_kernels::conv::Conv2dGeometry;
    /// let g = Conv2dGeometry::square(3, 2, 1);
    /// assert_eq!(g.output_hw(112, 112).unwrap(), (56, 56));
    /// ```
    pub const fn square(kernel: usize, stride: usize, pad: usize) -> Self {
        Conv2dGeometry {
            kernel_h: kernel,
            kernel_w: kernel,
            stride_h: stride,
            stride_w: stride,
            pad_h: pad,
            pad_w: pad,
            dilation_h: 1,
            dilation_w: 1,
        }
    }

    /// Number of taps (`kernel_h * kernel_w`).
    pub const fn taps(&self) -> usize {
        self.kernel_h * self.kernel_w
    }

    /// `Err` unless kernel, stride and dilation are ≥ 1 and no value is absurdly large.
    pub fn validate(&self) -> Result<()> {
        let fields = [
            ("kernel_h", self.kernel_h),
            ("kernel_w", self.kernel_w),
            ("stride_h", self.stride_h),
            ("stride_w", self.stride_w),
            ("dilation_h", self.dilation_h),
            ("dilation_w", self.dilation_w),
        ];
        for (name, v) in fields {
            if v == 0 {
                return Err(KernelError::Param(format!("{name} must be >= 1, got 0")));
            }
        }
        for (name, v) in fields
            .into_iter()
            .chain([("pad_h", self.pad_h), ("pad_w", self.pad_w)])
        {
            if v > 1 << 16 {
                return Err(KernelError::Param(format!("{name} = {v} is too large")));
            }
        }
        Ok(())
    }

    /// The output height and width for an `h × w` input (PyTorch's formula), or `Err` when the
    /// dilated kernel does not fit in the padded input.
    pub fn output_hw(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        self.validate()?;
        let axis = |name: &str, size: usize, k: usize, s: usize, p: usize, d: usize| {
            let span = d * (k - 1) + 1;
            let padded = size + 2 * p;
            if size == 0 {
                return Err(KernelError::Shape(format!("input {name} is 0")));
            }
            if padded < span {
                return Err(KernelError::Param(format!(
                    "kernel {name} span {span} exceeds padded input {name} {padded}"
                )));
            }
            Ok((padded - span) / s + 1)
        };
        Ok((
            axis(
                "height",
                h,
                self.kernel_h,
                self.stride_h,
                self.pad_h,
                self.dilation_h,
            )?,
            axis(
                "width",
                w,
                self.kernel_w,
                self.stride_w,
                self.pad_w,
                self.dilation_w,
            )?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_sizes_follow_pytorch() {
        assert_eq!(
            Conv2dGeometry::square(3, 1, 1).output_hw(9, 11).unwrap(),
            (9, 11)
        );
        assert_eq!(
            Conv2dGeometry::square(3, 2, 1).output_hw(9, 11).unwrap(),
            (5, 6)
        );
        assert_eq!(
            Conv2dGeometry::square(5, 2, 2).output_hw(7, 7).unwrap(),
            (4, 4)
        );
        let mut g = Conv2dGeometry::square(3, 1, 0);
        g.dilation_h = 2;
        assert_eq!(g.output_hw(5, 5).unwrap(), (1, 3));
        assert!(g.output_hw(4, 5).is_err());
        assert!(Conv2dGeometry::square(3, 0, 1).output_hw(5, 5).is_err());
        assert!(Conv2dGeometry::square(3, 1, 1).output_hw(0, 5).is_err());
    }
}
