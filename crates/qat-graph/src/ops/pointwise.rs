//! 1×1 convolution (groups 1) as GEMMs, forward and backward.
//!
//! For NCHW data a 1×1 conv is, per image, `Y[O, HW] = W[O, C] · X[C, HW]`; the input gradient
//! is `Wᵀ · dY` and the weight gradient `Σₙ dYₙ · Xₙᵀ`. All three run on the `gemm` crate (the
//! kernel behind candle's matmul, AVX-512 through the workspace's `x86-v4` feature) with strides
//! instead of transposed copies. candle's `conv2d` backward for this case is a direct loop plus
//! a conv whose kernel is the whole output plane (MEASURED.md: 80 ms for 144→24 @ 56×56 ×8).
//! Stride > 1 first subsamples the input (a gather with a scatter backward).

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use gemm::{gemm, Parallelism};

use super::bias::bias_add_nchw;
use super::common::{dims4, f32_contiguous, slice_f32, Pooled};
use super::slice_op::{Op2, SliceOp2};

#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    c: usize,
    o: usize,
    h: usize,
    w: usize,
}

impl Dims {
    fn p(&self) -> usize {
        self.h * self.w
    }
    fn gemm(&self) -> GemmDims {
        GemmDims {
            n: self.n,
            c: self.c,
            o: self.o,
            p: self.p(),
        }
    }
}

/// The GEMM view of a 1×1 convolution: `N` images of `C` input and `O` output planes of `P`
/// pixels each.
#[derive(Clone, Copy, Debug)]
pub(super) struct GemmDims {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) o: usize,
    pub(super) p: usize,
}

/// Planes of at most this many pixels (7×7, 4×4: most of MobileNetV2's 1×1 MACs on small
/// images) run as one GEMM over the whole batch: per image, the GEMM's vectorized dimension
/// (the plane) is one or a few vector registers with a ragged tail, every call repacks the
/// weight, and the weight gradient's depth is a single plane (a read-modify-write of all of
/// `dW` per image). Transposing the planes to channel-major `[C, N·P]` costs one copy per
/// operand, `1/O` or `1/C` of the GEMM's work.
const BATCH_PLANE_MAX: usize = 64;

impl GemmDims {
    /// Whether the GEMMs run once over the batch, on channel-major `[K, N·P]` operands.
    pub(super) fn batched(&self) -> bool {
        self.p <= BATCH_PLANE_MAX && self.n > 1
    }
}

/// NCHW `[N, K, P]` → channel-major `[K, N·P]` (a pooled buffer).
pub(super) fn to_channel_major(src: &[f32], n: usize, k: usize, p: usize) -> Pooled {
    let mut t = Pooled::new(n * k * p);
    for (i, plane) in src.chunks_exact(p).enumerate() {
        let (img, ch) = (i / k, i % k);
        let at = ch * n * p + img * p;
        t.0[at..at + p].copy_from_slice(plane);
    }
    t
}

/// Channel-major `[K, N·P]` → NCHW `[N, K, P]` into `dst` (fully written).
fn from_channel_major(dst: &mut [f32], src: &[f32], n: usize, k: usize, p: usize) {
    for (i, plane) in dst.chunks_exact_mut(p).enumerate() {
        let (img, ch) = (i / k, i % k);
        let at = ch * n * p + img * p;
        plane.copy_from_slice(&src[at..at + p]);
    }
}

/// [`forward_gemm`] on channel-major operands: `zt [O, N·P] = W · xt [C, N·P]` (fully
/// written; `C > 0`).
pub(super) fn forward_gemm_cm(zt: &mut [f32], xt: &[f32], w: &[f32], d: GemmDims) -> Result<()> {
    let GemmDims { n, c, o, p } = d;
    matmul(zt, (o, n * p, c), w, (c, 1), xt, (n * p, 1), false)
}

