//! Convolution on NHWC u8 activations with i8 weights (per output channel, symmetric), built on
//! the packed GEMM ([`crate::gemm::PackedGemm`]) and the direct depthwise kernel.
//!
//! [`Conv2d::new`] picks the path once and packs for it:
//! * depthwise (`groups = C_in = C_out`): [`crate::dwconv::DwConv`], the direct NHWC kernel;
//! * 1×1, stride 1, no padding: the GEMM straight over the input pixels (`m = N·H·W`,
//!   `lda = C_in`, no copy), one GEMM per group;
//! * anything else (k×k, stride, padding, dilation, groups, the 3-channel stem): im2col into a
//!   u8 matrix padded with the input zero point, then one GEMM per group writing its output
//!   channel slice in place (`ldc = C_out`).
//!
//! [`StemConv`] is a direct kernel for the few-input-channel case (a network's stem), which
//! the runtime uses instead of im2col + GEMM where the CPU has AVX-512 VNNI + VBMI.
//!
//! Every path computes
//! `out[n][oy][ox][oc] = requantize(bias[oc] + Σ_{ic,ky,kx} w[oc][ic][ky][kx] · (x - zp_in))` with
//! [`qat_core::requantize`], bit-identical to [`Conv2d::run_reference`].
//!
//! ```
//! use qat_core::QParams;
//! use qat_kernels::{conv::{Conv2d, Conv2dGeometry}, isa, Activation};
//! let q = QParams { scale: 1.0, zero_point: 0 };
//! // 1 → 1 channel, 3×3 of ones, padding 1: a 3×3 box sum.
//! let conv = Conv2d::new(1, 1, 1, Conv2dGeometry::square(3, 1, 1), &[1; 9], &[1.0], None,
//!                        q, q, Activation::None, isa::active()).unwrap();
//! let x = [1u8; 9];
//! let mut y = [0u8; 9];
//! conv.run(&x, 1, 3, 3, &mut y, 1).unwrap();
//! assert_eq!(y, [4, 6, 4, 6, 9, 6, 4, 6, 4]);
//! ```

mod checks;
mod geometry;
mod im2col;
mod reference;
mod stem;

pub use geometry::Conv2dGeometry;
pub use stem::StemConv;

use crate::dwconv::DwConv;
use crate::error::{check_scale, KernelError, Result};
use crate::gemm::PackedGemm;
use crate::{Activation, Isa};
use checks::{Names, Operands, Run};
use im2col::{im2col, Im2colInput};
use qat_core::{QParams, Requant};

/// What [`Conv2d`]'s errors call its operands.
const NAMES: Names = Names {
    weights: "conv weights [C_out][C_in/groups][kh][kw]",
    weight_scales: "conv weight scales",
    bias: "conv bias",
    input_scale: "conv input scale",
    output_scale: "conv output scale",
    input_zero_point: "conv input",
    output_zero_point: "conv output",
    batch_zero: "conv batch is 0",
    size_overflow: "conv input size overflows usize",
    input: "conv input NHWC",
    output: "conv output NHWC",
};

/// How a [`Conv2d`] runs.
#[derive(Debug, Clone)]
enum Path {
    Depthwise(Box<DwConv>),
    /// One GEMM per group; `direct` = 1×1 stride 1 unpadded (no im2col).
    Gemm {
        gemms: Vec<PackedGemm>,
        direct: bool,
    },
}

/// A quantized 2-D convolution, packed once for one ISA.
#[derive(Debug, Clone)]
pub struct Conv2d {
    in_channels: usize,
    out_channels: usize,
    groups: usize,
    geometry: Conv2dGeometry,
    /// Canonical OIHW weights `[C_out][C_in / groups][kh][kw]` for the reference.
    weights: Vec<i8>,
    bias: Option<Vec<i32>>,
    input: QParams,
    requant: Vec<Requant>,
    isa: Isa,
    path: Path,
}

