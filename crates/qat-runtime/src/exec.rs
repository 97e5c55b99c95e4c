//! Packed kernels for each op and how one op runs over the arena's buffers.

use crate::builder::geometry;
use crate::error::{kernel_err, op_err};
use crate::float_ops;
use crate::op::{Bias, Node, Op, Shape, ValueType};
use crate::Result;
use qat_core::{QParams, Requant};
use qat_kernels::conv::{Conv2dGeometry, StemConv};
use qat_kernels::dwconv::DwConv;
use qat_kernels::elementwise::{self, QuantizedAdd};
use qat_kernels::gemm::PackedGemm;
use qat_kernels::Isa;
use rayon::prelude::*;

/// One op, packed for one ISA.
#[derive(Debug, Clone)]
pub(crate) enum Kernel {
    Quantize(QParams),
    Dequantize(QParams),
    Depthwise(DwConv),
    /// Few input channels, k×k (the stem): the direct AVX-512 kernel, no im2col.
    Stem(StemConv),
    /// One GEMM per group; `direct` = 1×1 stride 1 unpadded (the GEMM reads the input pixels).
    ConvGemm {
        gemms: Vec<PackedGemm>,
        direct: bool,
        geometry: Conv2dGeometry,
        zero_point: u8,
    },
    Linear(PackedGemm),
    Add(QuantizedAdd),
    Pool {
        input: QParams,
        output: QParams,
    },
    Flatten,
    /// Float linear / 1×1 conv: the weights stay in the node.
    FloatMatrix,
    FloatRelu,
    FloatHardswish,
    FloatAdd,
}

fn u8_params(ty: ValueType) -> QParams {
    match ty {
        ValueType::U8(q) => q,
        // The builder only lets u8 values reach the ops that ask.
        ValueType::F32 => QParams {
            scale: 1.0,
            zero_point: 0,
        },
    }
}

fn bias_i32(b: &Bias) -> Option<&[i32]> {
    match b {
        Bias::I32(v) => Some(v),
        // The builder turns F32 biases into I32.
        Bias::None | Bias::F32(_) => None,
    }
}

fn requants(in_s: f32, scales: &[f32], out: QParams, act: qat_kernels::Activation) -> Vec<Requant> {
    let (qmin, qmax) = act.bounds(out);
    scales
        .iter()
        .map(|&ws| Requant {
            multiplier: qat_core::requant_multiplier(in_s, ws, out.scale),
            zero_point: out.zero_point,
            qmin,
            qmax,
        })
        .collect()
}

/// Kernel scratch (batch-independent) a step needs: depthwise / stem bytes, pool i32 sums.
pub(crate) fn kernel_scratch(
    name: &str,
    k: &Kernel,
    in_shape: Shape,
    isa: Isa,
    threads: usize,
) -> Result<(usize, usize)> {
    Ok(match k {
        Kernel::Depthwise(dw) => (
            dw.scratch_len(in_shape.h, in_shape.w, isa, threads)
                .map_err(kernel_err(name))?,
            0,
        ),
        Kernel::Stem(st) => (
            st.scratch_len(in_shape.h, in_shape.w, threads)
                .map_err(kernel_err(name))?,
            0,
        ),
        Kernel::Pool { .. } => (0, elementwise::pool_scratch_len(in_shape.c, threads)),
        _ => (0, 0),
    })
}

/// Elements per sample of the im2col matrix this conv needs (0 when it needs none).
pub(crate) fn cols_per_sample(k: &Kernel, out_shape: Shape) -> usize {
    match k {
        Kernel::ConvGemm {
            gemms,
            direct: false,
            ..
        } => out_shape.h * out_shape.w * gemms[0].k(),
        _ => 0,
    }
}

/// im2col row length multiple (the K group of the widest-grouped x86 kernels).
const IM2COL_K_ALIGN: usize = 4;