/// [`backward_gemms`] on a channel-major output gradient `dzt [O, N·P]` and input
/// `xt [C, N·P]` (for `dw`); `dx` is NCHW (fully written), and so is `dw`. `N·P` and `C·O` are
/// not 0.
pub(super) fn backward_gemms_cm(
    xt: Option<&[f32]>,
    w: &[f32],
    dzt: &[f32],
    dx: Option<&mut [f32]>,
    dw: Option<&mut [f32]>,
    d: GemmDims,
) -> Result<()> {
    let GemmDims { n, c, o, p } = d;
    if let Some(dx) = dx {
        let mut dxt = Pooled::new(c * n * p);
        // Wᵀ[c, o] = w[o·C + c]: row stride 1, column stride C.
        matmul(&mut dxt.0, (c, n * p, o), w, (1, c), dzt, (n * p, 1), false)?;
        from_channel_major(dx, &dxt.0, n, c, p);
    }
    if let Some(dw) = dw {
        let Some(xt) = xt else {
            bail!("conv1x1_backward: the weight gradient needs the input")
        };
        // Xᵀ[np, c] = xt[c·NP + np]: row stride 1, column stride N·P.
        matmul(dw, (o, c, n * p), dzt, (n * p, 1), xt, (1, n * p), false)?;
    }
    Ok(())
}

/// `z[n] = W · x[n]` for every image: `x` `[N, C, P]`, `w` `[O, C]`, `z` `[N, O, P]` (fully
/// written).
pub(super) fn forward_gemm(z: &mut [f32], x: &[f32], w: &[f32], d: GemmDims) -> Result<()> {
    let GemmDims { n, c, o, p } = d;
    if z.len() != n * o * p || x.len() != n * c * p || w.len() != o * c {
        bail!("conv1x1: operand sizes do not match ({d:?})")
    }
    if c == 0 {
        // No input channel: the GEMMs below would have nothing to write.
        z.fill(0.0);
        return Ok(());
    }
    if p == 0 {
        return Ok(());
    }
    if d.batched() {
        let xt = to_channel_major(x, n, c, p);
        let mut zt = Pooled::new(o * n * p);
        forward_gemm_cm(&mut zt.0, &xt.0, w, d)?;
        from_channel_major(z, &zt.0, n, o, p);
        return Ok(());
    }
    for (zn, xn) in z.chunks_exact_mut(o * p).zip(x.chunks_exact(c * p)) {
        matmul(zn, (o, p, c), w, (c, 1), xn, (p, 1), false)?;
    }
    Ok(())
}

/// The gradients of [`forward_gemm`] from `dz` `[N, O, P]`: with `dx`, `dx[n] = Wᵀ · dz[n]`
/// (fully written; needs `w`); with `dw`, `dW = Σₙ dz[n] · x[n]ᵀ` (fully written; needs `x`).
pub(super) fn backward_gemms(
    x: Option<&[f32]>,
    w: &[f32],
    dz: &[f32],
    dx: Option<&mut [f32]>,
    dw: Option<&mut [f32]>,
    d: GemmDims,
) -> Result<()> {
    let GemmDims { n, c, o, p } = d;
    let bad = dz.len() != n * o * p
        || dx
            .as_ref()
            .is_some_and(|dx| dx.len() != n * c * p || w.len() != o * c)
        || dw
            .as_ref()
            .is_some_and(|dw| dw.len() != o * c || x.is_none_or(|x| x.len() != n * c * p));
    if bad {
        bail!("conv1x1_backward: operand sizes do not match ({d:?})")
    }
    if n * p == 0 || c * o == 0 {
        // Empty sums: zero gradients.
        if let Some(dx) = dx {
            dx.fill(0.0);
        }
        if let Some(dw) = dw {
            dw.fill(0.0);
        }
        return Ok(());
    }
    if d.batched() {
        let dzt = to_channel_major(dz, n, o, p);
        let xt = match (&dw, x) {
            (Some(_), Some(x)) => Some(to_channel_major(x, n, c, p)),
            _ => None,
        };
        return backward_gemms_cm(xt.as_ref().map(|t| &t.0[..]), w, &dzt.0, dx, dw, d);
    }
    if let Some(dx) = dx {
        for (dxn, dzn) in dx.chunks_exact_mut(c * p).zip(dz.chunks_exact(o * p)) {
            // Wᵀ[c, o] = w[o·C + c]: row stride 1, column stride C.
            matmul(dxn, (c, p, o), w, (1, c), dzn, (p, 1), false)?;
        }
    }
    if let (Some(dw), Some(x)) = (dw, x) {
        for (i, (xn, dzn)) in x
            .chunks_exact(c * p)
            .zip(dz.chunks_exact(o * p))
            .enumerate()
        {
            // Xₙᵀ[hw, c] = x[c·P + hw]: row stride 1, column stride P.
            matmul(dw, (o, c, p), dzn, (p, 1), xn, (1, p), i > 0)?;
        }
    }
    Ok(())
}

