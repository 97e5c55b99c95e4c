//! The scalar reference depthwise convolution: the definition every SIMD kernel is tested
//! against, written as plainly as the formula (canonical weights, explicit zero-point
//! subtraction, bounds check per tap).

use super::DwConv;

/// One output row `(b, oy)` of the reference: `out` holds `ow · C` bytes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn dwconv_row(
    dw: &DwConv,
    input: &[u8],
    h: usize,
    w: usize,
    b: usize,
    oy: usize,
    ow: usize,
    out: &mut [u8],
) {
    let g = &dw.geometry;
    let c_n = dw.channels;
    let taps = g.taps();
    let zp = dw.input_zero_point;
    for ox in 0..ow {
        for c in 0..c_n {
            let mut acc = dw.bias[c];
            for ky in 0..g.kernel_h {
                let iy = (oy * g.stride_h + ky * g.dilation_h) as isize - g.pad_h as isize;
                for kx in 0..g.kernel_w {
                    let ix = (ox * g.stride_w + kx * g.dilation_w) as isize - g.pad_w as isize;
                    let inside = iy >= 0 && (iy as usize) < h && ix >= 0 && (ix as usize) < w;
                    if !inside {
                        continue; // reads zp: contributes w · 0
                    }
                    let x = input[((b * h + iy as usize) * w + ix as usize) * c_n + c] as i32;
                    let wt = dw.weights[c * taps + ky * g.kernel_w + kx] as i32;
                    acc = acc.wrapping_add(wt * (x - zp));
                }
            }
            out[ox * c_n + c] = qat_core::requantize(
                acc,
                dw.multiplier[c],
                dw.output_zero_point,
                dw.qmin,
                dw.qmax,
            ) as u8;
        }
    }
}
