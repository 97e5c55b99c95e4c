//! Direct convolution for inputs with few channels (a network's stem: 1 or 3 channels), without
//! im2col or a GEMM.
//!
//! A kernel row reads `kw · C_in` contiguous NHWC bytes per output pixel. Those bytes, in
//! groups of four (`ndw = ⌈kw·C_in / 4⌉` dwords), are what one exact `vpdpbusd` (u8 × i8, four
//! products per i32 lane, no saturation) multiplies by four weights. A zmm accumulator holds
//! 4 output pixels × 4 output channels: lane `(L, d)` (128-bit lane `L`, dword `d`) is pixel
//! `ox0 + L`, channel `16g + 4j + d` for accumulator `j` of channel group `g`. One `vpermb`
//! of 64 bytes of a padded input row gives the data vector of all four pixels (lane `L`
//! repeats pixel `L`'s dword `t`), and after requantizing, `vpackssdw` / `vpackuswb` (which
//! work per 128-bit lane) put pixel `L`'s 16 channels in lane `L` in order — the NHWC output.
//!
//! Input rows are copied once per output row into padded rows (positions outside the image
//! hold the input zero point, cancelled by the folded bias `bias - zp_in · Σ w`), so borders
//! cost nothing in the inner loop and every 64-byte load stays inside its row.
//!
//! The requantization is exactly [`qat_core::requantize`] (see `x86_64_stem::store`); other
//! CPUs run a scalar loop with the same result.

#[cfg(target_arch = "x86_64")]
#[path = "x86_64_stem.rs"]
mod x86_64_stem;

use super::checks::{check_operands, check_run, Names, Operands, Run};
use super::Conv2dGeometry;
use crate::error::{KernelError, Result};
use crate::fold::fold_channels;
use crate::Activation;
use qat_core::QParams;
use rayon::prelude::*;

/// Output channels per group: one packed vector of 4 pixels × 16 channels.
const GROUP: usize = 16;

/// Kernel rows the SIMD path takes (its row table lives on the stack).
const MAX_KH: usize = 8;

/// Scratch regions start on a cache line.
const ALIGN: usize = 64;

/// What [`StemConv`]'s errors call its operands.
const NAMES: Names = Names {
    weights: "stem weights [C_out][C_in][kh][kw]",
    weight_scales: "stem weight scales",
    bias: "stem bias",
    input_scale: "input scale",
    output_scale: "output scale",
    input_zero_point: "input zero point",
    output_zero_point: "output zero point",
    batch_zero: "stem conv batch is 0",
    size_overflow: "input size overflows usize",
    input: "stem input NHWC",
    output: "stem output NHWC",
};

/// A dense (groups 1) convolution over few input channels, packed once.
#[derive(Debug, Clone)]
pub struct StemConv {
    c_in: usize,
    c_out: usize,
    geometry: Conv2dGeometry,
    /// Canonical OIHW weights, for the scalar path.
    weights: Vec<i8>,
    /// `bias - zp_in · Σ w` per channel, wrapping (zero-point padding cancels exactly).
    folded_bias: Vec<i32>,
    multiplier: Vec<f32>,
    input_zero_point: i32,
    output_zero_point: i32,
    qmin: i32,
    qmax: i32,
    /// `[ky][t][g][j]` vectors of 64 bytes (lane `(L, d)`, byte `e`: weight of channel
    /// `16g + 4j + d` at row byte `4t + e`), for the AVX-512 kernel.
    packed: Vec<u8>,
    /// `[g][j]` vectors of 16 lanes (`(L, d)` → channel `16g + 4j + d`).
    lane_bias: Vec<i32>,
    lane_mult: Vec<f32>,
    /// Every channel's `|f32(acc) · m|` stays below 2³¹ for any input
    /// ([`crate::gemm::products_fit_i32`]).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fits_i32: bool,
}

