//! AVX-512 VNNI depthwise kernel that multiplies four horizontal taps per instruction.
//!
//! For a block of 16 channels and one input row, a *quad row* holds, for every padded x
//! position `j`, 16 dwords whose four bytes are the channel's input at `j, j+1, j+2, j+3`
//! (the input zero point outside the image). One `vpdpbusd` of a quad against the packed
//! weights `[w(ky, kx..kx+3)]` (zero beyond the kernel width) then adds four exact u8 × i8
//! products per channel into its i32 lane — no saturation (`vpdpbusd`, not `vpdpbusds`).
//! A 3×3 kernel costs 3 instructions per output pixel and channel block instead of 9.
//!
//! Quad rows live in a ring of `(kh - 1)·dilation_h + 1` slots, built once per input row and
//! reused by every output row that reads it, so a band of output rows builds each of its input
//! rows once per channel block. Padded taps read the zero point, which the folded bias
//! cancels, exactly as in the other kernels.

use std::arch::x86_64::*;

use super::DwConv;
use crate::conv::Conv2dGeometry;
use crate::x86_64::requant::{narrow_u8_avx512, requant_avx512};

/// Weights packed as `[ky][quad][C padded to 16]` dwords of four i8 taps `kx = 4·quad + 0..3`.
pub(super) fn pack_quads(dw_weights: &[i8], c: usize, kh: usize, kw: usize) -> Vec<i32> {
    let cp = c.div_ceil(super::BLOCK) * super::BLOCK;
    let quads = kw.div_ceil(4);
    let mut out = vec![0i32; kh * quads * cp];
    for ch in 0..c {
        for ky in 0..kh {
            for q in 0..quads {
                let mut bytes = [0u8; 4];
                for (i, b) in bytes.iter_mut().enumerate() {
                    let kx = 4 * q + i;
                    if kx < kw {
                        *b = dw_weights[(ch * kh + ky) * kw + kx] as u8;
                    }
                }
                out[(ky * quads + q) * cp + ch] = i32::from_le_bytes(bytes);
            }
        }
    }
    out
}

/// Quad positions a row needs: the last output's last quad starts at (ow-1)·sw + 4·(quads-1).
fn quad_width(g: &Conv2dGeometry, ow: usize) -> usize {
    (ow - 1) * g.stride_w + 4 * g.kernel_w.div_ceil(4)
}

/// Scratch bytes of one band: the ring of quad rows and the zero-point quad row.
pub(super) fn scratch_bytes(g: &Conv2dGeometry, ow: usize) -> usize {
    let span = (g.kernel_h - 1) * g.dilation_h + 1;
    (span + 1) * quad_width(g, ow) * 16 * 4
}

