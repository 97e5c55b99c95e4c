//! AVX-512 VNNI depthwise 3×3 kernel (stride 1 or 2 along x, undilated) over 64-channel
//! blocks.
//!
//! NHWC puts 64 channels of one pixel in one zmm. Interleaving the bytes of four
//! horizontally adjacent pixels `p0..p3` with `vpunpck{l,h}bw` then `vpunpck{l,h}wd` gives four
//! zmm `Q0..Q3` whose dwords hold `[p0, p1, p2, p3]` of one channel each (`Q_k`, 128-bit lane
//! `L`, dword `d` = channel `16L + 4k + d`), so one exact `vpdpbusd` (u8 × i8, no saturation)
//! adds three taps of a kernel row for 16 channels. The weights are packed in that permuted
//! channel order; at stride 1 the same quad serves the next output pixel too, shifted right by
//! one byte per dword (`vpsrld 8`: `[p1, p2, p3, 0]`, exact against the weights' zero fourth
//! byte), so a quad is built once per two outputs and one weight set stays in registers.
//!
//! The requantization is [`requant_avx512`]'s float sequence up to the upper clamp; the zero
//! point is added after `vpackssdw` and the lower clamp is a byte `max` after `vpackuswb`
//! (see `store` for why that is exact), and `vpackuswb` restores plain channel order because
//! the packs work per 128-bit lane exactly as the unpacks did.
//!
//! Quads are built once per input row and channel block, not once per output row: each input
//! row is rearranged into a *quad row* (the four permuted quad vectors of padded positions
//! `2i .. 2i + 4` for every `i`) kept in a ring of three per block, so the three output rows
//! that read an input row (stride 1) share its shuffles, and the inner loops are loads and
//! `vpdpbusd` only. Output pixel `ox` reads quad `ox / 2` (stride 1: the quad serves `ox`, its
//! shifted copy `ox + 1`) or quad `ox` (stride 2). Padding positions hold the input zero point,
//! which the folded bias cancels, so borders cost nothing in the inner loop; rows above /
//! below the image read a quad row of zero points.
//!
//! [`requant_avx512`]: crate::x86_64::requant::requant_avx512

use std::arch::x86_64::*;

use super::DwConv;

/// Channels per block.
pub(super) const CB: usize = 64;
/// Bytes of one block's packed weights: 3 rows × 4 permuted zmm.
const SET: usize = 3 * 4 * CB;

/// Channel of byte lane `(k, L, d)` within block `blk` of a `c`-channel conv: see the module
/// doc. A folded block (see [`fold`]) repeats its lanes in every part.
fn permuted_channel(c: usize, blk: usize, k: usize, lane: usize, d: usize) -> usize {
    let lane = lane % (4 / fold(c, blk));
    block(c, blk).0 + 16 * lane + 4 * k + d
}

/// Blocks of a `c`-channel conv: one per 64 channels, except that a last partial block of
/// 33–48 channels splits into 32 + (1–16), which fold 2× and 4× (see [`fold`]): a 48-channel
/// layer then fills ¾ of a 64-lane block's work instead of a whole one.
pub(super) fn blocks(c: usize) -> usize {
    c.div_ceil(CB) + usize::from(split_tail(c))
}

/// Whether the last partial block splits (see [`blocks`]).
fn split_tail(c: usize) -> bool {
    (CB / 2 + 1..=3 * CB / 4).contains(&(c % CB))
}

/// First channel and channel count of block `blk < blocks(c)`.
fn block(c: usize, blk: usize) -> (usize, usize) {
    let full = c / CB;
    let start = if blk <= full {
        blk * CB
    } else {
        // The second half of a split tail.
        full * CB + CB / 2
    };
    let len = if blk < full {
        CB
    } else if split_tail(c) && blk == full {
        CB / 2
    } else {
        c - start
    };
    (start, len)
}

/// How many output pixels one vector of block `blk` carries: 4 when the block holds at most
/// 16 channels (16-channel layers, the last block of 80 or 144), 2 for at most 32 (the last
/// block of 96 or 160), else 1.
///
/// A block folded `f` times splits its zmm into `f` parts of `64 / f` bytes, part `j` holding
/// output pixel `ox + j·⌈ow/f⌉` (a folded quad row stores padded position `q + j·⌈ow/f⌉·stride`
/// in part `j`), so no vector lane computes a missing channel of a mostly empty block. The
/// permuted channel order works per 128-bit lane, so the same weights serve every part.
fn fold(c: usize, blk: usize) -> usize {
    match block(c, blk).1 {
        n if n <= CB / 4 => 4,
        n if n <= CB / 2 => 2,
        _ => 1,
    }
}

