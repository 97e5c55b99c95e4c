//! Depthwise conv2d on planes large enough for the kernels' 64-element tap blocks: interior
//! blocks (every tap in range), edge blocks (some taps out of range) and a ragged last block,
//! with several images stacked per channel group, strides 1–3, dilation 1–2 and 3×3 / 5×5
//! kernels. Values and all gradients against candle's grouped conv (`ops_depthwise.rs` checks
//! the small shapes against finite differences too).

mod ops_util;

use candle_core::Result;
use ops_util::{assert_close, grads_of, randn};
use qat_graph::ops::{depthwise_conv2d_dilated, depthwise_conv2d_slow};

/// (n, c, h, w, k, stride, padding, dilation)
type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

const CASES: &[Case] = &[
    // 28×28 stride 1 (MobileNetV2's hot shape), 5 images per group: spans of several
    // thousand elements, most blocks interior.
    (5, 3, 28, 28, 3, 1, 1, 1),
    // Stride 2: four phase planes, taps in different phases; ragged widths.
    (4, 2, 29, 27, 3, 2, 1, 1),
    // Dilation 2 and a 5×5 kernel: large tap shifts, many edge blocks.
    (3, 2, 23, 31, 5, 1, 2, 2),
    // Stride 3 without padding, one image.
    (1, 3, 40, 33, 3, 3, 0, 1),
    // Exactly 64 outputs per row span edge: 8×8 output, 1 image.
    (1, 1, 8, 8, 3, 1, 1, 1),
    // Planes big enough for groups of 17 then 3 images (16 then 2 at stride 2): a task's
    // scratch changes layout from group to group, channel after channel, so the zero padding
    // its buffers keep between groups must be rewritten whenever the layout changes.
    (20, 3, 60, 60, 3, 1, 1, 1),
    (18, 3, 61, 61, 3, 2, 1, 1),
];

#[test]
fn ops_depthwise_tap_blocks_match_candle() -> Result<()> {
    for (ci, &(n, c, h, w, k, s, p, d)) in CASES.iter().enumerate() {
        let seed = 9100 + 10 * ci as u64;
        let inputs = [
            randn(seed, &[n, c, h, w])?,
            randn(seed + 1, &[c, 1, k, k])?,
            randn(seed + 2, &[c])?,
        ];
        let run = |slow: bool| {
            grads_of(&inputs, seed + 3, |t| {
                if slow {
                    depthwise_conv2d_slow(&t[0], &t[1], Some(&t[2]), s, p, d)
                } else {
                    depthwise_conv2d_dilated(&t[0], &t[1], Some(&t[2]), s, p, d)
                }
            })
        };
        let (yf, gf) = run(false)?;
        let (ys, gs) = run(true)?;
        let what = format!("case {ci} {:?}", CASES[ci]);
        assert_close(&yf, &ys, 1e-5, &format!("{what}: output"));
        for (i, (a, b)) in gf.iter().zip(&gs).enumerate() {
            assert_close(a, b, 1e-4, &format!("{what}: gradient of input {i}"));
        }
    }
    Ok(())
}