/// Output rows `rows` (flattened `b·oh + oy`); `out` holds exactly those rows.
///
/// # Safety
/// AVX-512F/BW/VL and VNNI must be supported; `dw.packed_quads` packed for its geometry
/// (dilation_w = 1, kernel_w ≤ 8, row span ≤ `MAX_QUAD_SPAN`); `input` holds the whole
/// `[n][h][w][C]` tensor and `rows` lie inside `n·oh`; `ow` / `oh` are the output size for
/// `h × w`; `scratch` holds [`scratch_bytes`] bytes, 4-byte aligned.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn rows_avx512_quad(
    dw: &DwConv,
    input: &[u8],
    (h, w, oh, ow): (usize, usize, usize, usize),
    rows: std::ops::Range<usize>,
    out: &mut [u8],
    scratch: &mut [u8],
) {
    let g = &dw.geometry;
    let c = dw.channels;
    let cp = c.div_ceil(super::BLOCK) * super::BLOCK;
    let (kh, kw) = (g.kernel_h, g.kernel_w);
    let quads = kw.div_ceil(4);
    let qw = quad_width(g, ow);
    let span = (kh - 1) * g.dilation_h + 1;
    debug_assert!(span <= super::MAX_QUAD_SPAN && kh * quads <= 16);
    // SAFETY: every bit pattern is a valid i32; the caller aligned the scratch.
    let (_, scratch, _) = unsafe { scratch.align_to_mut::<i32>() };
    let (ring, zero_rows) = scratch.split_at_mut(span * qw * 16);
    // Rows above / below the image are all zero point: one shared quad row serves them.
    let zp_quad = i32::from_le_bytes([dw.input_zero_point as u8; 4]);
    zero_rows[..qw * 16].fill(zp_quad);
    // With a stride dividing 4, every quad read starts at a multiple of the stride.
    let build_step = if 4 % g.stride_w == 0 { g.stride_w } else { 1 };
    let zp = _mm512_set1_epi32(dw.output_zero_point);
    let lo = _mm512_set1_ps((dw.qmin - dw.output_zero_point) as f32);
    let hi = _mm512_set1_ps((dw.qmax - dw.output_zero_point) as f32);
    let zp_in = _mm_set1_epi8(dw.input_zero_point as u8 as i8);
    let out_ptr = out.as_mut_ptr();
    let mut qrows = [zero_rows.as_ptr(); super::MAX_QUAD_SPAN];
    let mut cb = 0;
    while cb < c {
        let n = (c - cb).min(16);
        let mask: __mmask16 = if n == 16 { !0 } else { (1u16 << n) - 1 };
        let mut tags: [Option<(usize, isize)>; super::MAX_QUAD_SPAN] = [None; super::MAX_QUAD_SPAN];
        // SAFETY: `cb + 16 <= cp` bounds the packed loads (arrays of `cp` / `kh·quads·cp`
        // entries); quad-row stores and loads stay inside `ring` (`span·qw` slots of 16
        // dwords, indices checked by construction below); input loads are masked to the `n`
        // valid channels of an in-bounds pixel; output stores are masked to `n` channels at
        // `((oy - oy0)·ow + ox)·c + cb`, inside `out`.
        unsafe {
            let mut wv = [_mm512_setzero_si512(); 16];
            for (i, v) in wv.iter_mut().enumerate().take(kh * quads) {
                *v = _mm512_loadu_si512(dw.packed_quads.as_ptr().add(i * cp + cb).cast());
            }
            let bias = _mm512_loadu_si512(dw.packed_bias.as_ptr().add(cb).cast());
            let mult = _mm512_loadu_ps(dw.multiplier.as_ptr().add(cb));
            for row in rows.clone() {
                let (b, oy) = (row / oh, row % oh);
                let iy0 = (oy * g.stride_h) as isize - g.pad_h as isize;
                for ky in 0..kh {
                    let iy = iy0 + (ky * g.dilation_h) as isize;
                    let slot = iy.rem_euclid(span as isize) as usize;
                    if iy >= 0 && (iy as usize) < h && tags[slot] != Some((b, iy)) {
                        let qrow = ring.as_mut_ptr().add(slot * qw * 16);
                        let rp = RowPlace {
                            b,
                            iy: iy as usize,
                            cb,
                            mask,
                            step: build_step,
                        };
                        build_quad_row(dw, input, h, w, rp, zp_in, qw, qrow);
                        tags[slot] = Some((b, iy));
                    }
                }
                for (ky, q) in qrows.iter_mut().enumerate().take(kh) {
                    let iy = iy0 + (ky * g.dilation_h) as isize;
                    *q = if iy >= 0 && (iy as usize) < h {
                        let slot = iy.rem_euclid(span as isize) as usize;
                        ring.as_ptr().add(slot * qw * 16)
                    } else {
                        zero_rows.as_ptr()
                    };
                }
                let qrows = &qrows[..kh];
                let orow = out_ptr.add((row - rows.start) * ow * c + cb);
                let step = g.stride_w * 16;
                match (kh, quads) {
                    (3, 1) => {
                        let r = [qrows[0], qrows[1], qrows[2]];
                        quad_row::<3, 1>(r, &wv, ow, step, orow, c, mask, bias, mult, zp, lo, hi)
                    }
                    (5, 2) => {
                        let r = [qrows[0], qrows[1], qrows[2], qrows[3], qrows[4]];
                        quad_row::<5, 2>(r, &wv, ow, step, orow, c, mask, bias, mult, zp, lo, hi)
                    }
                    _ => {
                        for ox in 0..ow {
                            let mut acc = bias;
                            for (ky, &qr) in qrows.iter().enumerate() {
                                for q in 0..quads {
                                    let x = _mm512_loadu_si512(qr.add(ox * step + q * 64).cast());
                                    acc = _mm512_dpbusd_epi32(acc, x, wv[ky * quads + q]);
                                }
                            }
                            let r = requant_avx512(acc, mult, zp, lo, hi);
                            _mm_mask_storeu_epi8(
                                orow.add(ox * c).cast(),
                                mask,
                                narrow_u8_avx512(r),
                            );
                        }
                    }
                }
            }
        }
        cb += 16;
    }
}

