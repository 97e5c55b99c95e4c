//! im2col for NHWC u8: one row per output pixel, `[ky][kx][c]` within the row (so each tap
//! copies one contiguous channel run), padded positions filled with the input zero point
//! (real 0, which the GEMM's folded zero-point correction turns into an exact 0).

use super::Conv2dGeometry;
use rayon::prelude::*;

/// Shape of an NHWC input seen by one channel group.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Im2colInput<'a> {
    pub data: &'a [u8],
    pub h: usize,
    pub w: usize,
    /// Channels per input pixel (all groups).
    pub c: usize,
    /// First channel of the group and its channel count.
    pub c0: usize,
    pub cg: usize,
    pub zero_point: u8,
}

/// Fill `cols` (`n · oh · ow` rows of `taps · cg` bytes) for one group; `threads > 1` splits
/// the output rows over the current rayon pool.
pub(crate) fn im2col(
    x: Im2colInput,
    g: &Conv2dGeometry,
    oh: usize,
    ow: usize,
    cols: &mut [u8],
    threads: usize,
) {
    let k = g.taps() * x.cg;
    let row_bytes = ow * k;
    let fill = |r: usize, dst: &mut [u8]| {
        let (b, oy) = (r / oh, r % oh);
        for ox in 0..ow {
            let pix = &mut dst[ox * k..(ox + 1) * k];
            for ky in 0..g.kernel_h {
                let iy = (oy * g.stride_h + ky * g.dilation_h) as isize - g.pad_h as isize;
                for kx in 0..g.kernel_w {
                    let ix = (ox * g.stride_w + kx * g.dilation_w) as isize - g.pad_w as isize;
                    let t = ky * g.kernel_w + kx;
                    let d = &mut pix[t * x.cg..(t + 1) * x.cg];
                    if iy >= 0 && (iy as usize) < x.h && ix >= 0 && (ix as usize) < x.w {
                        let off = ((b * x.h + iy as usize) * x.w + ix as usize) * x.c + x.c0;
                        d.copy_from_slice(&x.data[off..off + x.cg]);
                    } else {
                        d.fill(x.zero_point);
                    }
                }
            }
        }
    };
    if threads <= 1 {
        for (r, dst) in cols.chunks_mut(row_bytes).enumerate() {
            fill(r, dst);
        }
    } else {
        cols.par_chunks_mut(row_bytes)
            .enumerate()
            .for_each(|(r, dst)| fill(r, dst));
    }
}
