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
//! For 3×3 undilated kernels (stride 1 or 2 along x) with at least 16 channels, a kernel over
//! 64-channel blocks (`x86_64_dw3x3`) builds those quads with byte / word unpacks from NHWC
//! pixels once per input row into a ring of padded *quad rows*, so the three output rows that
//! read an input row share its shuffles and borders cost no branches; blocks of at most 32 or
//! 16 channels carry two or four output pixels per vector.
//!
//! Scratch: [`DwConv::run_with_scratch`] takes the row caches / indirection buffers from the
//! caller ([`DwConv::scratch_len`] bytes, the same for every batch size), so a model that
//! plans it once allocates nothing per call; [`DwConv::run`] allocates it itself.
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
mod x86_64_dw3x3;
#[cfg(target_arch = "x86_64")]
mod x86_64_quad;

use crate::conv::Conv2dGeometry;
use crate::error::{check_isa, check_len, check_scale, check_zero_point, KernelError, Result};
use crate::fold::fold_channels;
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
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
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
    /// The AVX-512 3×3 kernel's weights, biases and multipliers in its permuted channel order
    /// (see `x86_64_dw3x3`; empty when the geometry does not suit it).
    dw3x3_weights: Vec<u8>,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    dw3x3_bias: Vec<i32>,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    dw3x3_mult: Vec<f32>,
    /// Every channel's `|f32(acc) · multiplier|` stays below 2³¹ for any input
    /// ([`crate::gemm::products_fit_i32`]): the 3×3 kernel may then clamp after converting.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fits_i32: bool,
}

/// Which kernel runs a call (see [`DwConv::kernel_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Scalar,
    /// A row kernel with a per-row indirection buffer.
    Rows(Isa),
    /// AVX-512 quad rows (`x86_64_quad`).
    Quad,
    /// AVX-512 3×3 over 64-channel blocks (`x86_64_dw3x3`).
    Dw3x3,
}

/// Input rows a quad-kernel ring may span (its row tags live on the stack).
const MAX_QUAD_SPAN: usize = 8;

/// Fewest channels for which the 64-channel 3×3 kernel beats the 16-channel quad kernel: a
/// block of 16 or fewer channels carries four output pixels per vector (`x86_64_dw3x3`'s
/// folding), so from 16 channels no lane is wasted.
const DW3X3_MIN_CHANNELS: usize = 16;

/// Scratch regions start on a cache line.
const SCRATCH_ALIGN: usize = 64;

