//! Depthwise convolution (channel multiplier 1) on NHWC u8 activations, as direct kernels
//! vectorized over channels.
//!
//! Output element `(n, oy, ox, c)` is
//! `requantize(bias[c] + Σ_taps w[c][ky][kx] · (x[n][iy][ix][c] - zp_in))` where a padded
//! position reads `zp_in` (so it contributes exactly 0), with [`qat_core::requantize`] as the one
//! definition and the i32 sum taken modulo 2^32 (wrapping; any bias works and every path agrees).
//!
//! # How the SIMD kernels stay exact at the borders
//!
//! Weights are packed once as `[tap][C padded to 16]` i16 with the zero-point correction folded
//! into the bias: `bias' = bias - zp_in · Σ_taps w`. The kernels then accumulate `Σ w · x`
//! directly on the raw bytes (u8 widened to i32 lanes, multiplied by the i16 weight with an
//! exact `vpmaddwd` / `vpdpwssd` / `smlal`: no saturating instruction anywhere). A padded tap
//! reads from a row of `zp_in` bytes through a per-output-row indirection buffer, so it adds
//! `w · zp_in`, which the folded bias cancels exactly — borders, strides, dilations and any
//! padding run through the same interior loop.
//!
//! On AVX-512 VNNI, kernels up to 8 taps wide with undilated columns (3×3 and 5×5 included)
//! run a faster variant (`x86_64_quad`): each input row is rearranged once per channel block
//! into *quads* (four horizontally adjacent pixels in the four bytes of a dword lane), so one
//! exact `vpdpbusd` (u8 × i8, four products per lane, no saturation) covers four taps.
//!
//! ```
//! use qat_core::QParams;
//! use qat_kernels::{conv::Conv2dGeometry, dwconv::DwConv, Activation, Isa};
//! let c = 2;
//! let w = vec![1i8; c * 9]; // every tap 1
//! let dw = DwConv::new(
//!     c, Conv2dGeometry::square(3, 1, 1), &w, &[1.0, 1.0], &[0, 0],
//!     QParams { scale: 1.0, zero_point: 0 }, QParams { scale: 1.0, zero_point: 0 },
//!     Activation::None,
//! ).unwrap();
//! let x = vec![1u8; 3 * 3 * c]; // 1×3×3×2, all ones
//! let mut y = vec![0u8; 3 * 3 * c];
//! dw.run(&x, 1, 3, 3, &mut y, Isa::Scalar, 1).unwrap();
//! assert_eq!(&y[..2], &[4, 4]); // corner: 4 taps inside
//! assert_eq!(&y[8..10], &[9, 9]); // centre: 9 taps
//! ```

#[cfg(target_arch = "aarch64")]
mod aarch64;
mod reference;
pub mod shapes;
#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
mod x86_64_quad;

use crate::conv::Conv2dGeometry;
use crate::error::{check_isa, check_len, check_scale, check_zero_point, KernelError, Result};
use crate::{Activation, Isa};
use qat_core::QParams;
use rayon::prelude::*;

/// Channels per packed block: the widest vector (AVX-512: 16 i32 lanes).
pub(crate) const BLOCK: usize = 16;

/// A depthwise convolution with its weights packed once.
#[derive(Debug, Clone)]
pub struct DwConv {
    channels: usize,
    geometry: Conv2dGeometry,
    /// Canonical weights `[C][kh][kw]` (PyTorch's `[C, 1, kh, kw]`), for the scalar reference.
    weights: Vec<i8>,
    bias: Vec<i32>,
    /// `[tap][padded C]`, zero in the padded channels.
    packed_weights: Vec<i16>,
    /// `[ky][quad][padded C]` dwords of four i8 taps, for the AVX-512 quad kernel (empty when
    /// the geometry does not suit it).
    packed_quads: Vec<i32>,
    /// `bias - zp_in · Σ_taps w`, wrapping; padded with 0.
    packed_bias: Vec<i32>,
    /// Per channel `in_scale · w_scale / out_scale`; padded with 0.
    multiplier: Vec<f32>,
    input_zero_point: i32,
    output_zero_point: i32,
    qmin: i32,
    qmax: i32,
    /// `zp_in` repeated over the padded channel count: what a padded tap reads.
    zero_row: Vec<u8>,
}

