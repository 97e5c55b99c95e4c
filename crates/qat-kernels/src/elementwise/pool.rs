//! Global average pool over NHWC u8: one requantized mean per (batch, channel).

use super::kernel_isa;
use crate::error::{check_isa, check_len, check_scale, check_zero_point, KernelError, Result};
use crate::Isa;
use qat_core::QParams;
use rayon::prelude::*;

/// Largest pooled area: keeps `255 · h · w` and `h · w · zp` exact in i32.
const MAX_AREA: usize = 1 << 23;

/// Global average pool `[n][h][w][c]` → `[n][c]`, exactly [`qat_core::global_avg_pool`] per
/// channel (exact i32 sum, then the fp32 requantization with multiplier
/// `in_scale / (out_scale · h · w)`). Threads split the batch. Returns the kernel family that
/// ran.
///
/// ```
/// use qat_core::QParams;
/// use qat_kernels::{elementwise::global_avg_pool, Isa};
/// let q = QParams { scale: 0.05, zero_point: 9 };
/// let x = [10u8, 100, 11, 100, 12, 100, 13, 100]; // 1×2×2×2
/// let mut y = [0u8; 2];
/// global_avg_pool(&x, 1, 2, 2, 2, q, q, &mut y, Isa::Scalar, 1).unwrap();
/// assert_eq!(y, [11, 100]); // 11.5 rounds to even
/// ```
#[allow(clippy::too_many_arguments)]
pub fn global_avg_pool(
    input: &[u8],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    input_q: QParams,
    output_q: QParams,
    output: &mut [u8],
    isa: Isa,
    threads: usize,
) -> Result<Isa> {
    check_isa(isa)?;
    if n == 0 || h == 0 || w == 0 || c == 0 {
        return Err(KernelError::Shape(format!(
            "global average pool over an empty tensor [{n}, {h}, {w}, {c}]"
        )));
    }
    let area = h.checked_mul(w).filter(|&a| a <= MAX_AREA).ok_or_else(|| {
        KernelError::Shape(format!("pooled area {h}×{w} exceeds {MAX_AREA} pixels"))
    })?;
    check_scale("pool input scale", input_q.scale)?;
    check_scale("pool output scale", output_q.scale)?;
    check_zero_point("pool input", input_q.zero_point, 0, 255)?;
    check_zero_point("pool output", output_q.zero_point, 0, 255)?;
    let mult = qat_core::avg_pool_multiplier(input_q.scale, output_q.scale, area);
    check_scale("pool multiplier in_scale/(out_scale·h·w)", mult)?;
    let in_len = n
        .checked_mul(area)
        .and_then(|v| v.checked_mul(c))
        .ok_or_else(|| KernelError::Shape("pool input size overflows usize".into()))?;
    check_len("pool input NHWC", in_len, input.len())?;
    check_len("pool output [n][c]", n * c, output.len())?;
    let kernel = kernel_isa(isa);
    let one = |x: &[u8], y: &mut [u8]| {
        let mut sums = vec![0i32; c];
        channel_sums(x, c, &mut sums, kernel);
        for (y, &s) in y.iter_mut().zip(&sums) {
            *y = qat_core::global_avg_pool(
                s,
                area,
                input_q.zero_point,
                mult,
                output_q.zero_point,
                0,
                255,
            ) as u8;
        }
    };
    if threads <= 1 {
        for (x, y) in input.chunks(area * c).zip(output.chunks_mut(c)) {
            one(x, y);
        }
    } else {
        input
            .par_chunks(area * c)
            .zip(output.par_chunks_mut(c))
            .for_each(|(x, y)| one(x, y));
    }
    Ok(kernel)
}

/// Per-channel sums of `x` (`pixels × c`) into `sums` (`c`).
fn channel_sums(x: &[u8], c: usize, sums: &mut [i32], kernel: Isa) {
    match kernel {
        // SAFETY: the AVX2 family is only chosen for a supported ISA that implies AVX2;
        // `x.len()` is a multiple of `c` and `sums` holds `c`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { super::x86_64::channel_sums_avx2(x, c, sums) },
        // SAFETY: NEON checked by the caller; as above.
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { super::aarch64::channel_sums_neon(x, c, sums) },
        _ => channel_sums_reference(x, c, sums),
    }
}

/// The scalar reference: plain i32 sums.
pub(crate) fn channel_sums_reference(x: &[u8], c: usize, sums: &mut [i32]) {
    sums.fill(0);
    for px in x.chunks_exact(c) {
        for (s, &v) in sums.iter_mut().zip(px) {
            *s += v as i32;
        }
    }
}