/// Pack `[C][3][3]` weights for this kernel: per block (see [`blocks`]), `[ky][k][64 bytes]`
/// with dwords `[w0, w1, w2, 0]`; lanes without a channel are 0. The zero fourth byte is what
/// makes a quad shifted right by one byte (stride 1's second output) exact.
pub(super) fn pack_weights(weights: &[i8], c: usize) -> Vec<u8> {
    let mut out = vec![0u8; blocks(c) * SET];
    for blk in 0..blocks(c) {
        for ky in 0..3 {
            for k in 0..4 {
                for lane in 0..4 {
                    for d in 0..4 {
                        let ch = permuted_channel(c, blk, k, lane, d);
                        if ch >= c {
                            continue;
                        }
                        let base = (blk * 3 + ky) * 4 * CB + k * CB + lane * 16;
                        // Byte e is tap e; byte 3 stays 0.
                        for kx in 0..3 {
                            out[base + 4 * d + kx] = weights[(ch * 3 + ky) * 3 + kx] as u8;
                        }
                    }
                }
            }
        }
    }
    out
}

/// Per block, 64 entries of `v` (padded with `fill`) in the permuted order `[k][lane][d]`.
pub(super) fn permute<T: Copy>(v: &[T], c: usize, fill: T) -> Vec<T> {
    let mut out = vec![fill; blocks(c) * CB];
    for blk in 0..blocks(c) {
        for k in 0..4 {
            for lane in 0..4 {
                for d in 0..4 {
                    let ch = permuted_channel(c, blk, k, lane, d);
                    if ch < c {
                        out[blk * CB + k * 16 + lane * 4 + d] = v[ch];
                    }
                }
            }
        }
    }
    out
}

/// Quads a quad row holds for output width `ow` at stride `sw`: quad `i` starts at padded
/// position `2i`; stride 1 computes two outputs per quad, stride 2 one.
pub(super) fn quads_per_row(ow: usize, sw: usize) -> usize {
    if sw == 1 {
        ow.div_ceil(2)
    } else {
        ow
    }
}

/// Bytes of one quad: four permuted vectors.
const QUAD: usize = 4 * CB;

/// Scratch bytes one band of a `c`-channel conv needs: three ring quad rows per block (see
/// [`blocks`]) and the zero-point quad row.
pub(super) fn scratch_bytes(ow: usize, sw: usize, c: usize) -> usize {
    (3 * blocks(c) + 1) * quads_per_row(ow, sw) * QUAD
}

/// Shape of the call, for the band loop.
pub(super) struct Band {
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    /// Flattened output rows `b·oh + oy` of this band.
    pub rows: std::ops::Range<usize>,
}

