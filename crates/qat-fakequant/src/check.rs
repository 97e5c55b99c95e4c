//! Argument checks shared by the ops: every refusal is an `Err` naming the op and the value.

use candle_core::{bail, DType, Device, Result, Tensor};

use crate::kernels::Affine;

/// Quantized ranges beyond this are refused: the device-generic path rounds through
/// `±2^22`, which is exact only while the range stays far inside it.
pub(crate) const MAX_QRANGE: i32 = 1 << 16;

pub(crate) fn range(op: &str, quant_min: i32, quant_max: i32) -> Result<()> {
    if quant_min > quant_max {
        bail!("{op}: quant_min {quant_min} > quant_max {quant_max}")
    }
    if quant_min < -MAX_QRANGE || quant_max > MAX_QRANGE {
        bail!("{op}: quantized range [{quant_min}, {quant_max}] exceeds ±{MAX_QRANGE}")
    }
    Ok(())
}

pub(crate) fn scale(op: &str, what: &str, scale: f32) -> Result<()> {
    if !(scale.is_finite() && scale > 0.0) {
        bail!("{op}: {what} {scale} must be finite and > 0")
    }
    if !qat_core::inv_scale(scale).is_finite() {
        bail!("{op}: {what} {scale} is so small that 1/scale overflows f32")
    }
    Ok(())
}

pub(crate) fn zero_point(
    op: &str,
    what: &str,
    zp: i64,
    quant_min: i32,
    quant_max: i32,
) -> Result<()> {
    if zp < quant_min as i64 || zp > quant_max as i64 {
        bail!("{op}: {what} {zp} outside the quantized range [{quant_min}, {quant_max}]")
    }
    Ok(())
}

pub(crate) fn axis(op: &str, x: &Tensor, axis: usize) -> Result<usize> {
    let rank = x.rank();
    if axis >= rank {
        bail!("{op}: channel axis {axis} out of range for a tensor of rank {rank}")
    }
    Ok(x.dims()[axis])
}

/// The input dtype's compute plan: f32 as is; f16 / bf16 are widened to f32 (exact) and the
/// result narrowed back, as PyTorch computes them in f32 too. Other dtypes are refused.
pub(crate) fn float_input(op: &str, x: &Tensor) -> Result<(Tensor, Option<DType>)> {
    match x.dtype() {
        DType::F32 => Ok((x.clone(), None)),
        d @ (DType::F16 | DType::BF16) => Ok((x.to_dtype(DType::F32)?, Some(d))),
        d => bail!("{op}: dtype {d:?} is not supported (use f32, f16 or bf16)"),
    }
}

pub(crate) fn restore_dtype(y: Tensor, orig: Option<DType>) -> Result<Tensor> {
    match orig {
        Some(d) => y.to_dtype(d),
        None => Ok(y),
    }
}

/// A 1-D parameter tensor of `len` values, read to the host as f64 (exact for f32 / i32 /
/// i64 / u8 values).
pub(crate) fn param_vec(op: &str, what: &str, t: &Tensor, len: usize) -> Result<Vec<f64>> {
    if t.rank() > 1 {
        bail!("{op}: {what} must be 1-D, got shape {:?}", t.dims())
    }
    if t.elem_count() != len {
        bail!(
            "{op}: {what} has {} values, expected {len} (one per channel)",
            t.elem_count()
        )
    }
    match t.dtype() {
        DType::F32
        | DType::F64
        | DType::F16
        | DType::BF16
        | DType::I32
        | DType::I64
        | DType::U8
        | DType::U32
        | DType::I16 => t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>(),
        d => bail!("{op}: {what} has unsupported dtype {d:?}"),
    }
}

/// Checked per-channel constants from host vectors.
pub(crate) fn channel_params(
    op: &str,
    scale: &[f64],
    zero_point: &[f64],
    quant_min: i32,
    quant_max: i32,
) -> Result<Vec<Affine>> {
    let mut out = Vec::with_capacity(scale.len());
    for (c, (&s, &z)) in scale.iter().zip(zero_point).enumerate() {
        let s32 = s as f32;
        self::scale(op, &format!("scale[{c}]"), s32)?;
        if z.fract() != 0.0 {
            bail!("{op}: zero_point[{c}] = {z} is not an integer")
        }
        self::zero_point(
            op,
            &format!("zero_point[{c}]"),
            z as i64,
            quant_min,
            quant_max,
        )?;
        out.push(Affine::new(s32, z as f32));
    }
    Ok(out)
}

/// `(outer, channels, inner)` of a contiguous shape split at `axis`.
pub(crate) fn split_at_axis(dims: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = dims[..axis].iter().product();
    let inner = dims[axis + 1..].iter().product();
    (outer, dims[axis], inner)
}

/// The device's zero for a 1-element helper tensor.
pub(crate) fn scalar(v: f32, device: &Device) -> Result<Tensor> {
    Tensor::new(v, device)
}