/// Everything a row kernel needs, borrowed from [`DwConv`].
pub(crate) struct RowParams<'a> {
    pub channels: usize,
    pub taps: usize,
    pub packed_weights: &'a [i16],
    pub packed_bias: &'a [i32],
    pub multiplier: &'a [f32],
    pub zero_point: i32,
    pub lo: f32,
    pub hi: f32,
}

impl DwConv {
    /// Validate and pack a depthwise convolution.
    ///
    /// * `weights`: `[C][kh][kw]` i8 (PyTorch's `[C, 1, kh, kw]`), symmetric per channel, the
    ///   full `[-128, 127]` range allowed.
    /// * `weight_scales`: one per channel; `bias`: one i32 per channel, in units of
    ///   `input.scale · weight_scale[c]`.
    /// * `input` / `output`: u8 activation parameters; `activation` is fused as a clamp.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        channels: usize,
        geometry: Conv2dGeometry,
        weights: &[i8],
        weight_scales: &[f32],
        bias: &[i32],
        input: QParams,
        output: QParams,
        activation: Activation,
    ) -> Result<DwConv> {
        if channels == 0 {
            return Err(KernelError::Shape("depthwise conv with 0 channels".into()));
        }
        geometry.validate()?;
        let taps = geometry.taps();
        check_len(
            "depthwise weights [C][kh][kw]",
            channels * taps,
            weights.len(),
        )?;
        check_len("depthwise weight scales", channels, weight_scales.len())?;
        check_len("depthwise bias", channels, bias.len())?;
        check_scale("input scale", input.scale)?;
        check_scale("output scale", output.scale)?;
        check_zero_point("input zero point", input.zero_point, 0, 255)?;
        check_zero_point("output zero point", output.zero_point, 0, 255)?;
        for &s in weight_scales {
            check_scale("weight scale", s)?;
        }
        let cp = channels.div_ceil(BLOCK) * BLOCK;
        let mut packed_weights = vec![0i16; taps * cp];
        let mut packed_bias = vec![0i32; cp];
        let mut multiplier = vec![0f32; cp];
        for c in 0..channels {
            let mut sum_w = 0i32;
            for t in 0..taps {
                let w = weights[c * taps + t];
                packed_weights[t * cp + c] = w as i16;
                sum_w += w as i32;
            }
            packed_bias[c] = bias[c].wrapping_sub(input.zero_point.wrapping_mul(sum_w));
            let m = qat_core::requant_multiplier(input.scale, weight_scales[c], output.scale);
            if !(m.is_finite() && m > 0.0) {
                return Err(KernelError::Scale {
                    what: "requantization multiplier in_scale·w_scale/out_scale",
                    value: m,
                });
            }
            multiplier[c] = m;
        }
        let (qmin, qmax) = activation.bounds(output);
        let packed_quads = if Self::quad_geometry(&geometry) {
            #[cfg(target_arch = "x86_64")]
            let q =
                x86_64_quad::pack_quads(weights, channels, geometry.kernel_h, geometry.kernel_w);
            #[cfg(not(target_arch = "x86_64"))]
            let q = Vec::new();
            q
        } else {
            Vec::new()
        };
        Ok(DwConv {
            channels,
            geometry,
            weights: weights.to_vec(),
            bias: bias.to_vec(),
            packed_weights,
            packed_quads,
            packed_bias,
            multiplier,
            input_zero_point: input.zero_point,
            output_zero_point: output.zero_point,
            qmin,
            qmax,
            zero_row: vec![input.zero_point as u8; cp],
        })
    }

    /// Channels (input = output).
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The geometry it was built with.
    pub fn geometry(&self) -> Conv2dGeometry {
        self.geometry
    }

    /// Output `(height, width)` for an `h × w` input.
    pub fn output_hw(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        self.geometry.output_hw(h, w)
    }

    /// The kernel family [`DwConv::run`] uses for `isa`: the SIMD ISAs without a depthwise
    /// kernel of their own run their family's (AVX-VNNI → AVX2, dotprod / i8mm → NEON), and
    /// kernel sizes other than 3×3 / 5×5 (9 / 25 taps) run the scalar reference.
    pub fn kernel_isa(&self, isa: Isa) -> Isa {
        let family = match isa {
            Isa::Avx2 | Isa::AvxVnni => Isa::Avx2,
            Isa::Avx512Vnni => Isa::Avx512Vnni,
            Isa::Neon | Isa::Dotprod | Isa::I8mm => Isa::Neon,
            Isa::Scalar => Isa::Scalar,
        };
        let row_kernel = matches!(self.geometry.taps(), 9 | 25);
        match family {
            Isa::Avx512Vnni if Self::quad_geometry(&self.geometry) || row_kernel => family,
            Isa::Scalar => family,
            _ if row_kernel => family,
            _ => Isa::Scalar,
        }
    }

    /// Geometries the AVX-512 quad kernel handles: consecutive taps along x, up to 8 wide.
    fn quad_geometry(g: &Conv2dGeometry) -> bool {
        cfg!(target_arch = "x86_64") && g.dilation_w == 1 && g.kernel_w <= 8
    }

    /// Whether `family` runs the AVX-512 quad kernel (see `x86_64_quad`) for output width
    /// `ow`. Building quad rows costs per input position, so narrow outputs (and strided ones,
    /// which skip positions) run the indirection kernel when it exists: measured on a Xeon
    /// (Sapphire Rapids class), quad wins from 14 output columns at stride 1 and from 28 at
    /// stride 2 and loses below.
    fn uses_quads(&self, family: Isa, ow: usize) -> bool {
        let g = &self.geometry;
        let wide = if g.stride_w == 1 { ow >= 14 } else { ow >= 28 };
        let row_kernel = matches!(g.taps(), 9 | 25);
        family == Isa::Avx512Vnni && Self::quad_geometry(g) && (wide || !row_kernel)
    }

    /// Run on an NHWC u8 input `[n][h][w][C]`, writing `[n][oh][ow][C]` into `output`.
    ///
    /// `threads <= 1` runs on the calling thread (no pool); more splits the `n · oh` output
    /// rows over the current rayon pool. The result is identical for any thread count and
    /// every ISA. Returns the kernel family that ran (see [`DwConv::kernel_isa`]).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        input: &[u8],
        n: usize,
        h: usize,
        w: usize,
        output: &mut [u8],
        isa: Isa,
        threads: usize,
    ) -> Result<Isa> {
        check_isa(isa)?;
        if n == 0 {
            return Err(KernelError::Shape("depthwise conv batch is 0".into()));
        }
        let (oh, ow) = self.output_hw(h, w)?;
        let c = self.channels;
        let in_len = n
            .checked_mul(h)
            .and_then(|v| v.checked_mul(w))
            .and_then(|v| v.checked_mul(c))
            .ok_or_else(|| KernelError::Shape("input size overflows usize".into()))?;
        check_len("depthwise input NHWC", in_len, input.len())?;
        check_len("depthwise output NHWC", n * oh * ow * c, output.len())?;
        let kernel = self.kernel_isa(isa);
        if self.uses_quads(kernel, ow) {
            self.run_quads(input, n, h, w, oh, ow, output, threads);
            return Ok(kernel);
        }
        let row_len = ow * c;
        let do_row = |row: usize, out: &mut [u8], scratch: &mut Vec<*const u8>| {
            let (b, oy) = (row / oh, row % oh);
            match kernel {
                Isa::Scalar => reference::dwconv_row(self, input, h, w, b, oy, ow, out),
                _ => self.simd_row(kernel, input, h, w, b, oy, ow, out, scratch),
            }
        };
        if threads <= 1 {
            let mut scratch = Vec::new();
            for (row, out) in output.chunks_mut(row_len).enumerate() {
                do_row(row, out, &mut scratch);
            }
        } else {
            output
                .par_chunks_mut(row_len)
                .enumerate()
                .for_each_init(Vec::new, |scratch, (row, out)| do_row(row, out, scratch));
        }
        Ok(kernel)
    }

    /// The AVX-512 quad kernel over bands of output rows (one band per image on one thread;
    /// about two bands per thread otherwise). Each band computes its rows independently, so
    /// the split does not change the result.
    #[allow(clippy::too_many_arguments)]
    fn run_quads(
        &self,
        input: &[u8],
        n: usize,
        h: usize,
        w: usize,
        oh: usize,
        ow: usize,
        output: &mut [u8],
        threads: usize,
    ) {
        let c = self.channels;
        let bands_per_image = if threads <= 1 {
            1
        } else {
            (threads * 2).div_ceil(n).clamp(1, oh)
        };
        let rows_per_band = oh.div_ceil(bands_per_image);
        let mut tasks = Vec::new();
        for (b, image) in output.chunks_mut(oh * ow * c).enumerate() {
            for (i, band) in image.chunks_mut(rows_per_band * ow * c).enumerate() {
                let oy0 = i * rows_per_band;
                tasks.push((b, oy0, (oy0 + rows_per_band).min(oh), band));
            }
        }
        let run = |(b, oy0, oy1, band): (usize, usize, usize, &mut [u8])| {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: only reached when `run` checked the AVX-512 VNNI ISA and `uses_quads`
            // holds; `input` holds the whole validated tensor, `b < n`, and `band` holds
            // exactly rows `oy0..oy1` of image `b`.
            unsafe {
                x86_64_quad::rows_avx512_quad(self, input, h, w, b, oy0, oy1, ow, band)
            }
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!(
                "quad kernel is x86-64 only ({b}, {oy0}, {oy1}, {})",
                band.len()
            )
        };
        if threads <= 1 {
            tasks.into_iter().for_each(run);
        } else {
            tasks.into_par_iter().for_each(run);
        }
    }

    /// One output row through a SIMD kernel: build the row's indirection buffer (a pointer per
    /// output pixel and tap, to the input pixel or to the zero-point row), then call the kernel.
    #[allow(clippy::too_many_arguments)]
    fn simd_row(
        &self,
        kernel: Isa,
        input: &[u8],
        h: usize,
        w: usize,
        b: usize,
        oy: usize,
        ow: usize,
        out: &mut [u8],
        ptrs: &mut Vec<*const u8>,
    ) {
        let g = &self.geometry;
        let c = self.channels;
        let taps = g.taps();
        ptrs.clear();
        ptrs.reserve(ow * taps);
        let zero = self.zero_row.as_ptr();
        for ox in 0..ow {
            for ky in 0..g.kernel_h {
                let iy = (oy * g.stride_h + ky * g.dilation_h) as isize - g.pad_h as isize;
                for kx in 0..g.kernel_w {
                    let ix = (ox * g.stride_w + kx * g.dilation_w) as isize - g.pad_w as isize;
                    let inside = iy >= 0 && (iy as usize) < h && ix >= 0 && (ix as usize) < w;
                    ptrs.push(if inside {
                        let off = ((b * h + iy as usize) * w + ix as usize) * c;
                        input[off..off + c].as_ptr()
                    } else {
                        zero
                    });
                }
            }
        }
        let p = RowParams {
            channels: c,
            taps,
            packed_weights: &self.packed_weights,
            packed_bias: &self.packed_bias,
            multiplier: &self.multiplier,
            zero_point: self.output_zero_point,
            lo: (self.qmin - self.output_zero_point) as f32,
            hi: (self.qmax - self.output_zero_point) as f32,
        };
        debug_assert_eq!(out.len(), ow * c);
        match kernel {
            // SAFETY: `kernel_isa` only yields an ISA family that `run` checked is supported
            // (AVX-VNNI implies AVX2); every pointer in `ptrs` addresses `c` readable bytes (an
            // input pixel or the zero row, which holds `c` rounded up to 16), `out` holds
            // `ow · c` bytes, and the packed arrays hold `taps` × (C rounded up to 16).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { x86_64::row_avx2(&p, ptrs, ow, out) },
            // SAFETY: as above, with AVX-512F/BW/VL + VNNI checked by `run`.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => unsafe { x86_64::row_avx512(&p, ptrs, ow, out) },
            // SAFETY: as above, with NEON checked by `run`.
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => unsafe { aarch64::row_neon(&p, ptrs, ow, out) },
            _ => reference::dwconv_row(self, input, h, w, b, oy, ow, out),
        }
    }
}