/// Output rows `band.rows` (over the flattened `n·oh`); `out` holds exactly those rows.
///
/// # Safety
/// AVX-512F/BW/VL and VNNI must be supported; `dw` is 3×3, undilated, `stride_w` 1 or 2, with
/// its `dw3x3_*` arrays packed; `input` holds the whole validated `[n][h][w][C]` tensor and
/// the band's rows lie inside `n·oh`; `out.len() == band.rows.len()·ow·C`; `scratch` holds at
/// least [`scratch_bytes`]`(ow, stride_w, C)` bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn band(dw: &DwConv, input: &[u8], b: Band, out: &mut [u8], scratch: &mut [u8]) {
    let g = &dw.geometry;
    let c = dw.channels;
    let (sw, ow) = (g.stride_w, b.ow);
    // Every block's quad rows are sized for the widest (unfolded) row.
    let row_bytes = quads_per_row(ow, sw) * QUAD;
    debug_assert!(scratch.len() >= scratch_bytes(ow, sw, c));
    debug_assert_eq!(out.len(), b.rows.len() * ow * c);
    let (ring, zero_row) = scratch.split_at_mut(3 * blocks(c) * row_bytes);
    let zp_in = dw.input_zero_point as u8;
    zero_row[..row_bytes].fill(zp_in);
    let ep = Epilogue {
        hi: _mm512_set1_ps((dw.qmax - dw.output_zero_point) as f32),
        zp: _mm512_set1_epi16(dw.output_zero_point as i16),
        qmin: _mm512_set1_epi8(dw.qmin as u8 as i8),
        qmax: _mm512_set1_epi8(dw.qmax as u8 as i8),
        add_zp: dw.output_zero_point != 0,
        max_qmin: dw.qmin > 0,
        min_qmax: dw.qmax < 255,
    };
    let blocks = blocks(c);
    let geo = RowGeo {
        w: b.w,
        c,
        pad: g.pad_w,
        zp: zp_in,
    };
    // Output rows outside, channel blocks inside: an input row is read once, all its
    // channels together, while it is hot, and each output row is written in one sweep.
    // Every block keeps its own ring of three padded rows; one set of tags serves all.
    let mut tags: [Option<(usize, usize)>; 3] = [None; 3];
    for row in b.rows.clone() {
        let (img, oy) = (row / b.oh, row % b.oh);
        let iy0 = (oy * g.stride_h) as isize - g.pad_h as isize;
        let inside = |ky: usize| {
            let iy = iy0 + ky as isize;
            (iy >= 0 && (iy as usize) < b.h).then_some(iy as usize)
        };
        for iy in (0..3).filter_map(inside) {
            let slot = iy % 3;
            if tags[slot] == Some((img, iy)) {
                continue;
            }
            for blk in 0..blocks {
                let blk_ring = &mut ring[blk * 3 * row_bytes..(blk + 1) * 3 * row_bytes];
                let dst = &mut blk_ring[slot * row_bytes..(slot + 1) * row_bytes];
                let src = ((img * b.h + iy) * b.w) * c + block(c, blk).0;
                let mask = block_mask(c, blk);
                let f = fold(c, blk);
                let kow = ow.div_ceil(f);
                let quads = quads_per_row(kow, sw);
                // Part `j` of a folded row holds output `ox + j·kow`: `j·kow·sw` positions on.
                let part = Part { f, shift: kow * sw };
                // SAFETY: AVX-512BW (caller); `src` addresses pixel 0 of an input row inside
                // the validated tensor, read masked to the block's channels (≤ 64 / f);
                // `dst` holds `quads_per_row(ow, sw) ≥ quads` quads.
                unsafe { fill_quad_row(input, src, &geo, mask, part, quads, dst) };
            }
            tags[slot] = Some((img, iy));
        }
        for blk in 0..blocks {
            // Packed arrays hold 64 permuted entries per block; the output starts at the
            // block's first channel.
            let (cb, first) = (blk * CB, block(c, blk).0);
            let mask = block_mask(c, blk);
            let f = fold(c, blk);
            // Outputs per row the kernel computes: a folded block computes `f` per vector.
            let kow = ow.div_ceil(f);
            let blk_ring = &ring[blk * 3 * row_bytes..(blk + 1) * 3 * row_bytes];
            // Three consecutive input rows never share a slot.
            let rows: [*const u8; 3] = std::array::from_fn(|ky| match inside(ky) {
                Some(iy) => blk_ring[(iy % 3) * row_bytes..].as_ptr(),
                None => zero_row.as_ptr(),
            });
            let orow = (row - b.rows.start) * ow * c + first;
            // SAFETY: every array is packed for `blocks` blocks, so the block's 64 permuted
            // biases / multipliers and its weights are in bounds; each of `rows`
            // addresses a quad row of `quads_per_row(kow, sw)` filled quads (ring rows were
            // filled with this block's `kow`; the zero row holds `quads_per_row(ow, sw)`);
            // `out[orow + ox·c ..]`
            // holds the block's channels of every output pixel (masked stores).
            unsafe {
                let bp = dw.dw3x3_bias.as_ptr().add(cb);
                let mp = dw.dw3x3_mult.as_ptr().add(cb);
                let o = out.as_mut_ptr().add(orow);
                let k = Consts {
                    bias: [0, 1, 2, 3].map(|k| _mm512_loadu_si512(bp.add(16 * k).cast())),
                    mult: [0, 1, 2, 3].map(|k| _mm512_loadu_ps(mp.add(16 * k))),
                    wts: dw.dw3x3_weights.as_ptr().add(blk * SET),
                    mask,
                    c,
                    ow,
                    half: kow,
                    ep: &ep,
                };
                match (f, sw == 1, dw.fits_i32) {
                    (1, true, true) => row_s1::<false, 1>(rows, kow, o, &k),
                    (1, true, false) => row_s1::<true, 1>(rows, kow, o, &k),
                    (1, false, true) => row_s2::<false, 1>(rows, kow, o, &k),
                    (1, false, false) => row_s2::<true, 1>(rows, kow, o, &k),
                    (2, true, true) => row_s1::<false, 2>(rows, kow, o, &k),
                    (2, true, false) => row_s1::<true, 2>(rows, kow, o, &k),
                    (2, false, true) => row_s2::<false, 2>(rows, kow, o, &k),
                    (2, false, false) => row_s2::<true, 2>(rows, kow, o, &k),
                    (_, true, true) => row_s1::<false, 4>(rows, kow, o, &k),
                    (_, true, false) => row_s1::<true, 4>(rows, kow, o, &k),
                    (_, false, true) => row_s2::<false, 4>(rows, kow, o, &k),
                    (_, false, false) => row_s2::<true, 4>(rows, kow, o, &k),
                }
            }
        }
    }
}