impl Conv2d {
    /// Validate and pack.
    ///
    /// * `weights`: PyTorch's OIHW layout `[C_out][C_in / groups][kh][kw]`, i8 symmetric per
    ///   output channel (the full `[-128, 127]` range works); `weight_scales`: one per output
    ///   channel.
    /// * `bias`: `None` or one i32 per output channel, in units of
    ///   `input.scale · weight_scale[oc]`.
    /// * `isa`: the kernel family to pack for ([`crate::isa::active`] for the best); `Err` if
    ///   the CPU cannot run it.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        groups: usize,
        geometry: Conv2dGeometry,
        weights: &[i8],
        weight_scales: &[f32],
        bias: Option<&[i32]>,
        input: QParams,
        output: QParams,
        activation: Activation,
        isa: Isa,
    ) -> Result<Conv2d> {
        crate::error::check_isa(isa)?;
        geometry.validate()?;
        if in_channels == 0 || out_channels == 0 || groups == 0 {
            return Err(KernelError::Shape(format!(
                "conv with C_in = {in_channels}, C_out = {out_channels}, groups = {groups}"
            )));
        }
        if !in_channels.is_multiple_of(groups) || !out_channels.is_multiple_of(groups) {
            return Err(KernelError::Param(format!(
                "groups = {groups} must divide C_in = {in_channels} and C_out = {out_channels}"
            )));
        }
        let (cg, og) = (in_channels / groups, out_channels / groups);
        let taps = geometry.taps();
        let operands = Operands {
            expected_weights: out_channels * cg * taps,
            c_out: out_channels,
            weights,
            weight_scales,
            bias,
            input,
            output,
        };
        checks::check_operands(&NAMES, &operands)?;
        for &s in weight_scales {
            check_scale("conv weight scale", s)?;
        }
        let (qmin, qmax) = activation.bounds(output);
        let requant: Vec<Requant> = weight_scales
            .iter()
            .map(|&ws| Requant {
                multiplier: qat_core::requant_multiplier(input.scale, ws, output.scale),
                zero_point: output.zero_point,
                qmin,
                qmax,
            })
            .collect();
        for r in &requant {
            check_scale("conv multiplier in_scale·w_scale/out_scale", r.multiplier)?;
        }

        let path = if groups == in_channels && groups == out_channels {
            let zeros = vec![0i32; out_channels];
            Path::Depthwise(Box::new(DwConv::new(
                in_channels,
                geometry,
                weights,
                weight_scales,
                bias.unwrap_or(&zeros),
                input,
                output,
                activation,
            )?))
        } else {
            let k = taps * cg;
            let mut gemms = Vec::with_capacity(groups);
            for grp in 0..groups {
                // OIHW → [oc][ky][kx][ic]: the im2col row order.
                let mut w = vec![0i8; og * k];
                for o in 0..og {
                    let oc = grp * og + o;
                    for ic in 0..cg {
                        for t in 0..taps {
                            w[o * k + t * cg + ic] = weights[(oc * cg + ic) * taps + t];
                        }
                    }
                }
                let b = bias.map(|b| &b[grp * og..(grp + 1) * og]);
                gemms.push(PackedGemm::new(
                    &w,
                    og,
                    k,
                    b,
                    input.zero_point,
                    &requant[grp * og..(grp + 1) * og],
                    isa,
                )?);
            }
            let direct = taps == 1
                && geometry.stride_h == 1
                && geometry.stride_w == 1
                && geometry.pad_h == 0
                && geometry.pad_w == 0;
            Path::Gemm { gemms, direct }
        };
        Ok(Conv2d {
            in_channels,
            out_channels,
            groups,
            geometry,
            weights: weights.to_vec(),
            bias: bias.map(<[i32]>::to_vec),
            input,
            requant,
            isa,
            path,
        })
    }

    /// Output `(height, width)` for an `h × w` input.
    pub fn output_hw(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        self.geometry.output_hw(h, w)
    }

    /// Which kernel runs, e.g. `"im2col+avx512vnni_gemm_i32_8x48c4"` or `"dwconv_avx2"`.
    pub fn kernel_name(&self) -> String {
        match &self.path {
            Path::Depthwise(dw) => format!("dwconv_{}", dw.kernel_isa(self.isa)),
            Path::Gemm { gemms, direct } => format!(
                "{}{}",
                if *direct { "1x1+" } else { "im2col+" },
                gemms[0].kernel_name()
            ),
        }
    }

    fn check_run(
        &self,
        input: &[u8],
        n: usize,
        h: usize,
        w: usize,
        out: &[u8],
    ) -> Result<(usize, usize)> {
        let run = Run {
            n,
            h,
            w,
            c_in: self.in_channels,
            c_out: self.out_channels,
        };
        checks::check_run(&NAMES, &self.geometry, &run, input.len(), out.len())
    }

    /// Run on NHWC `input` `[n][h][w][C_in]` into `out` `[n][oh][ow][C_out]`, on `threads`
    /// threads (1 = the calling thread only). Identical results for any thread count.
    pub fn run(
        &self,
        input: &[u8],
        n: usize,
        h: usize,
        w: usize,
        out: &mut [u8],
        threads: usize,
    ) -> Result<()> {
        let (oh, ow) = self.check_run(input, n, h, w, out)?;
        let threads = threads.max(1);
        let (ci, co) = (self.in_channels, self.out_channels);
        let (cg, og) = (ci / self.groups, co / self.groups);
        match &self.path {
            Path::Depthwise(dw) => {
                dw.run(input, n, h, w, out, self.isa, threads)?;
            }
            Path::Gemm { gemms, direct } => {
                let m = n * oh * ow;
                let mut cols = Vec::new();
                for (grp, gemm) in gemms.iter().enumerate() {
                    let dst = &mut out[grp * og..];
                    if *direct {
                        gemm.gemm_u8(&input[grp * cg..], m, ci, dst, co, threads)?;
                    } else {
                        let k = self.geometry.taps() * cg;
                        cols.resize(m * k, 0);
                        let x = Im2colInput {
                            data: input,
                            h,
                            w,
                            c: ci,
                            c0: grp * cg,
                            cg,
                            zero_point: self.input.zero_point as u8,
                        };
                        im2col(x, &self.geometry, oh, ow, &mut cols, threads);
                        gemm.gemm_u8(&cols, m, k, dst, co, threads)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The scalar reference (plain loops over the canonical weights), same arguments and
    /// output as [`Conv2d::run`].
    pub fn run_reference(
        &self,
        input: &[u8],
        n: usize,
        h: usize,
        w: usize,
        out: &mut [u8],
    ) -> Result<()> {
        let (oh, ow) = self.check_run(input, n, h, w, out)?;
        reference::conv2d_reference(self, input, n, h, w, oh, ow, out);
        Ok(())
    }
}
