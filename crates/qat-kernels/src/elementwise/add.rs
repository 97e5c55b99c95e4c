//! Quantized add of two u8 tensors with different scales / zero points, with a fused ReLU.

use super::{kernel_isa, CHUNK};
use crate::error::{check_isa, check_len, check_scale, check_zero_point, KernelError, Result};
use crate::{Activation, Isa};
use qat_core::QParams;
use rayon::prelude::*;

/// `out = clamp(zp_o + round_half_even((a - zp_a)·s_a/s_o + (b - zp_b)·s_b/s_o))` element-wise,
/// exactly [`qat_core::quantized_add`] on every ISA.
///
/// ```
/// use qat_core::QParams;
/// use qat_kernels::{elementwise::QuantizedAdd, Activation, Isa};
/// let add = QuantizedAdd::new(
///     QParams { scale: 0.04, zero_point: 120 },
///     QParams { scale: 0.07, zero_point: 100 },
///     QParams { scale: 0.09, zero_point: 110 },
///     Activation::None,
/// ).unwrap();
/// let mut out = [0u8; 1];
/// add.run(&[130], &[110], &mut out, Isa::Scalar, 1).unwrap();
/// assert_eq!(out, [122]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantizedAdd {
    pub(crate) a_zp: i32,
    pub(crate) a_mult: f32,
    pub(crate) b_zp: i32,
    pub(crate) b_mult: f32,
    pub(crate) out_zp: i32,
    pub(crate) qmin: i32,
    pub(crate) qmax: i32,
}

impl QuantizedAdd {
    /// Validate the parameters and precompute the multipliers.
    pub fn new(a: QParams, b: QParams, out: QParams, activation: Activation) -> Result<Self> {
        for (what, q) in [("add input a", a), ("add input b", b), ("add output", out)] {
            check_scale(what, q.scale)?;
            check_zero_point(what, q.zero_point, 0, 255)?;
        }
        let (a_mult, b_mult) = qat_core::add_multipliers(a.scale, b.scale, out.scale);
        for m in [a_mult, b_mult] {
            check_scale("add multiplier input_scale/output_scale", m)?;
        }
        let (qmin, qmax) = activation.bounds(out);
        Ok(QuantizedAdd {
            a_zp: a.zero_point,
            a_mult,
            b_zp: b.zero_point,
            b_mult,
            out_zp: out.zero_point,
            qmin,
            qmax,
        })
    }

    /// The kernel family [`QuantizedAdd::run`] uses for `isa`: the element-wise family
    /// ([`super::kernel_isa`]), except AVX-512, which has an add kernel of its own (the add is
    /// instruction-bound, not memory-bound).
    pub fn kernel_isa(isa: Isa) -> Isa {
        match isa {
            Isa::Avx512Vnni => Isa::Avx512Vnni,
            _ => kernel_isa(isa),
        }
    }

    /// Add `a` and `b` (same length) into `out`. Returns the kernel family that ran.
    pub fn run(&self, a: &[u8], b: &[u8], out: &mut [u8], isa: Isa, threads: usize) -> Result<Isa> {
        check_isa(isa)?;
        check_len("add input b (length of a)", a.len(), b.len())?;
        check_len("add output (length of a)", a.len(), out.len())?;
        if a.is_empty() {
            return Err(KernelError::Shape("quantized add of empty tensors".into()));
        }
        let kernel = Self::kernel_isa(isa);
        let f = |a: &[u8], b: &[u8], out: &mut [u8]| self.run_chunk(a, b, out, kernel);
        if threads <= 1 || out.len() <= CHUNK {
            f(a, b, out);
        } else {
            out.par_chunks_mut(CHUNK)
                .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
                .for_each(|(o, (a, b))| f(a, b, o));
        }
        Ok(kernel)
    }

    fn run_chunk(&self, a: &[u8], b: &[u8], out: &mut [u8], kernel: Isa) {
        match kernel {
            // SAFETY: `run` checked the requested ISA is supported, and every ISA mapping to
            // the AVX2 family implies AVX2; the slices have equal lengths.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { super::x86_64::add_avx2(self, a, b, out) },
            // SAFETY: `run` checked AVX-512 VNNI (which implies AVX-512F); equal lengths.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => unsafe { super::x86_64::add_avx512(self, a, b, out) },
            // SAFETY: NEON checked by `run`; equal lengths.
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => unsafe { super::aarch64::add_neon(self, a, b, out) },
            _ => self.reference(a, b, out),
        }
    }

    /// The scalar reference over slices of equal length.
    pub(crate) fn reference(&self, a: &[u8], b: &[u8], out: &mut [u8]) {
        for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
            *o = self.one(a, b);
        }
    }

    /// One element, by the normative formula.
    #[inline]
    pub(crate) fn one(&self, a: u8, b: u8) -> u8 {
        qat_core::quantized_add(
            a as i32,
            self.a_zp,
            self.a_mult,
            b as i32,
            self.b_zp,
            self.b_mult,
            self.out_zp,
            self.qmin,
            self.qmax,
        ) as u8
    }
}
