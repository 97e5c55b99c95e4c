//! `fake_quantize_per_tensor` / `fake_quantize_per_channel`: PyTorch's
//! `fake_quantize_per_{tensor,channel}_affine` with the clipped straight-through gradient.

use candle_core::{Result, Tensor};

use crate::check;
use crate::kernels::{Affine, Isa};
use crate::op::FakeQuantOp;
use crate::slow;

/// Fake-quantize `x` with one scale and zero point.
///
/// `y = (clamp(zero_point + round_half_even(x * (1/scale)), quant_min, quant_max) -
/// zero_point) * scale`, bit-identical to [`qat_core::fake_quantize_with_inv`]; the gradient
/// is `grad_y` where the unclamped quantized value lies in `[quant_min, quant_max]`, else 0.
/// CPU tensors run the fused kernel, other devices [`fake_quantize_per_tensor_slow`].
/// f16 / bf16 inputs are computed in f32 and rounded back; other dtypes are refused.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// let x = Var::new(&[0.26f32, -0.5, 100.0], &Device::Cpu).unwrap();
/// let y = qat_fakequant::fake_quantize_per_tensor(&x, 0.1, 0, -128, 127).unwrap();
/// let v = y.to_vec1::<f32>().unwrap();
/// assert_eq!(v[2], 12.7); // clamped to quant_max
/// let g = y.sum_all().unwrap().backward().unwrap();
/// assert_eq!(g.get(&x).unwrap().to_vec1::<f32>().unwrap(), [1.0, 1.0, 0.0]);
/// ```
pub fn fake_quantize_per_tensor(
    x: &Tensor,
    scale: f32,
    zero_point: i32,
    quant_min: i32,
    quant_max: i32,
) -> Result<Tensor> {
    const OP: &str = "fake_quantize_per_tensor";
    check_per_tensor(OP, scale, zero_point, quant_min, quant_max)?;
    if !x.device().is_cpu() {
        return fake_quantize_per_tensor_slow(x, scale, zero_point, quant_min, quant_max);
    }
    let (xf, orig) = check::float_input(OP, x)?;
    let op = FakeQuantOp {
        params: vec![Affine::new(scale, zero_point as f32)],
        axis: None,
        lo: quant_min as f32,
        hi: quant_max as f32,
        isa: Isa::detect(),
    };
    check::restore_dtype(xf.contiguous()?.apply_op1(op)?, orig)
}

/// [`fake_quantize_per_tensor`] composed of plain candle ops, for any device.
///
/// Same values bit for bit, and the same gradients, except where `grad_y` is NaN / Inf on
/// an element masked out: the fused op (like PyTorch's `grad_y * mask`) gives NaN there,
/// this one 0.
pub fn fake_quantize_per_tensor_slow(
    x: &Tensor,
    scale: f32,
    zero_point: i32,
    quant_min: i32,
    quant_max: i32,
) -> Result<Tensor> {
    const OP: &str = "fake_quantize_per_tensor_slow";
    check_per_tensor(OP, scale, zero_point, quant_min, quant_max)?;
    let (xf, orig) = check::float_input(OP, x)?;
    let inv = qat_core::inv_scale(scale);
    let qf = slow::round_half_even_slow(&xf.detach().affine(inv as f64, 0.0)?)?
        .affine(1.0, zero_point as f64)?;
    let dev = x.device();
    let zp = check::scalar(zero_point as f32, dev)?;
    let s = check::scalar(scale, dev)?;
    let y = slow::finish(&xf, &qf, &zp, &s, quant_min as f32, quant_max as f32)?;
    check::restore_dtype(y, orig)
}

pub(crate) fn check_per_tensor(
    op: &str,
    scale: f32,
    zp: i32,
    quant_min: i32,
    quant_max: i32,
) -> Result<()> {
    check::range(op, quant_min, quant_max)?;
    check::scale(op, "scale", scale)?;
    check::zero_point(op, "zero_point", zp as i64, quant_min, quant_max)
}

