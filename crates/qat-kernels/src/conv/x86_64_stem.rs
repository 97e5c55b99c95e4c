//! The AVX-512 VNNI + VBMI kernel of [`StemConv`] (layout in the parent module's doc).

use std::arch::x86_64::*;

use super::{StemConv, GROUP};

/// One output row of `ow` pixels from the padded input rows `rows[ky]`.
///
/// # Safety
/// AVX-512F/BW/VL, VNNI and VBMI must be supported; `conv` has its lanes packed
/// (`pack_lanes`); `rows` holds `kernel_h` rows of at least `row_len` bytes, where `row_len`
/// covers the last 4-pixel window (`4·(⌈ow/4⌉ - 1)·stride_w·C_in + 64` bytes); `o` holds
/// `ow · C_out` bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
pub(super) unsafe fn row(conv: &StemConv, rows: &[&[u8]], ow: usize, row_len: usize, o: &mut [u8]) {
    let g = &conv.geometry;
    let (c, sw, kh) = (conv.c_in, g.stride_w, g.kernel_h);
    let (ndw, groups, c_out) = (conv.ndw(), conv.groups(), conv.c_out);
    debug_assert!(rows.len() >= kh && rows.iter().all(|r| r.len() >= row_len));
    debug_assert_eq!(o.len(), ow * c_out);
    // vpermb indices: byte e of dword d in lane L reads row byte L·sw·C + 4t + e of the window.
    let idx: [__m512i; 4] = std::array::from_fn(|t| {
        let bytes: [u8; 64] = std::array::from_fn(|i| {
            let (lane, e) = (i / 16, i % 4);
            ((lane * sw * c + 4 * t + e) % 64) as u8
        });
        // SAFETY: 64 bytes on the stack.
        unsafe { _mm512_loadu_si512(bytes.as_ptr().cast()) }
    });
    let ep = Epilogue {
        float_clamp: !conv.fits_i32,
        hi: _mm512_set1_ps((conv.qmax - conv.output_zero_point) as f32),
        zp: _mm512_set1_epi16(conv.output_zero_point as i16),
        add_zp: conv.output_zero_point != 0,
        qmin: _mm512_set1_epi8(conv.qmin as u8 as i8),
        max_qmin: conv.qmin > 0,
        qmax: _mm512_set1_epi8(conv.qmax as u8 as i8),
        min_qmax: conv.qmax < 255,
    };
    let packed = conv.packed.as_ptr();
    let (bias, mult) = (conv.lane_bias.as_ptr(), conv.lane_mult.as_ptr());
    for q in 0..ow.div_ceil(4) {
        let ox0 = 4 * q;
        let valid = (ow - ox0).min(4);
        for grp in 0..groups {
            // SAFETY: `lane_bias` / `lane_mult` hold `groups · 4` vectors of 16 lanes; the
            // window load stays inside each row (`row_len`, caller); the weight vectors
            // `[ky][t][grp][j]` lie inside `packed` (`kh · ndw · groups · 4` of them).
            let acc = unsafe {
                let mut acc: [__m512i; 4] = std::array::from_fn(|j| {
                    _mm512_loadu_si512(bias.add((grp * 4 + j) * 16).cast())
                });
                for (ky, r) in rows.iter().take(kh).enumerate() {
                    let win = _mm512_loadu_si512(r.as_ptr().add(ox0 * sw * c).cast());
                    for (t, ix) in idx.iter().take(ndw).enumerate() {
                        let d = _mm512_permutexvar_epi8(*ix, win);
                        let wv = packed.add((((ky * ndw + t) * groups + grp) * 4) * 64);
                        for (j, a) in acc.iter_mut().enumerate() {
                            *a = _mm512_dpbusd_epi32(
                                *a,
                                d,
                                _mm512_loadu_si512(wv.add(j * 64).cast()),
                            );
                        }
                    }
                }
                acc
            };
            // SAFETY: as above for the multipliers.
            let m: [__m512; 4] =
                std::array::from_fn(|j| unsafe { _mm512_loadu_ps(mult.add((grp * 4 + j) * 16)) });
            let b = requantize(acc, m, &ep);
            let n = (c_out - grp * GROUP).min(GROUP);
            // SAFETY: pixels `ox0 + L < ow` of the row, channels `grp·16 .. grp·16 + n`, all
            // inside `o` (`ow · C_out` bytes, caller).
            unsafe {
                if c_out == GROUP {
                    // Four whole pixels are 64 contiguous output bytes.
                    let mask = if valid == 4 {
                        !0u64
                    } else {
                        (1u64 << (16 * valid)) - 1
                    };
                    _mm512_mask_storeu_epi8(o.as_mut_ptr().add(ox0 * GROUP).cast(), mask, b);
                } else {
                    let mask = ((1u32 << n) - 1) as __mmask16;
                    let lanes = [
                        _mm512_castsi512_si128(b),
                        _mm512_extracti32x4_epi32::<1>(b),
                        _mm512_extracti32x4_epi32::<2>(b),
                        _mm512_extracti32x4_epi32::<3>(b),
                    ];
                    for (l, v) in lanes.into_iter().take(valid).enumerate() {
                        let at = (ox0 + l) * c_out + grp * GROUP;
                        _mm_mask_storeu_epi8(o.as_mut_ptr().add(at).cast(), mask, v);
                    }
                }
            }
        }
    }
}

struct Epilogue {
    /// Whether some product may reach 2³¹ (`!fits_i32`): clamp the high side in float.
    float_clamp: bool,
    hi: __m512,
    zp: __m512i,
    add_zp: bool,
    qmin: __m512i,
    max_qmin: bool,
    qmax: __m512i,
    min_qmax: bool,
}

/// Requantize accumulators `j = 0..4` (lane `(L, d)`: pixel `L`, channel `4j + d` of the
/// group) into bytes with pixel `L`'s 16 channels in lane `L`, in channel order.
///
/// The float sequence is [`requant_avx512`](crate::x86_64::requant::requant_avx512)'s up to
/// the upper clamp; the lower clamp is a byte `max` after the saturating packs, exact because
/// `lo`, `hi` are integers and the packs are monotone (the argument of the depthwise 3×3
/// kernel's `store`); without `float_clamp` every product converts exactly and the upper clamp
/// is a byte `min` too. The `max` / `min` / zero-point add are skipped when they cannot change
/// a byte (`qmin = 0`, `qmax = 255`, zero point 0).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn requantize(acc: [__m512i; 4], m: [__m512; 4], ep: &Epilogue) -> __m512i {
    let r: [__m512i; 4] = std::array::from_fn(|j| {
        let v = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[j]), m[j]);
        if ep.float_clamp {
            _mm512_cvtps_epi32(_mm512_min_ps(v, ep.hi))
        } else {
            _mm512_cvtps_epi32(v)
        }
    });
    let mut w01 = _mm512_packs_epi32(r[0], r[1]);
    let mut w23 = _mm512_packs_epi32(r[2], r[3]);
    if ep.add_zp {
        w01 = _mm512_adds_epi16(w01, ep.zp);
        w23 = _mm512_adds_epi16(w23, ep.zp);
    }
    let mut b = _mm512_packus_epi16(w01, w23);
    if ep.max_qmin {
        b = _mm512_max_epu8(b, ep.qmin);
    }
    if !ep.float_clamp && ep.min_qmax {
        b = _mm512_min_epu8(b, ep.qmax);
    }
    b
}
