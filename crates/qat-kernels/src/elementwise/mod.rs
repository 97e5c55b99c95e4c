//! Element-wise quantized ops: quantized add (+ fused ReLU), global average pool, quantize
//! f32 → u8 and dequantize u8 → f32.
//!
//! Each op has a scalar reference that calls the normative qat-core formula per element
//! ([`qat_core::quantized_add`], [`qat_core::global_avg_pool`], [`qat_core::quantize_with_inv`],
//! [`qat_core::dequantize`]) and SIMD paths that repeat the same IEEE-754 operations lane-wise,
//! so every path is bit-identical. Quantize and dequantize are memory-bound: 8 lanes already
//! saturate the load ports, so the AVX-512 ISA runs their AVX2 kernels (reported as
//! [`Isa::Avx2`]). The add and the pool do enough instructions per byte to gain from AVX-512:
//! they have kernels of their own ([`QuantizedAdd::kernel_isa`], [`pool_kernel_isa`]).

#[cfg(target_arch = "aarch64")]
mod aarch64;
mod add;
mod pool;
mod quantize;
#[cfg(target_arch = "x86_64")]
mod x86_64;

pub use add::QuantizedAdd;
pub use pool::{global_avg_pool, global_avg_pool_with_scratch, pool_kernel_isa, pool_scratch_len};
pub use quantize::{dequantize_u8, quantize_u8};

use crate::Isa;
use rayon::prelude::*;

/// The kernel family the element-wise ops run for `isa`.
pub fn kernel_isa(isa: Isa) -> Isa {
    match isa {
        Isa::Scalar => Isa::Scalar,
        Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni => Isa::Avx2,
        Isa::Neon | Isa::Dotprod | Isa::I8mm => Isa::Neon,
    }
}

/// Elements per parallel task: large enough that a task outweighs rayon's overhead.
const CHUNK: usize = 1 << 15;

/// Run `f` over matching chunks of `src` and `dst` (same length), on the calling thread when
/// `threads <= 1`.
pub(crate) fn for_chunks<S: Sync, D: Send>(
    src: &[S],
    dst: &mut [D],
    threads: usize,
    f: impl Fn(&[S], &mut [D]) + Sync + Send,
) {
    if threads <= 1 || dst.len() <= CHUNK {
        f(src, dst);
    } else {
        dst.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(d, s)| f(s, d));
    }
}