/// Fake-quantize `x` with one scale and zero point per index of `axis`.
///
/// `scale` (float) and `zero_point` (integer-valued, any dtype) are 1-D with `x.dims()[axis]`
/// values. Same formula, gradient and device rule as [`fake_quantize_per_tensor`].
///
/// ```
/// use candle_core::{Device, Tensor};
/// let dev = Device::Cpu;
/// let x = Tensor::new(&[[0.3f32, 0.3], [0.3, 0.3]], &dev).unwrap();
/// let scale = Tensor::new(&[0.25f32, 0.5], &dev).unwrap();
/// let zp = Tensor::new(&[0i64, 0], &dev).unwrap();
/// let y = qat_fakequant::fake_quantize_per_channel(&x, &scale, &zp, 1, -128, 127).unwrap();
/// assert_eq!(y.to_vec2::<f32>().unwrap(), [[0.25, 0.5], [0.25, 0.5]]);
/// ```
pub fn fake_quantize_per_channel(
    x: &Tensor,
    scale: &Tensor,
    zero_point: &Tensor,
    axis: usize,
    quant_min: i32,
    quant_max: i32,
) -> Result<Tensor> {
    const OP: &str = "fake_quantize_per_channel";
    let params = channel_params(OP, x, scale, zero_point, axis, quant_min, quant_max)?;
    if !x.device().is_cpu() {
        return fake_quantize_per_channel_slow(x, scale, zero_point, axis, quant_min, quant_max);
    }
    let (xf, orig) = check::float_input(OP, x)?;
    let op = FakeQuantOp {
        params,
        axis: Some(axis),
        lo: quant_min as f32,
        hi: quant_max as f32,
        isa: Isa::detect(),
    };
    check::restore_dtype(xf.contiguous()?.apply_op1(op)?, orig)
}

/// [`fake_quantize_per_channel`] composed of plain candle ops, for any device (same values;
/// gradients as [`fake_quantize_per_tensor_slow`]).
pub fn fake_quantize_per_channel_slow(
    x: &Tensor,
    scale: &Tensor,
    zero_point: &Tensor,
    axis: usize,
    quant_min: i32,
    quant_max: i32,
) -> Result<Tensor> {
    const OP: &str = "fake_quantize_per_channel_slow";
    let params = channel_params(OP, x, scale, zero_point, axis, quant_min, quant_max)?;
    let (xf, orig) = check::float_input(OP, x)?;
    let dev = x.device();
    let mut shape = vec![1usize; x.rank()];
    shape[axis] = params.len();
    let col = |f: fn(&Affine) -> f32| -> Result<Tensor> {
        Tensor::from_vec(
            params.iter().map(f).collect::<Vec<f32>>(),
            shape.as_slice(),
            dev,
        )
    };
    let (s, zp) = (col(|a| a.scale)?, col(|a| a.zp)?);
    // 1/scale by a tensor division (IEEE on every backend), as PyTorch's `1.0f / scale`.
    let inv = s.ones_like()?.div(&s)?;
    let qf = slow::round_half_even_slow(&xf.detach().broadcast_mul(&inv)?)?.broadcast_add(&zp)?;
    let y = slow::finish(&xf, &qf, &zp, &s, quant_min as f32, quant_max as f32)?;
    check::restore_dtype(y, orig)
}

/// Fake-quantize with host-side qparams (what the modules hold): per-tensor when there is
/// one pair and `axis` is `None`, else per-channel along `axis`.
pub(crate) fn fake_quantize_values(
    op: &str,
    x: &Tensor,
    scale: &[f32],
    zero_point: &[i32],
    axis: Option<usize>,
    quant_min: i32,
    quant_max: i32,
) -> Result<Tensor> {
    match axis {
        None => {
            if scale.len() != 1 || zero_point.len() != 1 {
                candle_core::bail!(
                    "{op}: per-tensor fake quantization needs one scale / zero point, holds {} / {}",
                    scale.len(),
                    zero_point.len()
                )
            }
            fake_quantize_per_tensor(x, scale[0], zero_point[0], quant_min, quant_max)
        }
        Some(axis) => {
            let c = check::axis(op, x, axis)?;
            if scale.len() != c || zero_point.len() != c {
                candle_core::bail!(
                    "{op}: holds {} scales / {} zero points but the input has {c} channels along \
                     axis {axis} (observe a batch or load a state first)",
                    scale.len(),
                    zero_point.len()
                )
            }
            let dev = x.device();
            let s = Tensor::from_slice(scale, c, dev)?;
            let z = Tensor::from_slice(zero_point, c, dev)?;
            fake_quantize_per_channel(x, &s, &z, axis, quant_min, quant_max)
        }
    }
}

fn channel_params(
    op: &str,
    x: &Tensor,
    scale: &Tensor,
    zero_point: &Tensor,
    axis: usize,
    quant_min: i32,
    quant_max: i32,
) -> Result<Vec<Affine>> {
    check::range(op, quant_min, quant_max)?;
    let c = check::axis(op, x, axis)?;
    let s = check::param_vec(op, "scale", scale, c)?;
    let z = check::param_vec(op, "zero_point", zero_point, c)?;
    check::channel_params(op, &s, &z, quant_min, quant_max)
}