/// Block `blk`'s channel mask: its valid channels of 64.
fn block_mask(c: usize, blk: usize) -> __mmask64 {
    let n = block(c, blk).1;
    if n == CB {
        !0
    } else {
        (1u64 << n) - 1
    }
}

/// An input row's layout, for the row fills.
struct RowGeo {
    /// Pixels in the row.
    w: usize,
    /// Channels per pixel (the pixel stride).
    c: usize,
    /// Positions of left padding.
    pad: usize,
    /// The input zero point (what padding holds).
    zp: u8,
}

/// How a quad row is folded (see [`fold`]): `f` parts, part `j` holding padded position
/// `p + j·shift`.
#[derive(Clone, Copy)]
struct Part {
    f: usize,
    shift: usize,
}

/// Build a quad row (see the module doc) from input row pixels `0..w` (the `mask`ed channels
/// at `src + x·c`): quad `i` holds the four permuted vectors of padded positions
/// `2i .. 2i + 4`, where position `p` is pixel `p - pad` or, outside the row, the zero point.
///
/// A folded row (`part.f` of 2 or 4, see [`fold`]) carries padded position `p + j·shift` in
/// part `j` (bytes `64j/f ..`) of each position; the unpacks work per 128-bit lane, so part
/// `j`'s quads are those of the shifted positions.
///
/// # Safety
/// AVX-512F/BW/VL; `input[src + x·c ..]` holds the `mask`ed bytes for every `x < w` (at most
/// `64 / f` of them); `dst` holds at least `quads` quads.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn fill_quad_row(
    input: &[u8],
    src: usize,
    r: &RowGeo,
    mask: __mmask64,
    part: Part,
    quads: usize,
    dst: &mut [u8],
) {
    debug_assert!(dst.len() >= quads * QUAD);
    // SAFETY: `src` is an offset inside `input` (caller).
    let base = unsafe { input.as_ptr().add(src) };
    let (f, s) = (part.f, part.shift);
    let inside = |pos: usize| pos.checked_sub(r.pad).filter(|&x| x < r.w);
    // SAFETY (the three loaders): `p` addresses the block's first channel of an input pixel
    // (caller), read masked to the block's ≤ 64 / f valid channels.
    let whole = |p: *const u8| unsafe { _mm512_maskz_loadu_epi8(mask, p.cast()) };
    let half = |p: *const u8| unsafe { _mm256_maskz_loadu_epi8(mask as __mmask32, p.cast()) };
    let quarter = |p: *const u8| unsafe { _mm_maskz_loadu_epi8(mask as __mmask16, p.cast()) };
    let zp = r.zp as i8;
    // Position `pos` (and its folded parts), checked against the row's borders.
    let pixel = |pos: usize| {
        // SAFETY: pixel `x < w` of the row (caller).
        let at = |x: usize| unsafe { base.add(x * r.c) };
        match f {
            1 => inside(pos).map_or(_mm512_set1_epi8(zp), |x| whole(at(x))),
            2 => {
                let h = |p: usize| inside(p).map_or(_mm256_set1_epi8(zp), |x| half(at(x)));
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(h(pos)), h(pos + s))
            }
            _ => {
                let q = |p: usize| inside(p).map_or(_mm_set1_epi8(zp), |x| quarter(at(x)));
                let v = _mm512_castsi128_si512(q(pos));
                let v = _mm512_inserti32x4::<1>(v, q(pos + s));
                let v = _mm512_inserti32x4::<2>(v, q(pos + 2 * s));
                _mm512_inserti32x4::<3>(v, q(pos + 3 * s))
            }
        }
    };
    let mut ab = pair(pixel(0), pixel(1));
    let mut step = |i: usize, cd: [__m512i; 2]| {
        for (k, v) in quads4(ab, cd).into_iter().enumerate() {
            // SAFETY: quad `i < quads` of `dst` (caller), vector `k < 4` of it.
            unsafe { _mm512_storeu_si512(dst.as_mut_ptr().add(i * QUAD + k * CB).cast(), v) };
        }
        ab = cd;
    };
    // Quads whose new positions `2i + 2`, `2i + 3` (and the folded `+ j·s`) are all pixels
    // of the row: `lo..hi`. They load without checks, walking a pointer.
    let lo = r.pad.saturating_sub(2).div_ceil(2).min(quads);
    let hi = (r.pad + r.w)
        .checked_sub(4 + (f - 1) * s)
        .map_or(0, |v| v / 2 + 1)
        .clamp(lo, quads);
    for i in 0..lo {
        step(i, pair(pixel(2 * i + 2), pixel(2 * i + 3)));
    }
    if lo < hi {
        let c = r.c;
        // SAFETY: position `2·lo + 2 ≥ pad` is pixel `2·lo + 2 - pad < w` of the row.
        let mut p = unsafe { base.add((2 * lo + 2 - r.pad) * c) };
        for i in lo..hi {
            // SAFETY: for `i < hi`, positions `2i + 2 + {0, 1}` (+ `j·s` when folded) are
            // pixels `< w` of the row, read masked to the block's channels (caller); `p`
            // addresses the first of them and advances two pixels per quad, inside the row.
            let cd = unsafe {
                let px = |q: *const u8| match f {
                    1 => whole(q),
                    2 => {
                        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(half(q)), half(q.add(s * c)))
                    }
                    _ => {
                        let v = _mm512_castsi128_si512(quarter(q));
                        let v = _mm512_inserti32x4::<1>(v, quarter(q.add(s * c)));
                        let v = _mm512_inserti32x4::<2>(v, quarter(q.add(2 * s * c)));
                        _mm512_inserti32x4::<3>(v, quarter(q.add(3 * s * c)))
                    }
                };
                pair(px(p), px(p.add(c)))
            };
            step(i, cd);
            if i + 1 < hi {
                // SAFETY: quad `i + 1 < hi` reads from there (see above).
                p = unsafe { p.add(2 * c) };
            }
        }
    }
    for i in hi..quads {
        step(i, pair(pixel(2 * i + 2), pixel(2 * i + 3)));
    }
}