fn parallelism() -> Parallelism {
    if rayon::current_num_threads() > 1 {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    }
}

/// Row-major `dst[m, n] (= or +=) lhs · rhs` with explicit (row, column) strides for the operands.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    accumulate: bool,
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    // Every element the strides can reach must lie inside the slices (checked, not assumed).
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| {
        (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs
    };
    if dst.len() != m * n
        || (k > 0
            && (last(m, k, lhs_rs, lhs_cs) >= lhs.len() || last(k, n, rhs_rs, rhs_cs) >= rhs.len()))
    {
        bail!("conv1x1: internal matmul operands do not match ({m}x{k} by {k}x{n})")
    }
    // SAFETY: dst is m·n contiguous row-major; the check above bounds every lhs / rhs element the
    // (row, column) strides address; dst does not alias lhs or rhs (distinct borrows).
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(),
        )
    }
    Ok(())
}

/// `(x [N,C,H,W], w [O,C,1,1]) -> y [N,O,H,W]`.
struct Conv1x1(Dims);

impl SliceOp2 for Conv1x1 {
    const NAME: &'static str = "conv1x1";
    const OPERANDS: [&'static str; 2] = ["input", "weight"];

    fn run(&self, x: &[f32], w: &[f32], _: (&Shape, &Shape)) -> Result<(Vec<f32>, Shape)> {
        let d = self.0;
        let mut y = vec![0f32; d.n * d.o * d.p()];
        forward_gemm(&mut y, x, w, d.gemm())?;
        Ok((y, Shape::from((d.n, d.o, d.h, d.w))))
    }

    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 2]> {
        let grad = grad.contiguous()?;
        let dx = grad.apply_op2_no_bwd(w, &Op2(Conv1x1InputGrad(self.0)))?;
        let dw = x.apply_op2_no_bwd(&grad, &Op2(Conv1x1WeightGrad(self.0)))?;
        Ok([Some(dx), Some(dw)])
    }
}

/// `(dy [N,O,H,W], w [O,C,1,1]) -> dx [N,C,H,W] = Wᵀ · dY` per image.
struct Conv1x1InputGrad(Dims);

impl SliceOp2 for Conv1x1InputGrad {
    const NAME: &'static str = "conv1x1_input_grad";
    const OPERANDS: [&'static str; 2] = ["output gradient", "weight"];

    fn run(&self, dy: &[f32], w: &[f32], _: (&Shape, &Shape)) -> Result<(Vec<f32>, Shape)> {
        let d = self.0;
        let mut dx = vec![0f32; d.n * d.c * d.p()];
        backward_gemms(None, w, dy, Some(&mut dx), None, d.gemm())?;
        Ok((dx, Shape::from((d.n, d.c, d.h, d.w))))
    }
}

/// `(x [N,C,H,W], dy [N,O,H,W]) -> dw [O,C,1,1] = Σₙ dYₙ · Xₙᵀ`.
struct Conv1x1WeightGrad(Dims);

impl SliceOp2 for Conv1x1WeightGrad {
    const NAME: &'static str = "conv1x1_weight_grad";
    const OPERANDS: [&'static str; 2] = ["input", "output gradient"];

    fn run(&self, x: &[f32], dy: &[f32], _: (&Shape, &Shape)) -> Result<(Vec<f32>, Shape)> {
        let d = self.0;
        let mut dw = vec![0f32; d.o * d.c];
        backward_gemms(Some(x), &[], dy, None, Some(&mut dw), d.gemm())?;
        Ok((dw, Shape::from((d.o, d.c, 1, 1))))
    }
}

/// `[N,C,H,W] -> [N,C,⌈H/s⌉,⌈W/s⌉]` keeping every `s`-th row and column (a 1×1 conv's stride).
#[derive(Clone, Copy)]
struct Subsample {
    s: usize,
    h: usize,
    w: usize,
}

impl Subsample {
    fn out_hw(&self) -> (usize, usize) {
        (self.h.div_ceil(self.s), self.w.div_ceil(self.s))
    }
}

impl CustomOp1 for Subsample {
    fn name(&self) -> &'static str {
        "subsample2d"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(st, l, self.name(), "input")?;
        let (ho, wo) = self.out_hw();
        let planes = l.dims()[0] * l.dims()[1];
        let mut y = Vec::with_capacity(planes * ho * wo);
        if self.h * self.w > 0 {
            for plane in x.chunks_exact(self.h * self.w) {
                for row in plane.chunks_exact(self.w).step_by(self.s) {
                    y.extend(row.iter().step_by(self.s));
                }
            }
        }
        let shape = Shape::from((l.dims()[0], l.dims()[1], ho, wo));
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad.contiguous()?.apply_op1_no_bwd(&SubsampleGrad(*self))?,
        ))
    }
}

