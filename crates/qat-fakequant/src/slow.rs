//! The device-generic fake quantization, composed of plain candle ops (CUDA / Metal run it).
//!
//! Two things candle lacks are built here: round half to even (`Tensor::round` rounds half
//! away from zero and has no gradient) and the clipped straight-through estimator.

use candle_core::{Result, Tensor};

/// `1.5 * 2^23`: adding it to `|v| <= 2^22` lands in `[2^23, 2^24]`, where the f32 spacing is
/// exactly 1, so the addition itself rounds `v` to an integer, half to even (the default
/// IEEE mode; the constant is even, so parity is kept). Subtracting it back is exact.
const MAGIC: f64 = 12_582_912.0;
/// Inputs are clamped to `±2^22` first; quantized ranges are far smaller (see
/// `check::MAX_QRANGE`), so a clamped value is out of range either way.
const LIMIT: f64 = 4_194_304.0;

/// Round half to even with plain tensor ops (exact for f32; values beyond `±2^22` come
/// back as `±2^22`). No gradient flows through it.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let v = Tensor::new(&[0.5f32, 1.5, 2.5, -0.5, -1.5, 2.4], &Device::Cpu).unwrap();
/// let r = qat_fakequant::round_half_even_slow(&v).unwrap();
/// assert_eq!(r.to_vec1::<f32>().unwrap(), [0.0, 2.0, 2.0, 0.0, -2.0, 2.0]);
/// ```
pub fn round_half_even_slow(v: &Tensor) -> Result<Tensor> {
    v.detach()
        .clamp(-LIMIT, LIMIT)?
        .affine(1.0, MAGIC)?
        .affine(1.0, -MAGIC)
}

/// The shared tail: clamp, dequantize, and attach the clipped straight-through gradient.
///
/// `qf` is the unclamped quantized value (computed from a detached `x`); `zp` / `scale`
/// broadcast against it. The value returned is exactly `(clamp(qf) - zp) * scale`; its
/// gradient with respect to `x` is `grad * [lo <= qf <= hi]`.
pub(crate) fn finish(
    x: &Tensor,
    qf: &Tensor,
    zp: &Tensor,
    scale: &Tensor,
    lo: f32,
    hi: f32,
) -> Result<Tensor> {
    // `maximum` keeps its left operand when the comparison fails: with the bound on the
    // left a NaN becomes `lo`, as in the fused kernel.
    let lo_t = Tensor::new(lo, x.device())?;
    let q = lo_t.broadcast_maximum(qf)?.minimum(hi as f64)?;
    let y = q.broadcast_sub(zp)?.broadcast_mul(scale)?;
    let mask = qf.ge(lo as f64)?.mul(&qf.le(hi as f64)?)?;
    // `t` equals `x` inside the range and 0 outside (never inf / NaN), so `t - t` is an exact
    // +0 and `y + 0` is `y` bit for bit; the gradient reaches `x` only through `t`.
    let t = mask.where_cond(x, &x.zeros_like()?)?;
    y.add(&t.sub(&t.detach())?)
}