/// Pack `node` for `isa`; `in_ty` / `in_shape` describe its (first) input.
pub(crate) fn pack(node: &Node, in_ty: ValueType, in_shape: Shape, isa: Isa) -> Result<Kernel> {
    let name = node.name.as_str();
    let in_q = u8_params(in_ty);
    Ok(match &node.op {
        Op::Quantize { qparams, .. } => Kernel::Quantize(*qparams),
        Op::Dequantize { .. } => Kernel::Dequantize(in_q),
        Op::Conv2d { params: p, .. } => {
            let geo = geometry(p);
            let (ci, co, g) = (in_shape.c, p.out_channels, p.groups);
            if g == ci && g == co {
                let zeros = vec![0i32; co];
                let bias = bias_i32(&p.bias).unwrap_or(&zeros);
                Kernel::Depthwise(
                    DwConv::new(
                        co,
                        geo,
                        &p.weight,
                        &p.weight_scales,
                        bias,
                        in_q,
                        p.output,
                        p.activation,
                    )
                    .map_err(kernel_err(name))?,
                )
            } else if g == 1
                && geo.taps() > 1
                && isa == Isa::Avx512Vnni
                && StemConv::fast_path(ci, &geo)
            {
                // Few input channels: im2col rows of a handful of bytes would leave the GEMM
                // mostly overhead (the stem ran at 8% of the VNNI peak that way).
                Kernel::Stem(
                    StemConv::new(
                        ci,
                        co,
                        geo,
                        &p.weight,
                        &p.weight_scales,
                        bias_i32(&p.bias),
                        in_q,
                        p.output,
                        p.activation,
                    )
                    .map_err(kernel_err(name))?,
                )
            } else {
                let (cg, og, taps) = (ci / g, co / g, geo.taps());
                let direct = taps == 1
                    && geo.stride_h == 1
                    && geo.stride_w == 1
                    && geo.pad_h == 0
                    && geo.pad_w == 0;
                // im2col rows are padded to whole 4-byte groups (zero weights, zero-point
                // bytes): the GEMM kernels then never take their byte-wise K tail (the stems'
                // K = 9 or 27).
                let k = if direct {
                    taps * cg
                } else {
                    (taps * cg).next_multiple_of(IM2COL_K_ALIGN)
                };
                let rq = requants(in_q.scale, &p.weight_scales, p.output, p.activation);
                let mut gemms = Vec::with_capacity(g);
                for grp in 0..g {
                    // OIHW → [oc][ky][kx][ic]: the im2col row order.
                    let mut w = vec![0i8; og * k];
                    for o in 0..og {
                        let oc = grp * og + o;
                        for ic in 0..cg {
                            for t in 0..taps {
                                w[o * k + t * cg + ic] = p.weight[(oc * cg + ic) * taps + t];
                            }
                        }
                    }
                    let b = bias_i32(&p.bias).map(|b| &b[grp * og..(grp + 1) * og]);
                    gemms.push(
                        PackedGemm::new(
                            &w,
                            og,
                            k,
                            b,
                            in_q.zero_point,
                            &rq[grp * og..(grp + 1) * og],
                            isa,
                        )
                        .map_err(kernel_err(name))?,
                    );
                }
                Kernel::ConvGemm {
                    gemms,
                    direct,
                    geometry: geo,
                    zero_point: in_q.zero_point as u8,
                }
            }
        }
        Op::Linear { params: p, .. } => {
            let rq = requants(in_q.scale, &p.weight_scales, p.output, p.activation);
            Kernel::Linear(
                PackedGemm::new(
                    &p.weight,
                    p.out_features,
                    in_shape.c,
                    bias_i32(&p.bias),
                    in_q.zero_point,
                    &rq,
                    isa,
                )
                .map_err(kernel_err(name))?,
            )
        }
        Op::Add {
            output, activation, ..
        } => {
            // The builder checked both inputs; the second's qparams come with the step.
            return Err(op_err(
                name,
                format!("internal: add packed without its inputs ({output:?}, {activation:?})"),
            ));
        }
        Op::GlobalAvgPool { output, .. } => Kernel::Pool {
            input: in_q,
            output: *output,
        },
        Op::Flatten { .. } => Kernel::Flatten,
        Op::FloatLinear { .. } | Op::FloatConv1x1 { .. } => Kernel::FloatMatrix,
        Op::FloatRelu { .. } => Kernel::FloatRelu,
        Op::FloatHardswish { .. } => Kernel::FloatHardswish,
        Op::FloatAdd { .. } => Kernel::FloatAdd,
    })
}

