//! The argument checks [`Conv2d`](super::Conv2d) and [`StemConv`](super::StemConv) share:
//! operand lengths, quantization parameters, and the NHWC buffers of a run. Each caller keeps
//! its own words in the errors (a [`Names`] table), so a message still says which kernel
//! refused.

use super::Conv2dGeometry;
use crate::error::{check_len, check_scale, check_zero_point, KernelError, Result};
use qat_core::QParams;

/// What a convolution's errors call its operands.
pub(super) struct Names {
    pub weights: &'static str,
    pub weight_scales: &'static str,
    pub bias: &'static str,
    pub input_scale: &'static str,
    pub output_scale: &'static str,
    pub input_zero_point: &'static str,
    pub output_zero_point: &'static str,
    pub batch_zero: &'static str,
    pub size_overflow: &'static str,
    pub input: &'static str,
    pub output: &'static str,
}

/// The packing operands of a convolution with `c_out` output channels.
pub(super) struct Operands<'a> {
    /// Weights the layout implies (`C_out · C_in/groups · kh · kw`).
    pub expected_weights: usize,
    pub c_out: usize,
    pub weights: &'a [i8],
    pub weight_scales: &'a [f32],
    pub bias: Option<&'a [i32]>,
    pub input: QParams,
    pub output: QParams,
}

/// `Err` unless the weights, weight scales and bias have their lengths and the input / output
/// scales and u8 zero points are usable. The weight scales' values are the caller's to check
/// (each folds them into its multipliers).
pub(super) fn check_operands(names: &Names, o: &Operands) -> Result<()> {
    check_len(names.weights, o.expected_weights, o.weights.len())?;
    check_len(names.weight_scales, o.c_out, o.weight_scales.len())?;
    if let Some(b) = o.bias {
        check_len(names.bias, o.c_out, b.len())?;
    }
    check_scale(names.input_scale, o.input.scale)?;
    check_scale(names.output_scale, o.output.scale)?;
    check_zero_point(names.input_zero_point, o.input.zero_point, 0, 255)?;
    check_zero_point(names.output_zero_point, o.output.zero_point, 0, 255)
}

/// A run's NHWC shapes: the batch `n` of `h × w` images with `c_in` channels, `c_out`
/// channels out.
pub(super) struct Run {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c_in: usize,
    pub c_out: usize,
}

/// The output `(height, width)` of run `r`, or `Err` unless the batch is non-empty, the
/// geometry fits the input and the buffers hold exactly `[n][h][w][c_in]` and
/// `[n][oh][ow][c_out]` bytes.
pub(super) fn check_run(
    names: &Names,
    geometry: &Conv2dGeometry,
    r: &Run,
    input_len: usize,
    output_len: usize,
) -> Result<(usize, usize)> {
    if r.n == 0 {
        return Err(KernelError::Shape(names.batch_zero.into()));
    }
    let (oh, ow) = geometry.output_hw(r.h, r.w)?;
    let in_len =
        r.n.checked_mul(r.h)
            .and_then(|v| v.checked_mul(r.w))
            .and_then(|v| v.checked_mul(r.c_in))
            .ok_or_else(|| KernelError::Shape(names.size_overflow.into()))?;
    check_len(names.input, in_len, input_len)?;
    check_len(names.output, r.n * oh * ow * r.c_out, output_len)?;
    Ok((oh, ow))
}
