//! Per-output-channel constants that the direct convolutions (depthwise, stem) compute at
//! pack time from canonical weights `[channels][per_channel]`.

use crate::error::{check_scale, KernelError, Result};
use qat_core::QParams;

/// Channel `c`'s bias with the input zero point folded in (`bias[c] − zp_in·Σw[c]`, wrapping
/// as the i32 accumulator does), its requantization multiplier, and whether every channel
/// passes [`crate::gemm::products_fit_i32`] (the epilogue's fast path).
pub(crate) struct FoldedChannels {
    pub bias: Vec<i32>,
    pub multiplier: Vec<f32>,
    pub fits_i32: bool,
}

/// [`FoldedChannels`] of `weights` (`weight_scales.len()` channels of `per_channel` values);
/// `bias` absent = 0. `Err` on a bad weight scale or a multiplier that is not finite and > 0.
pub(crate) fn fold_channels(
    weights: &[i8],
    per_channel: usize,
    bias: Option<&[i32]>,
    input: QParams,
    weight_scales: &[f32],
    output_scale: f32,
) -> Result<FoldedChannels> {
    let channels = weight_scales.len();
    let mut folded = FoldedChannels {
        bias: Vec::with_capacity(channels),
        multiplier: Vec::with_capacity(channels),
        fits_i32: true,
    };
    for (c, &ws) in weight_scales.iter().enumerate() {
        check_scale("weight scale", ws)?;
        let w = &weights[c * per_channel..(c + 1) * per_channel];
        let sum: i32 = w.iter().map(|&v| v as i32).sum();
        let b = bias
            .map_or(0, |b| b[c])
            .wrapping_sub(input.zero_point.wrapping_mul(sum));
        let m = qat_core::requant_multiplier(input.scale, ws, output_scale);
        if !(m.is_finite() && m > 0.0) {
            return Err(KernelError::Scale {
                what: "requantization multiplier in_scale·w_scale/out_scale",
                value: m,
            });
        }
        let abs_w: i64 = w.iter().map(|&v| (v as i64).abs()).sum();
        folded.fits_i32 &= crate::gemm::products_fit_i32(b, abs_w, m);
        folded.bias.push(b);
        folded.multiplier.push(m);
    }
    Ok(folded)
}