/// Pack a quantized add whose inputs have qparams `a` and `b`.
pub(crate) fn pack_add(node: &Node, a: QParams, b: QParams) -> Result<Kernel> {
    match &node.op {
        Op::Add {
            output, activation, ..
        } => Ok(Kernel::Add(
            QuantizedAdd::new(a, b, *output, *activation).map_err(kernel_err(&node.name))?,
        )),
        _ => Err(op_err(&node.name, "internal: not an add")),
    }
}

/// The input and output buffers of one step.
pub(crate) enum Io<'a> {
    U8ToU8(&'a [u8], Option<&'a [u8]>, &'a mut [u8]),
    F32ToU8(&'a [f32], &'a mut [u8]),
    U8ToF32(&'a [u8], &'a mut [f32]),
    F32ToF32(&'a [f32], Option<&'a [f32]>, &'a mut [f32]),
    /// Flatten: nothing to move.
    None,
}

/// Everything a step needs besides its buffers.
pub(crate) struct StepCtx<'a> {
    pub node: &'a Node,
    pub kernel: &'a Kernel,
    pub in_shape: Shape,
    pub batch: usize,
    pub isa: Isa,
    pub threads: usize,
    pub cols: &'a mut Vec<u8>,
    /// Depthwise / stem scratch (sized by [`kernel_scratch`]).
    pub dw_scratch: &'a mut [u8],
    /// Pool channel sums (sized by [`kernel_scratch`]).
    pub pool_sums: &'a mut [i32],
}

/// Run one step.
pub(crate) fn run_step(cx: StepCtx<'_>, io: Io<'_>) -> Result<()> {
    let name = cx.node.name.as_str();
    let (isa, threads, batch) = (cx.isa, cx.threads, cx.batch);
    let s = cx.in_shape;
    let ke = kernel_err(name);
    match (cx.kernel, io) {
        (Kernel::Flatten, _) => Ok(()),
        (Kernel::Quantize(q), Io::F32ToU8(x, y)) => {
            elementwise::quantize_u8(x, *q, y, isa, threads).map_err(ke)?;
            Ok(())
        }
        (Kernel::Dequantize(q), Io::U8ToF32(x, y)) => {
            elementwise::dequantize_u8(x, *q, y, isa, threads).map_err(ke)?;
            Ok(())
        }
        (Kernel::Depthwise(dw), Io::U8ToU8(x, None, y)) => {
            dw.run_with_scratch(x, batch, s.h, s.w, y, isa, threads, cx.dw_scratch)
                .map_err(ke)?;
            Ok(())
        }
        (Kernel::Stem(st), Io::U8ToU8(x, None, y)) => {
            st.run_with_scratch(x, batch, s.h, s.w, y, threads, cx.dw_scratch)
                .map_err(ke)?;
            Ok(())
        }
        (
            Kernel::ConvGemm {
                gemms,
                direct,
                geometry,
                zero_point,
            },
            Io::U8ToU8(x, None, y),
        ) => {
            let o = cx.node.shape;
            let m = batch * o.h * o.w;
            let (ci, co) = (s.c, o.c);
            let (cg, og) = (ci / gemms.len(), co / gemms.len());
            for (grp, gemm) in gemms.iter().enumerate() {
                let dst = &mut y[grp * og..];
                if *direct {
                    gemm.gemm_u8(&x[grp * cg..], m, ci, dst, co, threads)
                        .map_err(kernel_err(name))?;
                } else {
                    let k = gemm.k();
                    let cols = &mut cx.cols[..m * k];
                    im2col(
                        x,
                        s,
                        grp * cg,
                        cg,
                        geometry,
                        o,
                        *zero_point,
                        k,
                        cols,
                        threads,
                    );
                    gemm.gemm_u8(cols, m, k, dst, co, threads)
                        .map_err(kernel_err(name))?;
                }
            }
            Ok(())
        }
        (Kernel::Linear(g), Io::U8ToU8(x, None, y)) => {
            g.gemm_u8(x, batch, s.c, y, g.n(), threads).map_err(ke)?;
            Ok(())
        }
        (Kernel::Add(add), Io::U8ToU8(a, Some(b), y)) => {
            add.run(a, b, y, isa, threads).map_err(ke)?;
            Ok(())
        }
        (Kernel::Pool { input, output }, Io::U8ToU8(x, None, y)) => {
            elementwise::global_avg_pool_with_scratch(
                x,
                batch,
                s.h,
                s.w,
                s.c,
                *input,
                *output,
                y,
                isa,
                threads,
                cx.pool_sums,
            )
            .map_err(ke)?;
            Ok(())
        }
        (Kernel::FloatMatrix, Io::F32ToF32(x, None, y)) => {
            let (n, w, b) = match &cx.node.op {
                Op::FloatLinear {
                    out_features,
                    weight,
                    bias,
                    ..
                } => (*out_features, weight, bias),
                Op::FloatConv1x1 {
                    out_channels,
                    weight,
                    bias,
                    ..
                } => (*out_channels, weight, bias),
                _ => return Err(op_err(name, "internal: float matrix on another op")),
            };
            float_ops::matrix(x, s.c, w, n, b.as_deref(), y, threads);
            Ok(())
        }
        (Kernel::FloatRelu, Io::F32ToF32(x, None, y)) => {
            float_ops::relu(x, y);
            Ok(())
        }
        (Kernel::FloatHardswish, Io::F32ToF32(x, None, y)) => {
            float_ops::hardswish(x, y);
            Ok(())
        }
        (Kernel::FloatAdd, Io::F32ToF32(a, Some(b), y)) => {
            float_ops::add(a, b, y);
            Ok(())
        }
        _ => Err(op_err(
            name,
            "internal: buffers of the wrong type for this op",
        )),
    }
}

