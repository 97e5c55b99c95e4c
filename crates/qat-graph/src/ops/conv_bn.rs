//! 1×1 or depthwise convolution + train-mode BatchNorm2d (+ ReLU / ReLU6) as one autograd op.
//!
//! As two ops, the convolution's output `z` is an autograd node: candle's backward gives its
//! gradient a zero-filled tensor and adds the BatchNorm's input gradient into it (an
//! allocation, a fill and a three-stream pass over the largest tensors of MobileNetV2), before
//! the convolution's backward reads it. Here `z` stays inside the op: the forward keeps it for
//! the backward, and the backward runs the BatchNorm backward into a buffer that the
//! convolution's backward (two GEMMs `dx = Wᵀ·dz`, `dW = Σₙ dzₙ·xₙᵀ`, or the depthwise kernels)
//! reads directly. The arithmetic is the same as [`conv1x1`](super::conv1x1) /
//! [`depthwise_conv2d_dilated`](super::depthwise_conv2d_dilated) then
//! [`batch_norm_act_train`](super::batch_norm_act_train), so values and gradients equal theirs
//! bit for bit.

use std::sync::{Arc, Mutex};

use candle_core::{bail, Result, Shape, Tensor};

use super::batch_norm::{
    backward_core_in, check_dims, forward_core_in, Act, BatchNormTrainOutput, Dims, PlaneOrder,
    Stats,
};
use super::common::{dims4, f32_contiguous, lock_state, recycle, scratch};
use super::depthwise::Geom as DwGeom;
use super::pointwise::{
    backward_gemms, backward_gemms_cm, forward_gemm, forward_gemm_cm, to_channel_major, GemmDims,
};
use super::slice_op::{flat, packed_grads, Op3, SliceOp3};

/// What the forward keeps for the backward.
#[derive(Default)]
struct Saved {
    /// The convolution's output (the BatchNorm's input), its planes in `order`.
    z: Vec<f32>,
    order: PlaneOrder,
    /// A batched 1×1 convolution's channel-major input (else empty), for the weight gradient.
    xt: Vec<f32>,
    stats: Stats,
    gamma: Vec<f32>,
}

impl Drop for Saved {
    fn drop(&mut self) {
        recycle(std::mem::take(&mut self.z));
        recycle(std::mem::take(&mut self.xt));
    }
}

/// The convolution inside the op.
#[derive(Clone, Debug)]
pub(super) enum Conv {
    /// Input `[N, C, P]` (P = H·W), weight `[O, C, 1, 1]`, output `[N, O, P]`.
    Pointwise {
        n: usize,
        c: usize,
        o: usize,
        p: usize,
    },
    Depthwise(DwGeom),
}

impl Conv {
    pub(super) fn x_len(&self) -> usize {
        match self {
            Conv::Pointwise { n, c, p, .. } => n * c * p,
            Conv::Depthwise(g) => g.in_len(),
        }
    }
    pub(super) fn w_len(&self) -> usize {
        match self {
            Conv::Pointwise { c, o, .. } => o * c,
            Conv::Depthwise(g) => g.w_len(),
        }
    }
    /// The BatchNorm's view of the output: `N`, channels, plane size.
    pub(super) fn bn(&self) -> Dims {
        match self {
            &Conv::Pointwise { n, o, p, .. } => Dims { n, c: o, plane: p },
            Conv::Depthwise(g) => {
                let (n, c, ho, wo) = g.out_dims();
                Dims {
                    n,
                    c,
                    plane: ho * wo,
                }
            }
        }
    }

    pub(super) fn forward(&self, x: &[f32], w: &[f32]) -> Result<Vec<f32>> {
        match self {
            &Conv::Pointwise { n, c, o, p } => {
                // `forward_gemm` writes every element of `z`.
                let mut z = scratch(n * o * p);
                forward_gemm(&mut z, x, w, GemmDims { n, c, o, p })?;
                Ok(z)
            }
            Conv::Depthwise(g) => {
                // `forward_into` writes every output element.
                let mut z = scratch(g.out_len());
                g.forward_into(x, w, &mut z)?;
                Ok(z)
            }
        }
    }