struct Epilogue {
    hi: __m512,
    /// The output zero point as i16 lanes.
    zp: __m512i,
    /// `qmin` / `qmax` in every byte.
    qmin: __m512i,
    qmax: __m512i,
    /// Whether the zero point is not 0 (else the add is skipped), `qmin > 0` (else the packs'
    /// saturation at 0 already is the lower clamp) and `qmax < 255` (else the upper byte
    /// clamp is the packs' saturation at 255): ReLU(6) outputs usually need none of the three.
    add_zp: bool,
    max_qmin: bool,
    min_qmax: bool,
}

/// Per-block constants of a row call.
struct Consts<'a> {
    bias: [__m512i; 4],
    mult: [__m512; 4],
    wts: *const u8,
    mask: __mmask64,
    c: usize,
    /// Output pixels per row.
    ow: usize,
    /// Output pixels the kernel computes per row: `⌈ow/f⌉` for a block folded `f` times
    /// (output `ox` then also yields `ox + j·half` in part `j`).
    half: usize,
    ep: &'a Epilogue,
}

/// `unpack{lo,hi}_epi8(a, b)`: the pair `[a, b]` bytes of every channel.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn pair(a: __m512i, b: __m512i) -> [__m512i; 2] {
    [_mm512_unpacklo_epi8(a, b), _mm512_unpackhi_epi8(a, b)]
}

/// The four permuted quads of pairs `ab` (positions j, j+1) and `cd` (j+2, j+3).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn quads4(ab: [__m512i; 2], cd: [__m512i; 2]) -> [__m512i; 4] {
    [
        _mm512_unpacklo_epi16(ab[0], cd[0]),
        _mm512_unpackhi_epi16(ab[0], cd[0]),
        _mm512_unpacklo_epi16(ab[1], cd[1]),
        _mm512_unpackhi_epi16(ab[1], cd[1]),
    ]
}