/// im2col for NHWC u8, one group: one row of `ld ≥ taps · cg` bytes per output pixel,
/// `[ky][kx][c]` within the row, padded positions and the bytes past `taps · cg` filled with
/// the input zero point (real 0). Written here rather than
/// through `qat_kernels::conv::Conv2d::run`, which allocates its im2col matrix on every call;
/// the runtime keeps it in the arena.
#[allow(clippy::too_many_arguments)]
fn im2col(
    x: &[u8],
    s: Shape,
    c0: usize,
    cg: usize,
    g: &Conv2dGeometry,
    o: Shape,
    zero_point: u8,
    ld: usize,
    cols: &mut [u8],
    threads: usize,
) {
    let k = g.taps() * cg;
    // With one group and undilated columns, a kernel row's taps are adjacent pixels: one
    // contiguous `kernel_w · C` run of the input when it lies inside the row.
    let runs = cg == s.c && g.dilation_w == 1;
    let run = g.kernel_w * cg;
    let staged_row = (s.w + 2 * g.pad_w) * s.c + STAGE_SLACK;
    if runs && run <= STAGE_SLACK && g.kernel_h * staged_row <= STAGE_BYTES {
        // One staging buffer per worker: its padding bytes are written once.
        let fill = |stage: &mut [u8; STAGE_BYTES], r: usize, dst: &mut [u8]| {
            stage_rows(x, s, g, r / o.h, r % o.h, staged_row, zero_point, stage);
            copy_runs(stage, staged_row, g, s.c, run, (k, ld), zero_point, dst);
        };
        let row_bytes = o.w * ld;
        if threads <= 1 {
            let mut stage = [zero_point; STAGE_BYTES];
            for (r, dst) in cols.chunks_mut(row_bytes).enumerate() {
                fill(&mut stage, r, dst);
            }
        } else {
            cols.par_chunks_mut(row_bytes).enumerate().for_each_init(
                || [zero_point; STAGE_BYTES],
                |stage, (r, dst)| fill(stage, r, dst),
            );
        }
        return;
    }
    let fill = |r: usize, dst: &mut [u8]| {
        let (b, oy) = (r / o.h, r % o.h);
        for ox in 0..o.w {
            let (pix, tail) = dst[ox * ld..(ox + 1) * ld].split_at_mut(k);
            tail.fill(zero_point);
            let ix0 = (ox * g.stride_w) as isize - g.pad_w as isize;
            let inside_x = ix0 >= 0 && ix0 as usize + g.kernel_w <= s.w;
            for ky in 0..g.kernel_h {
                let iy = (oy * g.stride_h + ky * g.dilation_h) as isize - g.pad_h as isize;
                if runs && inside_x && iy >= 0 && (iy as usize) < s.h {
                    let off = ((b * s.h + iy as usize) * s.w + ix0 as usize) * s.c;
                    copy_small(&mut pix[ky * run..(ky + 1) * run], &x[off..off + run]);
                    continue;
                }
                for kx in 0..g.kernel_w {
                    let ix = (ox * g.stride_w + kx * g.dilation_w) as isize - g.pad_w as isize;
                    let t = ky * g.kernel_w + kx;
                    let d = &mut pix[t * cg..(t + 1) * cg];
                    if iy >= 0 && (iy as usize) < s.h && ix >= 0 && (ix as usize) < s.w {
                        let off = ((b * s.h + iy as usize) * s.w + ix as usize) * s.c + c0;
                        copy_small(d, &x[off..off + cg]);
                    } else {
                        d.fill(zero_point);
                    }
                }
            }
        }
    };
    let row_bytes = o.w * ld;
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

/// Bytes of the stack buffer that holds one output row's padded input rows (small-channel
/// convolutions such as the stems, with 1 to 3 input channels).
const STAGE_BYTES: usize = 4096;
/// Zero-point bytes after each staged row, and the longest run copied through the staging:
/// every run is copied as one 16-byte move.
const STAGE_SLACK: usize = 16;

/// Copy the `kernel_h` input rows under output row `oy` of image `b` into `stage` (one per
/// `staged` bytes), each after `pad_w` pixels of left padding. Rows outside the image are
/// filled with the zero point; the padding bytes around the pixels are never written here,
/// so they keep the zero point `stage` was created with.
#[allow(clippy::too_many_arguments)]
fn stage_rows(
    x: &[u8],
    s: Shape,
    g: &Conv2dGeometry,
    b: usize,
    oy: usize,
    staged: usize,
    zero_point: u8,
    stage: &mut [u8],
) {
    let row = s.w * s.c;
    for ky in 0..g.kernel_h {
        let iy = (oy * g.stride_h + ky * g.dilation_h) as isize - g.pad_h as isize;
        let dst = ky * staged + g.pad_w * s.c;
        if iy >= 0 && (iy as usize) < s.h {
            let src = ((b * s.h + iy as usize) * s.w) * s.c;
            stage[dst..dst + row].copy_from_slice(&x[src..src + row]);
        } else {
            stage[dst..dst + row].fill(zero_point);
        }
    }
}

/// Fill one im2col row (pixels of `ld` bytes, `k` of them data) from staged input rows:
/// pixel `ox`, kernel row `ky` is the `run` bytes at `ox · stride_w · C` of staged row `ky`.
/// Each run is written as one 16-byte move whose spill lands in bytes written after it
/// (pixels in order, kernel rows in order, then the pixel's zero-point tail); only the last
/// runs, whose spill would leave `dst`, are copied exactly.
#[allow(clippy::too_many_arguments)]
fn copy_runs(
    stage: &[u8],
    staged: usize,
    g: &Conv2dGeometry,
    c: usize,
    run: usize,
    (k, ld): (usize, usize),
    zero_point: u8,
    dst: &mut [u8],
) {
    let ow = dst.len() / ld;
    let zeros = [zero_point; STAGE_SLACK];
    // Fixed-size moves compile to one load / store each (no memcpy / memset calls).
    let put = |dst: &mut [u8], to: usize, src: &[u8; STAGE_SLACK], len: usize| {
        if to + STAGE_SLACK <= dst.len() {
            dst[to..to + STAGE_SLACK].copy_from_slice(src);
        } else {
            dst[to..to + len].copy_from_slice(&src[..len]);
        }
    };
    for ox in 0..ow {
        for ky in 0..g.kernel_h {
            let from = ky * staged + ox * g.stride_w * c;
            let mut v = [0u8; STAGE_SLACK];
            v.copy_from_slice(&stage[from..from + STAGE_SLACK]);
            put(dst, ox * ld + ky * run, &v, run);
        }
        put(dst, ox * ld + k, &zeros, ld - k);
    }
}

/// `dst.copy_from_slice(src)` without a `memcpy` call for the few-byte runs of small-channel
/// convolutions (the stem's 1–3 channels), where the call dominates the copy.
#[inline]
fn copy_small(dst: &mut [u8], src: &[u8]) {
    debug_assert_eq!(dst.len(), src.len());
    if dst.len() <= 16 {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = v;
        }
    } else {
        dst.copy_from_slice(src);
    }
}