/// One output row for a fixed kernel shape (`KH` rows of `Q` quads): the weights stay in
/// registers, two accumulator chains hide the `vpdpbusd` latency.
///
/// # Safety
/// AVX-512 VNNI; each `rows[ky]` addresses a built quad row with at least
/// `(ow - 1)·step/16 + 4·Q` positions; `orow + ox·c` is writable for the `mask`ed channels.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn quad_row<const KH: usize, const Q: usize>(
    rows: [*const i32; KH],
    wv: &[__m512i],
    ow: usize,
    step: usize,
    orow: *mut u8,
    c: usize,
    mask: __mmask16,
    bias: __m512i,
    mult: __m512,
    zp: __m512i,
    lo: __m512,
    hi: __m512,
) {
    let w: [[__m512i; Q]; KH] = std::array::from_fn(|ky| std::array::from_fn(|q| wv[ky * Q + q]));
    for ox in 0..ow {
        let mut a0 = bias;
        let mut a1 = _mm512_setzero_si512();
        for (ky, (row, wk)) in rows.iter().zip(&w).enumerate() {
            for (q, wq) in wk.iter().enumerate() {
                // SAFETY: position `ox·step/16 + 4q` lies inside the quad row (caller).
                let x = unsafe { _mm512_loadu_si512(row.add(ox * step + q * 64).cast()) };
                if (ky * Q + q).is_multiple_of(2) {
                    a0 = _mm512_dpbusd_epi32(a0, x, *wq);
                } else {
                    a1 = _mm512_dpbusd_epi32(a1, x, *wq);
                }
            }
        }
        let r = requant_avx512(_mm512_add_epi32(a0, a1), mult, zp, lo, hi);
        // SAFETY: masked store of the valid channels of output pixel `ox` (caller).
        unsafe { _mm_mask_storeu_epi8(orow.add(ox * c).cast(), mask, narrow_u8_avx512(r)) };
    }
}

/// Where a quad row comes from: image `b`, input row `iy` (inside the image), channels
/// `cb..cb + 16` (masked to the valid ones), building every `step`-th position.
#[derive(Clone, Copy)]
struct RowPlace {
    b: usize,
    iy: usize,
    cb: usize,
    mask: __mmask16,
    step: usize,
}

/// Fill one quad row (`qw` positions × 16 dwords at `row`; positions that are multiples of
/// `p.step`, the only ones the kernel reads).
///
/// # Safety
/// As [`rows_avx512_quad`]; `p.iy < h`, `p.b` inside the input; `row` must address `qw · 16`
/// writable i32.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn build_quad_row(
    dw: &DwConv,
    input: &[u8],
    h: usize,
    w: usize,
    p: RowPlace,
    zp_in: __m128i,
    qw: usize,
    row: *mut i32,
) {
    let c = dw.channels;
    let pad = dw.geometry.pad_w as isize;
    let base = ((p.b * h + p.iy) * w) * c + p.cb;
    // Padded position j is input x = j - pad.
    let pixel = |j: usize| -> __m512i {
        let x = j as isize - pad;
        let v = if x >= 0 && (x as usize) < w {
            // SAFETY: pixel `x` of row `iy` holds `c` bytes from `base + x·c - cb`; only the
            // `n` unmasked channels from `cb` are read.
            unsafe {
                _mm_maskz_loadu_epi8(p.mask, input.as_ptr().add(base + x as usize * c).cast())
            }
        } else {
            zp_in
        };
        _mm512_cvtepu8_epi32(v)
    };
    // A pair holds pixels j, j+1 in bytes 0, 1 of each lane; a quad is pair(j) | pair(j+2) << 16
    // (bytes never overlap: each widened pixel is ≤ 255).
    let pair = |j: usize| _mm512_or_si512(pixel(j), _mm512_slli_epi32::<8>(pixel(j + 1)));
    let quad = |lo: __m512i, hi: __m512i| _mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi));
    match p.step {
        1 => {
            let (mut a, mut b) = (pair(0), pair(1));
            for j in 0..qw {
                let next = pair(j + 2);
                // SAFETY: `j < qw`, so the 16 dwords at `row + 16·j` are inside the row.
                unsafe { _mm512_storeu_si512(row.add(j * 16).cast(), quad(a, next)) };
                (a, b) = (b, next);
            }
            let _ = b;
        }
        2 => {
            let mut a = pair(0);
            for j in (0..qw).step_by(2) {
                let next = pair(j + 2);
                // SAFETY: `j < qw`, as above.
                unsafe { _mm512_storeu_si512(row.add(j * 16).cast(), quad(a, next)) };
                a = next;
            }
        }
        step => {
            for j in (0..qw).step_by(step) {
                // SAFETY: `j < qw`, as above.
                unsafe { _mm512_storeu_si512(row.add(j * 16).cast(), quad(pair(j), pair(j + 2))) };
            }
        }
    }
}