/// Vector `k` of quad `i` of a quad row.
///
/// # Safety
/// `row` addresses at least `i + 1` quads.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn qv(row: *const u8, i: usize, k: usize) -> __m512i {
    // SAFETY: quad `i` is inside the row (caller), `k < 4`.
    unsafe { _mm512_loadu_si512(row.add(i * QUAD + k * CB).cast()) }
}

/// Weight vector `k` of row `ky`.
///
/// # Safety
/// `wts` addresses a block's packed weights.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn wv(wts: *const u8, ky: usize, k: usize) -> __m512i {
    // SAFETY: `ky < 3, k < 4` stay inside the block's weights (caller).
    unsafe { _mm512_loadu_si512(wts.add((ky * 4 + k) * CB).cast()) }
}

/// Requantize four permuted accumulators and store the block's channels of one pixel.
///
/// Only `min(f32(acc) · m, hi)` is computed in float; the lower clamp comes after the
/// saturating packs, as a byte `max` with `qmin`: the same value as [`requant_avx512`](crate::x86_64::requant::requant_avx512)'s
/// float clamp because `lo` and `hi` are integers (`clamp(round(x), lo, hi) =
/// max(round(min(x, hi)), lo)`), values at or above `lo` pass the packs unchanged
/// (`qmin = lo + zp ≥ 0`, `qmax = hi + zp ≤ 255`), and values below `lo` — `i32::MIN` too,
/// which `vcvtps2dq` gives below -2³¹ — end at or below `qmin` before the `max`.
///
/// `FLOAT_CLAMP = false` (only when the conv's `fits_i32` holds: no product reaches 2³¹)
/// skips the float `min` too and clamps with a byte `min` against `qmax` after the packs, by
/// the same argument mirrored: every lane converts exactly, a lane above `hi` rounds to at
/// least `hi` and the monotone packs keep it at or above `qmax`.
///
/// Writes output pixel `ox` at `o + ox·c` and, folded `F` times, pixel `ox + j·k.half` from
/// part `j` (bytes `64j/F ..`) when it is `< k.ow`.
///
/// # Safety
/// AVX-512F/BW/VL; output pixels `< k.ow` are writable at `o + pixel·c` for the `mask`ed
/// bytes (at most `64 / F`); `ox < k.ow`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn store<const FLOAT_CLAMP: bool, const F: usize>(
    acc: [__m512i; 4],
    k: &Consts,
    o: *mut u8,
    ox: usize,
) {
    let r: [__m512i; 4] = std::array::from_fn(|i| {
        let v = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[i]), k.mult[i]);
        if FLOAT_CLAMP {
            _mm512_cvtps_epi32(_mm512_min_ps(v, k.ep.hi))
        } else {
            _mm512_cvtps_epi32(v)
        }
    });
    let mut w01 = _mm512_packs_epi32(r[0], r[1]);
    let mut w23 = _mm512_packs_epi32(r[2], r[3]);
    if k.ep.add_zp {
        w01 = _mm512_adds_epi16(w01, k.ep.zp);
        w23 = _mm512_adds_epi16(w23, k.ep.zp);
    }
    let mut b = _mm512_packus_epi16(w01, w23);
    if k.ep.max_qmin {
        b = _mm512_max_epu8(b, k.ep.qmin);
    }
    if !FLOAT_CLAMP && k.ep.min_qmax {
        b = _mm512_min_epu8(b, k.ep.qmax);
    }
    // SAFETY: masked stores of the valid channels of output pixels `ox < ow` and, folded,
    // `ox + j·half` when it is `< ow` (caller).
    unsafe {
        let at = |j: usize| o.add((ox + j * k.half) * k.c);
        let valid = |j: usize| ox + j * k.half < k.ow;
        match F {
            1 => _mm512_mask_storeu_epi8(at(0).cast(), k.mask, b),
            2 => {
                let m = k.mask as __mmask32;
                _mm256_mask_storeu_epi8(at(0).cast(), m, _mm512_castsi512_si256(b));
                if valid(1) {
                    let hi = _mm512_extracti64x4_epi64::<1>(b);
                    _mm256_mask_storeu_epi8(at(1).cast(), m, hi);
                }
            }
            _ => {
                let m = k.mask as __mmask16;
                _mm_mask_storeu_epi8(at(0).cast(), m, _mm512_castsi512_si128(b));
                if valid(1) {
                    _mm_mask_storeu_epi8(at(1).cast(), m, _mm512_extracti32x4_epi32::<1>(b));
                }
                if valid(2) {
                    _mm_mask_storeu_epi8(at(2).cast(), m, _mm512_extracti32x4_epi32::<2>(b));
                }
                if valid(3) {
                    _mm_mask_storeu_epi8(at(3).cast(), m, _mm512_extracti32x4_epi32::<3>(b));
                }
            }
        }
    }
}

