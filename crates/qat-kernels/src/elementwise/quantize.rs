//! Quantize f32 → u8 and dequantize u8 → f32, exactly as qat-core (and PyTorch) define them.

use super::{for_chunks, kernel_isa};
use crate::error::{check_isa, check_len, check_scale, check_zero_point, KernelError, Result};
use crate::Isa;
use qat_core::QParams;

fn check_q(what: &'static str, q: QParams, len: usize) -> Result<()> {
    if len == 0 {
        return Err(KernelError::Shape(format!("{what} of an empty tensor")));
    }
    check_scale(what, q.scale)?;
    check_zero_point(what, q.zero_point, 0, 255)
}

/// `out[i] = qat_core::quantize_with_inv(x[i], 1/scale, zp, 0, 255)`: multiply by the f32
/// reciprocal, round half to even, add the zero point, clamp; NaN → 0, ±Inf → 255 / 0.
/// Returns the kernel family that ran.
///
/// ```
/// use qat_core::QParams;
/// use qat_kernels::{elementwise::quantize_u8, Isa};
/// let mut q = [0u8; 4];
/// let p = QParams { scale: 0.5, zero_point: 10 };
/// quantize_u8(&[1.25, -100.0, f32::NAN, 1e9], p, &mut q, Isa::Scalar, 1).unwrap();
/// assert_eq!(q, [12, 0, 0, 255]);
/// ```
pub fn quantize_u8(x: &[f32], q: QParams, out: &mut [u8], isa: Isa, threads: usize) -> Result<Isa> {
    check_isa(isa)?;
    check_q("quantize", q, x.len())?;
    check_len("quantize output (length of input)", x.len(), out.len())?;
    let inv = qat_core::inv_scale(q.scale);
    let kernel = kernel_isa(isa);
    for_chunks(x, out, threads, |x, out| match kernel {
        // SAFETY: the AVX2 family is only chosen for a supported ISA that implies AVX2; equal
        // lengths checked above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { super::x86_64::quantize_avx2(x, inv, q.zero_point, out) },
        // SAFETY: NEON checked; equal lengths.
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { super::aarch64::quantize_neon(x, inv, q.zero_point, out) },
        _ => quantize_reference(x, inv, q.zero_point, out),
    });
    Ok(kernel)
}

/// `out[i] = qat_core::dequantize(q[i], p)` = `(q - zp) as f32 * scale`. Returns the kernel
/// family that ran.
pub fn dequantize_u8(
    q: &[u8],
    p: QParams,
    out: &mut [f32],
    isa: Isa,
    threads: usize,
) -> Result<Isa> {
    check_isa(isa)?;
    check_q("dequantize", p, q.len())?;
    check_len("dequantize output (length of input)", q.len(), out.len())?;
    let kernel = kernel_isa(isa);
    for_chunks(q, out, threads, |q, out| match kernel {
        // SAFETY: as in `quantize_u8`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { super::x86_64::dequantize_avx2(q, p, out) },
        // SAFETY: as in `quantize_u8`.
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { super::aarch64::dequantize_neon(q, p, out) },
        _ => dequantize_reference(q, p, out),
    });
    Ok(kernel)
}

/// The scalar reference of [`quantize_u8`].
pub(crate) fn quantize_reference(x: &[f32], inv: f32, zp: i32, out: &mut [u8]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = qat_core::quantize_with_inv(v, inv, zp, 0, 255) as u8;
    }
}

/// The scalar reference of [`dequantize_u8`].
pub(crate) fn dequantize_reference(q: &[u8], p: QParams, out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(q) {
        *o = qat_core::dequantize(v as i32, p);
    }
}