    /// The convolution's output for the fused BatchNorm, with its plane order, and the input
    /// the backward needs besides `x`: a 1×1 convolution batched over the images
    /// ([`GemmDims::batched`]) leaves its output channel-major and keeps its channel-major
    /// input, so neither is transposed again (the BatchNorm reads and writes planes in either
    /// order with the same arithmetic).
    pub(super) fn forward_ordered(
        &self,
        x: &[f32],
        w: &[f32],
    ) -> Result<(Vec<f32>, PlaneOrder, Vec<f32>)> {
        if let &Conv::Pointwise { n, c, o, p } = self {
            let d = GemmDims { n, c, o, p };
            if d.batched() && c * o * p > 0 && x.len() == n * c * p && w.len() == o * c {
                let xt = to_channel_major(x, n, c, p).into_inner();
                // `forward_gemm_cm` writes every element of `zt`.
                let mut zt = scratch(o * n * p);
                forward_gemm_cm(&mut zt, &xt, w, d)?;
                return Ok((zt, PlaneOrder::ChannelMajor, xt));
            }
        }
        Ok((self.forward(x, w)?, PlaneOrder::ImageMajor, Vec::new()))
    }

    /// [`Conv::backward`] from an output gradient `dz` in the plane order and with the saved
    /// input that [`Conv::forward_ordered`] gave.
    pub(super) fn backward_ordered(
        &self,
        (x, xt): (&[f32], &[f32]),
        w: &[f32],
        (dz, order): (&[f32], PlaneOrder),
        dx: &mut [f32],
        dw: &mut [f32],
    ) -> Result<()> {
        match (self, order) {
            (&Conv::Pointwise { n, c, o, p }, PlaneOrder::ChannelMajor) => {
                let d = GemmDims { n, c, o, p };
                if xt.len() != n * c * p || dz.len() != n * o * p || dx.len() != n * c * p {
                    bail!("conv1x1_backward: saved input or gradient do not match")
                }
                backward_gemms_cm(Some(xt), w, dz, Some(dx), Some(dw), d)
            }
            _ => self.backward(x, w, dz, dx, dw),
        }
    }

    /// Writes `dx` and `dw` (zeroed by the caller) from the output gradient `dz`.
    pub(super) fn backward(
        &self,
        x: &[f32],
        w: &[f32],
        dz: &[f32],
        dx: &mut [f32],
        dw: &mut [f32],
    ) -> Result<()> {
        match self {
            &Conv::Pointwise { n, c, o, p } => {
                let d = GemmDims { n, c, o, p };
                backward_gemms(Some(x), w, dz, Some(dx), Some(dw), d)
            }
            Conv::Depthwise(g) => g.backward_into(x, w, dz, dx, dw),
        }
    }
}

/// `(x, w, [gamma | beta]) -> y`, keeping `z`, the statistics and `gamma` in `saved`.
struct ConvBnForward {
    conv: Conv,
    /// Output dims `[N, O, Ho, Wo]`.
    out: (usize, usize, usize, usize),
    eps: f64,
    act: Option<Act>,
    saved: Arc<Mutex<Saved>>,
}

impl SliceOp3 for ConvBnForward {
    const NAME: &'static str = "conv1x1_bn_train";
    const OPERANDS: [&'static str; 3] = ["input", "weight", "BatchNorm weight and bias"];

    fn run(&self, x: &[f32], w: &[f32], gb: &[f32], _: &Shape) -> Result<(Vec<f32>, Shape)> {
        let d = self.conv.bn();
        if x.len() != self.conv.x_len() || w.len() != self.conv.w_len() || gb.len() != 2 * d.c {
            bail!("{}: operand sizes do not match", Self::NAME)
        }
        let (z, order, xt) = self.conv.forward_ordered(x, w)?;
        let (gamma, beta) = gb.split_at(d.c);
        let (y, stats) = forward_core_in(&z, order, gamma, beta, d, self.eps, self.act);
        *lock_state(&self.saved, Self::NAME)? = Saved {
            z,
            order,
            xt,
            stats,
            gamma: gamma.to_vec(),
        };
        Ok((y, Shape::from(self.out)))
    }

    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        _gb: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let backward = ConvBnBackward {
            conv: self.conv.clone(),
            act: self.act,
            saved: self.saved.clone(),
        };
        conv_grads((x, w, grad), backward, 2 * self.conv.bn().c)
    }
}

/// The gradients of a fused conv + BatchNorm op's `(x, w, params)` from its `backward` op,
/// whose flat output is `[dx | dw | dparams]` with `params` floats in the last part.
pub(super) fn conv_grads<T: SliceOp3>(
    (x, w, grad): (&Tensor, &Tensor, &Tensor),
    backward: T,
    params: usize,
) -> Result<[Option<Tensor>; 3]> {
    let shapes = [x.shape().clone(), w.shape().clone(), params.into()];
    let [dx, dw, dp] = packed_grads((x, w, grad), backward, shapes)?;
    Ok([Some(dx), Some(dw), Some(dp)])
}