/// Bands a multi-threaded call splits its output rows into: two per thread balance uneven
/// bands without losing the row caches' reuse.
fn bands(threads: usize) -> usize {
    if threads <= 1 {
        1
    } else {
        2 * threads
    }
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
        for c in 0..channels {
            for t in 0..taps {
                packed_weights[t * cp + c] = weights[c * taps + t] as i16;
            }
        }
        let folded = fold_channels(
            weights,
            taps,
            Some(bias),
            input,
            weight_scales,
            output.scale,
        )?;
        let fits_i32 = folded.fits_i32;
        let mut packed_bias = folded.bias;
        packed_bias.resize(cp, 0);
        let mut multiplier = folded.multiplier;
        multiplier.resize(cp, 0.0);
        let (qmin, qmax) = activation.bounds(output);
        let dw3x3 = Self::dw3x3_geometry(&geometry);
        #[cfg(target_arch = "x86_64")]
        let (dw3x3_weights, dw3x3_bias, dw3x3_mult) = if dw3x3 {
            (
                x86_64_dw3x3::pack_weights(weights, channels),
                x86_64_dw3x3::permute(&packed_bias, channels, 0),
                x86_64_dw3x3::permute(&multiplier, channels, 0.0),
            )
        } else {
            (Vec::new(), Vec::new(), Vec::new())
        };
        #[cfg(not(target_arch = "x86_64"))]
        let (dw3x3_weights, dw3x3_bias, dw3x3_mult) = {
            let _ = dw3x3;
            (Vec::new(), Vec::new(), Vec::new())
        };
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
            dw3x3_weights,
            dw3x3_bias,
            dw3x3_mult,
            fits_i32,
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

    /// Geometries the AVX-512 quad kernel handles: consecutive taps along x, up to 8 wide,
    /// rows spanning at most 8 input rows (its ring of quad rows).
    fn quad_geometry(g: &Conv2dGeometry) -> bool {
        cfg!(target_arch = "x86_64")
            && g.dilation_w == 1
            && g.kernel_w <= 8
            && (g.kernel_h - 1) * g.dilation_h < MAX_QUAD_SPAN
    }

    /// Geometries the AVX-512 3×3 kernel handles: 3×3, undilated, stride 1 or 2 along x.
    fn dw3x3_geometry(g: &Conv2dGeometry) -> bool {
        cfg!(target_arch = "x86_64")
            && (g.kernel_h, g.kernel_w) == (3, 3)
            && (g.dilation_h, g.dilation_w) == (1, 1)
            && matches!(g.stride_w, 1 | 2)
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

    /// The kernel a call with `isa` on inputs `w` pixels wide runs, e.g.
    /// `"avx512vnni_dw3x3_c64"`; `Err` if `w` is too small for the kernel.
    pub fn kernel_name(&self, isa: Isa, w: usize) -> Result<&'static str> {
        let (_, ow) = self.geometry.output_hw(self.min_h(), w)?;
        Ok(match self.variant(self.kernel_isa(isa), ow) {
            Variant::Scalar => "scalar",
            Variant::Rows(Isa::Avx2) => "avx2_rows",
            Variant::Rows(Isa::Neon) => "neon_rows",
            Variant::Rows(_) => "avx512vnni_rows",
            Variant::Quad => "avx512vnni_quad",
            Variant::Dw3x3 => "avx512vnni_dw3x3_c64",
        })
    }

    /// Smallest input height with at least one output row.
    fn min_h(&self) -> usize {
        let g = &self.geometry;
        ((g.kernel_h - 1) * g.dilation_h + 1)
            .saturating_sub(2 * g.pad_h)
            .max(1)
    }

    fn variant(&self, kernel: Isa, ow: usize) -> Variant {
        if kernel == Isa::Scalar {
            Variant::Scalar
        } else if kernel == Isa::Avx512Vnni
            && !self.dw3x3_weights.is_empty()
            && self.channels >= DW3X3_MIN_CHANNELS
        {
            Variant::Dw3x3
        } else if self.uses_quads(kernel, ow) {
            Variant::Quad
        } else {
            Variant::Rows(kernel)
        }
    }

    /// Bytes of one band's scratch for `variant`, rounded up to [`SCRATCH_ALIGN`].
    fn band_scratch(&self, variant: Variant, ow: usize) -> usize {
        let g = &self.geometry;
        let bytes = match variant {
            Variant::Scalar => 0,
            Variant::Rows(_) => ow * g.taps() * std::mem::size_of::<*const u8>(),
            #[cfg(target_arch = "x86_64")]
            Variant::Quad => x86_64_quad::scratch_bytes(g, ow),
            #[cfg(target_arch = "x86_64")]
            Variant::Dw3x3 => x86_64_dw3x3::scratch_bytes(ow, g.stride_w, self.channels),
            #[cfg(not(target_arch = "x86_64"))]
            Variant::Quad | Variant::Dw3x3 => 0,
        };
        bytes.div_ceil(SCRATCH_ALIGN).max(1) * SCRATCH_ALIGN
    }

    /// Scratch bytes [`DwConv::run_with_scratch`] needs for inputs `h × w` with `isa` and
    /// `threads` (the same for every batch size).
    pub fn scratch_len(&self, h: usize, w: usize, isa: Isa, threads: usize) -> Result<usize> {
        let (_, ow) = self.output_hw(h, w)?;
        let per = self.band_scratch(self.variant(self.kernel_isa(isa), ow), ow);
        per.checked_mul(bands(threads))
            .and_then(|v| v.checked_add(SCRATCH_ALIGN))
            .ok_or_else(|| KernelError::Shape("depthwise scratch size overflows usize".into()))
    }

    /// Run on an NHWC u8 input `[n][h][w][C]`, writing `[n][oh][ow][C]` into `output`.
    ///
    /// `threads <= 1` runs on the calling thread (no pool); more splits the `n · oh` output
    /// rows over the current rayon pool. The result is identical for any thread count and
    /// every ISA. Returns the kernel family that ran (see [`DwConv::kernel_isa`]).
    ///
    /// Allocates its scratch; [`DwConv::run_with_scratch`] takes the caller's.
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
        let mut scratch = vec![0u8; self.scratch_len(h, w, isa, threads)?];
        self.run_with_scratch(input, n, h, w, output, isa, threads, &mut scratch)
    }

    /// [`DwConv::run`] with caller-provided scratch of at least
    /// [`DwConv::scratch_len`]`(h, w, isa, threads)` bytes (contents irrelevant): no
    /// allocation.
    #[allow(clippy::too_many_arguments)]
    pub fn run_with_scratch(
        &self,
        input: &[u8],
        n: usize,
        h: usize,
        w: usize,
        output: &mut [u8],
        isa: Isa,
        threads: usize,
        scratch: &mut [u8],
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
        let variant = self.variant(kernel, ow);
        let per = self.band_scratch(variant, ow);
        let bands = bands(threads);
        let need = per * bands + SCRATCH_ALIGN;
        if scratch.len() < need {
            return Err(KernelError::Length {
                what: "depthwise scratch (see DwConv::scratch_len)",
                expected: need,
                got: scratch.len(),
            });
        }
        let off = scratch.as_ptr().align_offset(SCRATCH_ALIGN);
        let scratch = &mut scratch[off..off + per * bands];
        let total = n * oh;
        let rows_per_band = total.div_ceil(bands);
        let shape = (h, w, oh, ow);
        let band = |(i, (out, scr)): (usize, (&mut [u8], &mut [u8]))| {
            let r0 = i * rows_per_band;
            let rows = r0..(r0 + rows_per_band).min(total);
            self.run_band(variant, input, shape, rows, out, scr);
        };
        if threads <= 1 {
            band((0, (output, scratch)));
        } else {
            output
                .par_chunks_mut(rows_per_band * ow * c)
                .zip(scratch.par_chunks_mut(per))
                .enumerate()
                .for_each(band);
        }
        Ok(kernel)
    }

    /// Output rows `rows` (flattened `b·oh + oy`) into `out` (exactly those rows) with one
    /// band's scratch.
    fn run_band(
        &self,
        variant: Variant,
        input: &[u8],
        (h, w, oh, ow): (usize, usize, usize, usize),
        rows: std::ops::Range<usize>,
        out: &mut [u8],
        scratch: &mut [u8],
    ) {
        let row_len = ow * self.channels;
        match variant {
            Variant::Scalar => {
                for (row, o) in rows.zip(out.chunks_mut(row_len)) {
                    reference::dwconv_row(self, input, h, w, row / oh, row % oh, ow, o);
                }
            }
            Variant::Rows(kernel) => {
                // SAFETY: every bit pattern is a valid raw pointer and each slot is written
                // before it is read (`simd_row`); the band scratch starts 64-byte aligned, so
                // the aligned middle covers `ow · taps` pointers (`band_scratch`).
                let (_, ptrs, _) = unsafe { scratch.align_to_mut::<*const u8>() };
                for (row, o) in rows.zip(out.chunks_mut(row_len)) {
                    self.simd_row(kernel, input, h, w, row / oh, row % oh, ow, o, ptrs);
                }
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Quad` is only chosen with AVX-512 VNNI checked by `run_with_scratch`
            // and `uses_quads`; the band's rows lie inside `n·oh`, `out` holds exactly them,
            // and `scratch` holds `band_scratch` bytes, 64-byte aligned.
            Variant::Quad => unsafe {
                x86_64_quad::rows_avx512_quad(self, input, (h, w, oh, ow), rows, out, scratch)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Dw3x3` is only chosen with AVX-512 VNNI checked and the 3×3 arrays
            // packed (`dw3x3_geometry`); rows, `out` and `scratch` as above.
            Variant::Dw3x3 => unsafe {
                let b = x86_64_dw3x3::Band { h, w, oh, ow, rows };
                x86_64_dw3x3::band(self, input, b, out, scratch)
            },
            #[cfg(not(target_arch = "x86_64"))]
            Variant::Quad | Variant::Dw3x3 => unreachable!("x86-64 kernels chosen elsewhere"),
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
        ptrs: &mut [*const u8],
    ) {
        let g = &self.geometry;
        let c = self.channels;
        let taps = g.taps();
        let ptrs = &mut ptrs[..ow * taps];
        let zero = self.zero_row.as_ptr();
        let mut slots = ptrs.iter_mut();
        for ox in 0..ow {
            for ky in 0..g.kernel_h {
                let iy = (oy * g.stride_h + ky * g.dilation_h) as isize - g.pad_h as isize;
                for kx in 0..g.kernel_w {
                    let ix = (ox * g.stride_w + kx * g.dilation_w) as isize - g.pad_w as isize;
                    let inside = iy >= 0 && (iy as usize) < h && ix >= 0 && (ix as usize) < w;
                    let p = if inside {
                        let off = ((b * h + iy as usize) * w + ix as usize) * c;
                        input[off..off + c].as_ptr()
                    } else {
                        zero
                    };
                    if let Some(slot) = slots.next() {
                        *slot = p;
                    }
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