/// Scatter of a [`Subsample`] gradient back to the full size, zeros elsewhere.
struct SubsampleGrad(Subsample);

impl CustomOp1 for SubsampleGrad {
    fn name(&self) -> &'static str {
        "subsample2d_backward"
    }

    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = slice_f32(st, l, self.name(), "gradient")?;
        let Subsample { s, h, w } = self.0;
        let (ho, wo) = self.0.out_hw();
        let planes = l.dims()[0] * l.dims()[1];
        let mut dx = vec![0f32; planes * h * w];
        if ho * wo > 0 {
            for (dp, gp) in dx.chunks_exact_mut(h * w).zip(g.chunks_exact(ho * wo)) {
                for (drow, grow) in dp.chunks_exact_mut(w).step_by(s).zip(gp.chunks_exact(wo)) {
                    for (d, &v) in drow.iter_mut().step_by(s).zip(grow) {
                        *d = v;
                    }
                }
            }
        }
        Ok((
            CpuStorage::F32(dx),
            Shape::from((l.dims()[0], l.dims()[1], h, w)),
        ))
    }
}

/// 1×1 convolution, groups 1, no padding: `x` NCHW `[N, C, H, W]` f32, `w` `[O, C, 1, 1]`
/// (PyTorch's layout), `bias` `[O]`; returns `[N, O, ⌈H/stride⌉, ⌈W/stride⌉]`. Forward and both
/// gradients are GEMMs. Errors on wrong ranks, a channel mismatch, a kernel that is not 1×1, a
/// zero stride, or non-f32 / non-CPU tensors.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// let x = Tensor::ones((2, 8, 5, 5), DType::F32, &Device::Cpu)?;
/// let w = Tensor::ones((4, 8, 1, 1), DType::F32, &Device::Cpu)?;
/// let y = qat_graph::ops::conv1x1(&x, &w, None, 2)?;
/// assert_eq!(y.dims(), &[2, 4, 3, 3]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn conv1x1(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, stride: usize) -> Result<Tensor> {
    const OP: &str = "conv1x1";
    let (n, c, h, wd) = dims4(x, OP, "input")?;
    let (o, wc, kh, kw) = dims4(w, OP, "weight")?;
    if (kh, kw) != (1, 1) {
        bail!("{OP}: weight must be [O, C, 1, 1], got {:?}", w.dims())
    }
    if wc != c {
        bail!("{OP}: weight has {wc} input channels, input has {c}")
    }
    if stride == 0 {
        bail!("{OP}: stride must be at least 1")
    }
    let mut x = f32_contiguous(x, OP, "input")?;
    let w = f32_contiguous(w, OP, "weight")?;
    let (mut h, mut wd) = (h, wd);
    if stride > 1 {
        let sub = Subsample {
            s: stride,
            h,
            w: wd,
        };
        (h, wd) = sub.out_hw();
        x = x.apply_op1(sub)?;
    }
    let y = x.apply_op2(&w, Op2(Conv1x1(Dims { n, c, o, h, w: wd })))?;
    match bias {
        Some(b) => bias_add_nchw(&y, b),
        None => Ok(y),
    }
}

/// The same 1×1 convolution through candle's `conv2d` (the reference for tests and benches).
/// For stride > 1 the input is first cropped to the rows / columns the conv reads: candle 0.11's
/// conv2d backward mis-sizes the input gradient when `H − 1` is not a multiple of the stride.
pub fn conv1x1_slow(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
) -> Result<Tensor> {
    let (_, _, h, wd) = dims4(x, "conv1x1_slow", "input")?;
    if stride == 0 || h == 0 || wd == 0 {
        bail!("conv1x1_slow: stride must be at least 1 and the input non-empty")
    }
    let x = x.narrow(2, 0, (h - 1) / stride * stride + 1)?.narrow(
        3,
        0,
        (wd - 1) / stride * stride + 1,
    )?;
    let y = x.conv2d(w, 0, stride, 1, 1)?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?),
        None => Ok(y),
    }
}