/// `(x, w, dy) -> [dx | dw | dgamma (O) | dbeta (O)]`, flat.
struct ConvBnBackward {
    conv: Conv,
    act: Option<Act>,
    saved: Arc<Mutex<Saved>>,
}

impl SliceOp3 for ConvBnBackward {
    const NAME: &'static str = "conv1x1_bn_train_backward";
    const OPERANDS: [&'static str; 3] = ["input", "weight", "output gradient"];

    fn run(&self, x: &[f32], w: &[f32], dy: &[f32], _: &Shape) -> Result<(Vec<f32>, Shape)> {
        let d = self.conv.bn();
        let (nx, nw, nz) = (self.conv.x_len(), self.conv.w_len(), d.n * d.c * d.plane);
        let saved = lock_state(&self.saved, Self::NAME)?;
        if x.len() != nx || w.len() != nw || saved.z.len() != nz || dy.len() != nz {
            bail!(
                "{}: saved state or gradient do not match the input",
                Self::NAME
            )
        }
        // `backward_core` writes every element of `dz`.
        let mut dz = scratch(nz);
        let mut out = vec![0f32; nx + nw + 2 * d.c];
        let (dx, rest) = out.split_at_mut(nx);
        let (dw, dgb) = rest.split_at_mut(nw);
        let (dgamma, dbeta) = dgb.split_at_mut(d.c);
        backward_core_in(
            &saved.z,
            saved.order,
            dy,
            &saved.gamma,
            &saved.stats,
            d,
            self.act,
            &mut dz,
            dgamma,
            dbeta,
        );
        let (xs, dzs) = ((x, &saved.xt[..]), (&dz[..], saved.order));
        self.conv.backward_ordered(xs, w, dzs, dx, dw)?;
        recycle(dz);
        Ok(flat(out))
    }
}

/// The 1×1 convolution of `x` by `w`, checked.
pub(super) fn pointwise(x: &Tensor, w: &Tensor, op: &str) -> Result<Conv> {
    let (n, c, h, wd) = dims4(x, op, "input")?;
    let (o, wc, kh, kw) = dims4(w, op, "weight")?;
    if (kh, kw) != (1, 1) {
        bail!("{op}: weight must be [O, C, 1, 1], got {:?}", w.dims())
    }
    if wc != c {
        bail!("{op}: weight has {wc} input channels, input has {c}")
    }
    Ok(Conv::Pointwise { n, c, o, p: h * wd })
}

#[allow(clippy::too_many_arguments)]
fn conv_bn_train(
    conv: Conv,
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    act: Option<Act>,
    op: &str,
) -> Result<BatchNormTrainOutput> {
    if eps.is_nan() || eps < 0.0 {
        bail!("{op}: eps must be >= 0, got {eps}")
    }
    let bn = conv.bn();
    let out = match &conv {
        Conv::Pointwise { .. } => {
            let (_, _, h, wd) = dims4(x, op, "input")?;
            (bn.n, bn.c, h, wd)
        }
        Conv::Depthwise(g) => g.out_dims(),
    };
    // The BatchNorm checks (shapes of gamma / beta, more than one value per channel) on the
    // convolution's output shape.
    let d = check_dims(out, gamma, beta, op)?;
    let x = f32_contiguous(x, op, "input")?;
    let w = f32_contiguous(w, op, "weight")?;
    let gb = Tensor::cat(
        &[
            &f32_contiguous(gamma, op, "BatchNorm weight")?,
            &f32_contiguous(beta, op, "BatchNorm bias")?,
        ],
        0,
    )?;
    let saved = Arc::new(Mutex::new(Saved::default()));
    let y = x.apply_op3(
        &w,
        &gb,
        Op3(ConvBnForward {
            conv,
            out,
            eps,
            act,
            saved: saved.clone(),
        }),
    )?;
    let st = lock_state(&saved, op)?;
    BatchNormTrainOutput::from_stats(y, &st.stats.mean, &st.stats.var, d)
}

fn act_of(act: Option<(f32, f32)>, op: &str) -> Result<Option<Act>> {
    act.map(|(min, max)| Act::new(min, max, op)).transpose()
}

/// Depthwise convolution (`groups = C`, no bias; `stride`, `padding`, `dilation` as in
/// [`depthwise_conv2d_dilated`](super::depthwise_conv2d_dilated)) then train-mode BatchNorm2d
/// and, with `act = Some((min, max))`, `clamp(·, min, max)` (ReLU6: `(0, 6)`), as one op: `x`
/// NCHW `[N, C, H, W]` f32, `w` `[C, 1, KH, KW]`, `gamma` / `beta` `[C]`. Values and gradients
/// equal `depthwise_conv2d_dilated` then
/// [`batch_norm_act_train`](super::batch_norm_act_train) (or `batch_norm_train`). Errors as
/// those two do.
#[allow(clippy::too_many_arguments)]
pub fn depthwise_bn_act_train(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    (stride, padding, dilation): (usize, usize, usize),
    act: Option<(f32, f32)>,
) -> Result<BatchNormTrainOutput> {
    const OP: &str = "depthwise_bn_act_train";
    let g = DwGeom::new(x.dims(), w.dims(), stride, padding, dilation)?;
    let act = act_of(act, OP)?;
    conv_bn_train(Conv::Depthwise(g), x, w, gamma, beta, eps, act, OP)
}

/// [`depthwise_bn_act_train`] as candle ops:
/// [`depthwise_conv2d_slow`](super::depthwise_conv2d_slow), then
/// [`batch_norm_train_slow`](super::batch_norm_train_slow) and
/// [`clamp_slow`](super::clamp_slow) (the reference for tests).
pub fn depthwise_bn_act_train_slow(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    (stride, padding, dilation): (usize, usize, usize),
    act: Option<(f32, f32)>,
) -> Result<BatchNormTrainOutput> {
    let z = super::depthwise_conv2d_slow(x, w, None, stride, padding, dilation)?;
    match act {
        None => super::batch_norm_train_slow(&z, gamma, beta, eps),
        Some((min, max)) => super::batch_norm_act_train_slow(&z, gamma, beta, eps, min, max),
    }
}

/// 1×1 convolution (groups 1, stride 1, no padding, no bias) then train-mode BatchNorm2d with
/// batch statistics, as one op: `x` NCHW `[N, C, H, W]` f32, `w` `[O, C, 1, 1]`, `gamma` /
/// `beta` `[O]`. Returns what [`batch_norm_train`](super::batch_norm_train) returns for the
/// convolution's output; values and gradients (for `x`, `w`, `gamma`, `beta`) equal
/// [`conv1x1`](super::conv1x1) then `batch_norm_train`. Errors on wrong ranks or shapes, a
/// kernel that is not 1×1, a channel mismatch, a single value per channel, a negative / NaN
/// `eps`, non-f32 or non-CPU tensors.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// let x = Tensor::arange(0f32, 16.0, &Device::Cpu)?.reshape((2, 2, 2, 2))?;
/// let w = Tensor::ones((3, 2, 1, 1), DType::F32, &Device::Cpu)?;
/// let (g, b) = (Tensor::ones(3, DType::F32, &Device::Cpu)?, Tensor::zeros(3, DType::F32, &Device::Cpu)?);
/// let o = qat_graph::ops::conv1x1_bn_train(&x, &w, &g, &b, 1e-5)?;
/// assert_eq!(o.y.dims(), &[2, 3, 2, 2]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn conv1x1_bn_train(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<BatchNormTrainOutput> {
    const OP: &str = "conv1x1_bn_train";
    conv_bn_train(pointwise(x, w, OP)?, x, w, gamma, beta, eps, None, OP)
}