/// One output row at stride 1: two output pixels per quad (the quad and its copy shifted by
/// one byte per dword, against the same weights); `ow` is `k.half`,
/// the pixels computed per row (each `F` pixels when folded).
///
/// # Safety
/// AVX-512 VNNI; each row holds [`quads_per_row`]`(ow, 1)` quads; output pixels `< k.ow`
/// of the row are writable at `o + pixel·c` for the masked channels.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn row_s1<const FLOAT_CLAMP: bool, const F: usize>(
    rows: [*const u8; 3],
    ow: usize,
    o: *mut u8,
    k: &Consts,
) {
    // SAFETY: quad `ox / 2 < quads_per_row(ow, 1)` of each row and the weight sets are in
    // bounds; stores go to output pixels `< ow` (caller).
    unsafe {
        let wa: [[__m512i; 4]; 3] =
            std::array::from_fn(|ky| std::array::from_fn(|q| wv(k.wts, ky, q)));
        for i in 0..ow.div_ceil(2) {
            let ox = 2 * i;
            let mut a = k.bias;
            let mut b = k.bias;
            let two = ox + 1 < ow;
            for (ky, row) in rows.into_iter().enumerate() {
                for q in 0..4 {
                    let v = qv(row, i, q);
                    a[q] = _mm512_dpbusd_epi32(a[q], v, wa[ky][q]);
                    if two {
                        // `[p1, p2, p3, 0]` · `[w0, w1, w2, 0]`: output `ox + 1`'s taps.
                        b[q] = _mm512_dpbusd_epi32(b[q], _mm512_srli_epi32::<8>(v), wa[ky][q]);
                    }
                }
            }
            store::<FLOAT_CLAMP, F>(a, k, o, ox);
            if two {
                store::<FLOAT_CLAMP, F>(b, k, o, ox + 1);
            }
        }
    }
}

/// One output row at stride 2: one quad per output pixel.
///
/// # Safety
/// As [`row_s1`] with [`quads_per_row`]`(ow, 2) = ow` quads per row.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn row_s2<const FLOAT_CLAMP: bool, const F: usize>(
    rows: [*const u8; 3],
    ow: usize,
    o: *mut u8,
    k: &Consts,
) {
    // SAFETY: as in `row_s1`; quad `ox < ow` of each row.
    unsafe {
        let wa: [[__m512i; 4]; 3] =
            std::array::from_fn(|ky| std::array::from_fn(|q| wv(k.wts, ky, q)));
        for ox in 0..ow {
            let mut a = k.bias;
            for (ky, row) in rows.into_iter().enumerate() {
                for q in 0..4 {
                    a[q] = _mm512_dpbusd_epi32(a[q], qv(row, ox, q), wa[ky][q]);
                }
            }
            store::<FLOAT_CLAMP, F>(a, k, o, ox);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocks tile `0..c` in order, each within one vector's lanes for its fold, and only
    /// 33–48-channel tails split.
    #[test]
    fn blocks_tile_the_channels() {
        for c in 1..=400 {
            let mut next = 0;
            for blk in 0..blocks(c) {
                let (start, len) = block(c, blk);
                assert_eq!(start, next, "c={c} blk={blk}");
                assert!(
                    len >= 1 && len * fold(c, blk) <= CB,
                    "c={c} blk={blk} len={len}"
                );
                next = start + len;
            }
            assert_eq!(next, c, "c={c}");
            let tail = c % CB;
            assert_eq!(
                blocks(c) - c.div_ceil(CB),
                usize::from((33..=48).contains(&tail))
            );
        }
        assert_eq!(
            (blocks(48), block(48, 0), block(48, 1)),
            (2, (0, 32), (32, 16))
        );
        assert_eq!((fold(48, 0), fold(48, 1)), (2, 4));
    }
}
