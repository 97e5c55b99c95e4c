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
/// ran. Allocates its per-channel sums; [`global_avg_pool_with_scratch`] takes the caller's.
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
    let mut sums = vec![0i32; pool_scratch_len(c, threads)];
    global_avg_pool_with_scratch(
        input, n, h, w, c, input_q, output_q, output, isa, threads, &mut sums,
    )
}

/// Parts a multi-threaded pool splits its batch into.
fn parts(threads: usize) -> usize {
    threads.max(1)
}

/// Scratch (i32 channel sums) [`global_avg_pool_with_scratch`] needs for `c` channels.
pub fn pool_scratch_len(c: usize, threads: usize) -> usize {
    c.saturating_mul(parts(threads))
}

/// [`global_avg_pool`] with caller-provided scratch of at least
/// [`pool_scratch_len`]`(c, threads)` i32 (contents irrelevant): no allocation.
#[allow(clippy::too_many_arguments)]
pub fn global_avg_pool_with_scratch(
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
    scratch: &mut [i32],
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
    let need = pool_scratch_len(c, threads);
    if scratch.len() < need {
        return Err(KernelError::Length {
            what: "pool scratch (see pool_scratch_len)",
            expected: need,
            got: scratch.len(),
        });
    }
    let kernel = pool_kernel_isa(isa);
    let one = |x: &[u8], y: &mut [u8], sums: &mut [i32]| {
        channel_sums(x, c, sums, kernel);
        #[cfg(target_arch = "x86_64")]
        if kernel == Isa::Avx512Vnni {
            // SAFETY: AVX-512 checked by `check_isa`; `y` and `sums` both hold `c`.
            unsafe {
                super::x86_64::pool_requant_avx512(
                    sums,
                    area,
                    input_q.zero_point,
                    mult,
                    output_q.zero_point,
                    y,
                )
            };
            return;
        }
        for (y, &s) in y.iter_mut().zip(sums.iter()) {
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
    let images = |x: &[u8], y: &mut [u8], sums: &mut [i32]| {
        for (x, y) in x.chunks(area * c).zip(y.chunks_mut(c)) {
            one(x, y, sums);
        }
    };
    if threads <= 1 {
        images(input, output, &mut scratch[..c]);
    } else {
        let per = n.div_ceil(parts(threads));
        input
            .par_chunks(per * area * c)
            .zip(output.par_chunks_mut(per * c))
            .zip(scratch[..need].par_chunks_mut(c))
            .for_each(|((x, y), sums)| images(x, y, sums));
    }
    Ok(kernel)
}

/// Per-channel sums of `x` (`pixels × c`) into `sums` (`c`).
/// The kernel family the pool runs for `isa`: the element-wise family, except AVX-512, whose
/// u16 channel sums take a quarter of the AVX2 kernel's instructions.
pub fn pool_kernel_isa(isa: Isa) -> Isa {
    match isa {
        Isa::Avx512Vnni => Isa::Avx512Vnni,
        _ => kernel_isa(isa),
    }
}

fn channel_sums(x: &[u8], c: usize, sums: &mut [i32], kernel: Isa) {
    match kernel {
        // SAFETY: AVX-512F/BW are implied by the supported AVX-512 VNNI ISA (checked by the
        // caller); `x.len()` is a multiple of `c` and `sums` holds `c`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => unsafe { super::x86_64::channel_sums_avx512(x, c, sums) },
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

/// Channels `from..c` of the sums, in place with the reference's plain i32 adds (the SIMD
/// kernels' tail; no allocation).
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
pub(crate) fn channel_sums_tail(x: &[u8], c: usize, from: usize, sums: &mut [i32]) {
    let tail = &mut sums[from..c];
    tail.fill(0);
    for px in x.chunks_exact(c) {
        for (s, &v) in tail.iter_mut().zip(&px[from..]) {
            *s += v as i32;
        }
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