/// [`conv1x1_bn_train`] followed by `clamp(·, min, max)` (ReLU: `0, +inf`; ReLU6: `0, 6`)
/// with PyTorch's activation gradient, as [`batch_norm_act_train`](super::batch_norm_act_train)
/// does it. Errors as [`conv1x1_bn_train`], and on `min > max` or NaN bounds.
pub fn conv1x1_bn_act_train(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    min: f32,
    max: f32,
) -> Result<BatchNormTrainOutput> {
    const OP: &str = "conv1x1_bn_act_train";
    let conv = pointwise(x, w, OP)?;
    conv_bn_train(
        conv,
        x,
        w,
        gamma,
        beta,
        eps,
        Some(Act::new(min, max, OP)?),
        OP,
    )
}

/// [`conv1x1_bn_train`] / [`conv1x1_bn_act_train`] (`act = Some((min, max))`) as candle ops:
/// [`conv1x1_slow`](super::conv1x1_slow), then
/// [`batch_norm_train_slow`](super::batch_norm_train_slow) and
/// [`clamp_slow`](super::clamp_slow) (the reference for tests).
pub fn conv1x1_bn_act_train_slow(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    act: Option<(f32, f32)>,
) -> Result<BatchNormTrainOutput> {
    let z = super::conv1x1_slow(x, w, None, 1)?;
    match act {
        None => super::batch_norm_train_slow(&z, gamma, beta, eps),
        Some((min, max)) => super::batch_norm_act_train_slow(&z, gamma, beta, eps, min, max),
    }
}
