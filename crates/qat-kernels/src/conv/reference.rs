//! The scalar reference convolution: the plain formula over canonical OIHW weights, the
//! definition the GEMM-based and depthwise paths are tested against.

use super::Conv2d;

/// Run the reference: `input` NHWC `[n][h][w][C_in]` → `out` `[n][oh][ow][C_out]`. The caller
/// has validated the lengths.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d_reference(
    conv: &Conv2d,
    input: &[u8],
    n: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    out: &mut [u8],
) {
    let g = &conv.geometry;
    let (ci, co) = (conv.in_channels, conv.out_channels);
    let (cg, og) = (ci / conv.groups, co / conv.groups);
    let zp = conv.input.zero_point;
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for oc in 0..co {
                    let grp = oc / og;
                    let mut acc = conv.bias.as_ref().map_or(0, |v| v[oc]);
                    for ic in 0..cg {
                        for ky in 0..g.kernel_h {
                            let iy =
                                (oy * g.stride_h + ky * g.dilation_h) as isize - g.pad_h as isize;
                            for kx in 0..g.kernel_w {
                                let ix = (ox * g.stride_w + kx * g.dilation_w) as isize
                                    - g.pad_w as isize;
                                if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= w {
                                    continue; // reads zp: contributes w · 0
                                }
                                let x = input
                                    [((b * h + iy as usize) * w + ix as usize) * ci + grp * cg + ic]
                                    as i32;
                                let wt = conv.weights
                                    [((oc * cg + ic) * g.kernel_h + ky) * g.kernel_w + kx]
                                    as i32;
                                acc = acc.wrapping_add(wt * (x - zp));
                            }
                        }
                    }
                    out[((b * oh + oy) * ow + ox) * co + oc] = conv.requant[oc].apply(acc) as u8;
                }
            }
        }
    }
}