impl StemConv {
    /// Whether the AVX-512 kernel takes this shape on this CPU (AVX-512 VNNI + VBMI): groups
    /// 1, undilated, `kw · C_in ≤ 16` row bytes and a 4-pixel window (`3·stride_w·C_in + 4·ndw`
    /// bytes) inside one 64-byte load. Otherwise [`StemConv::run_with_scratch`] still works,
    /// through a scalar loop; callers should prefer im2col + GEMM then.
    pub fn fast_path(c_in: usize, geometry: &Conv2dGeometry) -> bool {
        Self::fits_shape(c_in, geometry) && Self::cpu_has_kernel()
    }

    fn fits_shape(c_in: usize, g: &Conv2dGeometry) -> bool {
        let row = g.kernel_w * c_in;
        c_in > 0
            && g.dilation_h == 1
            && g.dilation_w == 1
            && row <= 16
            && g.kernel_h <= MAX_KH
            && 3 * g.stride_w * c_in + 4 * row.div_ceil(4) <= 64
    }

    fn cpu_has_kernel() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            crate::Isa::Avx512Vnni.is_supported()
                && std::arch::is_x86_feature_detected!("avx512vbmi")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Validate and pack: `weights` OIHW `[C_out][C_in][kh][kw]` i8 symmetric per output
    /// channel, one scale per output channel, `bias` `None` or one i32 per output channel (in
    /// units of `input.scale · weight_scale`), u8 input / output parameters, the activation
    /// fused as a clamp.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        c_in: usize,
        c_out: usize,
        geometry: Conv2dGeometry,
        weights: &[i8],
        weight_scales: &[f32],
        bias: Option<&[i32]>,
        input: QParams,
        output: QParams,
        activation: Activation,
    ) -> Result<StemConv> {
        if c_in == 0 || c_out == 0 {
            return Err(KernelError::Shape(format!(
                "stem conv with {c_in} input / {c_out} output channels"
            )));
        }
        geometry.validate()?;
        if geometry.dilation_h != 1 || geometry.dilation_w != 1 {
            return Err(KernelError::Param(
                "stem conv: dilation must be 1 (use im2col + GEMM)".into(),
            ));
        }
        let taps = geometry.taps();
        let operands = Operands {
            expected_weights: c_out * c_in * taps,
            c_out,
            weights,
            weight_scales,
            bias,
            input,
            output,
        };
        check_operands(&NAMES, &operands)?;
        let folded = fold_channels(
            weights,
            c_in * taps,
            bias,
            input,
            weight_scales,
            output.scale,
        )?;
        let (folded_bias, multiplier, fits_i32) = (folded.bias, folded.multiplier, folded.fits_i32);
        let (qmin, qmax) = activation.bounds(output);
        let mut conv = StemConv {
            c_in,
            c_out,
            geometry,
            weights: weights.to_vec(),
            folded_bias,
            multiplier,
            input_zero_point: input.zero_point,
            output_zero_point: output.zero_point,
            qmin,
            qmax,
            packed: Vec::new(),
            lane_bias: Vec::new(),
            lane_mult: Vec::new(),
            fits_i32,
        };
        if Self::fits_shape(c_in, &geometry) {
            conv.pack_lanes();
        }
        Ok(conv)
    }

    /// Dwords per kernel row: `⌈kw · C_in / 4⌉`.
    fn ndw(&self) -> usize {
        (self.geometry.kernel_w * self.c_in).div_ceil(4)
    }

    fn groups(&self) -> usize {
        self.c_out.div_ceil(GROUP)
    }

    /// Lay the weights, biases and multipliers out in the accumulators' lane order.
    fn pack_lanes(&mut self) {
        let (kh, kw, c) = (self.geometry.kernel_h, self.geometry.kernel_w, self.c_in);
        let (ndw, groups) = (self.ndw(), self.groups());
        let channel = |g: usize, j: usize, d: usize| {
            let oc = GROUP * g + 4 * j + d;
            (oc < self.c_out).then_some(oc)
        };
        let mut packed = vec![0u8; kh * ndw * groups * 4 * 64];
        for ky in 0..kh {
            for t in 0..ndw {
                for g in 0..groups {
                    for j in 0..4 {
                        let base = (((ky * ndw + t) * groups + g) * 4 + j) * 64;
                        for lane in 0..4 {
                            for d in 0..4 {
                                let Some(oc) = channel(g, j, d) else { continue };
                                for e in 0..4 {
                                    let b = 4 * t + e;
                                    if b < kw * c {
                                        let (kx, ic) = (b / c, b % c);
                                        let w = self.weights[((oc * c + ic) * kh + ky) * kw + kx];
                                        packed[base + 16 * lane + 4 * d + e] = w as u8;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        let mut lane_bias = vec![0i32; groups * 4 * 16];
        let mut lane_mult = vec![0f32; groups * 4 * 16];
        for g in 0..groups {
            for j in 0..4 {
                for lane in 0..4 {
                    for d in 0..4 {
                        if let Some(oc) = channel(g, j, d) {
                            let i = (g * 4 + j) * 16 + 4 * lane + d;
                            lane_bias[i] = self.folded_bias[oc];
                            lane_mult[i] = self.multiplier[oc];
                        }
                    }
                }
            }
        }
        self.packed = packed;
        self.lane_bias = lane_bias;
        self.lane_mult = lane_mult;
    }

    /// Output `(height, width)` for an `h × w` input.
    pub fn output_hw(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        self.geometry.output_hw(h, w)
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.c_in
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.c_out
    }

    /// The kernel [`StemConv::run_with_scratch`] runs on this CPU.
    pub fn kernel_name(&self) -> &'static str {
        if self.uses_simd() {
            "avx512vbmi_stem"
        } else {
            "scalar_stem"
        }
    }

    fn uses_simd(&self) -> bool {
        !self.packed.is_empty() && Self::cpu_has_kernel()
    }

    /// Bytes of one padded row for inputs `w` pixels wide: the image row with its padding,
    /// and room for the last 4-pixel window's 64-byte load.
    fn row_len(&self, w: usize, ow: usize) -> usize {
        let g = &self.geometry;
        let c = self.c_in;
        let last_window = 4 * (ow.div_ceil(4) - 1) * g.stride_w * c + 64;
        last_window.max((g.pad_w + w) * c).next_multiple_of(ALIGN)
    }

    fn bands(threads: usize) -> usize {
        if threads <= 1 {
            1
        } else {
            2 * threads
        }
    }

    /// Scratch bytes [`StemConv::run_with_scratch`] needs for inputs `h × w` and `threads`
    /// (the same for every batch size).
    pub fn scratch_len(&self, h: usize, w: usize, threads: usize) -> Result<usize> {
        let (_, ow) = self.output_hw(h, w)?;
        Ok((self.geometry.kernel_h + 1) * self.row_len(w, ow) * Self::bands(threads) + ALIGN)
    }

    /// Run on NHWC u8 `[n][h][w][C_in]`, writing `[n][oh][ow][C_out]`, with caller scratch of
    /// at least [`StemConv::scratch_len`] bytes (no allocation). `threads > 1` splits the
    /// output rows over the current rayon pool; the result is the same for any thread count.
    #[allow(clippy::too_many_arguments)]
    pub fn run_with_scratch(
        &self,
        input: &[u8],
        n: usize,
        h: usize,
        w: usize,
        output: &mut [u8],
        threads: usize,
        scratch: &mut [u8],
    ) -> Result<()> {
        let run = Run {
            n,
            h,
            w,
            c_in: self.c_in,
            c_out: self.c_out,
        };
        let (oh, ow) = check_run(&NAMES, &self.geometry, &run, input.len(), output.len())?;
        let need = self.scratch_len(h, w, threads)?;
        if scratch.len() < need {
            return Err(KernelError::Length {
                what: "stem scratch (see StemConv::scratch_len)",
                expected: need,
                got: scratch.len(),
            });
        }
        let row_len = self.row_len(w, ow);
        let per = (self.geometry.kernel_h + 1) * row_len;
        let bands = Self::bands(threads);
        let off = scratch.as_ptr().align_offset(ALIGN);
        let scratch = &mut scratch[off..off + per * bands];
        let total = n * oh;
        let rows_per_band = total.div_ceil(bands);
        let row_out = ow * self.c_out;
        let shape = Shape { h, w, oh, ow };
        let band = |(i, (out, scr)): (usize, (&mut [u8], &mut [u8]))| {
            let r0 = i * rows_per_band;
            let rows = r0..(r0 + rows_per_band).min(total);
            self.run_band(input, &shape, rows, out, scr, row_len);
        };
        if threads <= 1 {
            band((0, (output, scratch)));
        } else {
            output
                .par_chunks_mut(rows_per_band * row_out)
                .zip(scratch.par_chunks_mut(per))
                .enumerate()
                .for_each(band);
        }
        Ok(())
    }

    /// Output rows `rows` (flattened `b·oh + oy`) into `out` (exactly those rows).
    fn run_band(
        &self,
        input: &[u8],
        s: &Shape,
        rows: std::ops::Range<usize>,
        out: &mut [u8],
        scratch: &mut [u8],
        row_len: usize,
    ) {
        let g = &self.geometry;
        let c = self.c_in;
        let kh = g.kernel_h;
        let zp = self.input_zero_point as u8;
        let (padded, zero_row) = scratch.split_at_mut(kh * row_len);
        let zero_row = &mut zero_row[..row_len];
        zero_row.fill(zp);
        let row_out = s.ow * self.c_out;
        let simd = self.uses_simd();
        for (row, o) in rows.zip(out.chunks_mut(row_out)) {
            let (img, oy) = (row / s.oh, row % s.oh);
            for ky in 0..kh {
                let iy = (oy * g.stride_h + ky) as isize - g.pad_h as isize;
                if iy < 0 || iy as usize >= s.h {
                    continue;
                }
                let src = &input[((img * s.h + iy as usize) * s.w) * c..][..s.w * c];
                let dst = &mut padded[ky * row_len..(ky + 1) * row_len];
                let start = g.pad_w * c;
                dst[..start].fill(zp);
                dst[start..start + src.len()].copy_from_slice(src);
                dst[start + src.len()..].fill(zp);
            }
            let (padded, zero): (&[u8], &[u8]) = (padded, zero_row);
            let rows_of = |ky: usize| -> &[u8] {
                let iy = (oy * g.stride_h + ky) as isize - g.pad_h as isize;
                if iy < 0 || iy as usize >= s.h {
                    zero
                } else {
                    &padded[ky * row_len..(ky + 1) * row_len]
                }
            };
            #[cfg(target_arch = "x86_64")]
            if simd {
                let rs: [&[u8]; MAX_KH] =
                    std::array::from_fn(|ky| if ky < kh { rows_of(ky) } else { zero });
                // SAFETY: `uses_simd` checked AVX-512 VNNI + VBMI and packed the lanes
                // (`fits_shape`: `kh ≤ MAX_KH`); every row holds `row_len` bytes, enough for
                // the last window's 64-byte load (`row_len`); `o` holds one output row.
                unsafe { x86_64_stem::row(self, &rs[..kh], s.ow, row_len, o) };
                continue;
            }
            let _ = simd;
            self.row_scalar(&rows_of, s.ow, o);
        }
    }

    /// One output row with plain loops over the padded rows (the same integers and
    /// [`qat_core::requantize`] as the SIMD kernel).
    fn row_scalar<'a>(&self, rows_of: &dyn Fn(usize) -> &'a [u8], ow: usize, o: &mut [u8]) {
        let g = &self.geometry;
        let (c, kh, kw) = (self.c_in, g.kernel_h, g.kernel_w);
        for ox in 0..ow {
            for oc in 0..self.c_out {
                let mut acc = self.folded_bias[oc];
                for ky in 0..kh {
                    let r = &rows_of(ky)[ox * g.stride_w * c..];
                    for kx in 0..kw {
                        for ic in 0..c {
                            let w = self.weights[((oc * c + ic) * kh + ky) * kw + kx] as i32;
                            acc = acc.wrapping_add(w * r[kx * c + ic] as i32);
                        }
                    }
                }
                o[ox * self.c_out + oc] = qat_core::requantize(
                    acc,
                    self.multiplier[oc],
                    self.output_zero_point,
                    self.qmin,
                    self.qmax,
                ) as u8;
            }
        }
    }
}

/// Input and output sizes of a call.
struct Shape {
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
}
