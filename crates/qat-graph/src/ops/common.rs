//! Shared plumbing for the training ops: input checks, storage access, SIMD dispatch and the
//! vector primitives (`madd`, `dot`, `sum`) every kernel is built from.

use std::mem::MaybeUninit;
use std::sync::{Mutex, MutexGuard, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, DType, Layout, Result, Tensor};

/// Below this many output elements a kernel runs on the calling thread: rayon's fork/join costs
/// more than the work.
pub(crate) const PAR_MIN_ELEMS: usize = 1 << 15;

/// Checks that `t` is f32 and returns it contiguous (a no-op when it already is; the copy is
/// recorded by autograd, so non-contiguous inputs get correct gradients).
pub(crate) fn f32_contiguous(t: &Tensor, op: &str, what: &str) -> Result<Tensor> {
    if t.dtype() != DType::F32 {
        bail!("{op}: {what} must be f32, got {:?}", t.dtype())
    }
    if !t.device().is_cpu() {
        bail!(
            "{op}: {what} must be on the CPU, got {:?}",
            t.device().location()
        )
    }
    t.contiguous()
}

/// Locks the state a forward op leaves for its backward (batch statistics, saved inputs); a
/// poisoned lock (a panic in another op holding it) is an error naming the op.
pub(crate) fn lock_state<'a, T>(m: &'a Mutex<T>, op: &str) -> Result<MutexGuard<'a, T>> {
    m.lock()
        .map_err(|_| candle_core::Error::Msg(format!("{op}: saved state lock poisoned")))
}

/// Buffers handed back by the fused ops (a convolution's output kept for the backward, a
/// BatchNorm input gradient), for reuse by the next layer or step.
static SCRATCH: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// At most this many floats wait in [`SCRATCH`] (256 MiB): every layer of a batch-32
/// MobileNetV2 step on small images, bounded for processes that build and drop many models.
const SCRATCH_MAX_FLOATS: usize = 1 << 26;

/// A buffer of `len` floats with unspecified contents, for a kernel that overwrites all of it:
/// a recycled one when one is big enough (no allocation, no zero-fill of megabytes per layer),
/// else a fresh zeroed one.
pub(crate) fn scratch(len: usize) -> Vec<f32> {
    let reused = {
        let mut pool = SCRATCH.lock().unwrap_or_else(|e| e.into_inner());
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= len)
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i);
        best.map(|i| pool.swap_remove(i))
    };
    match reused {
        Some(mut v) => {
            // Stale values stay (the caller overwrites them); only a length increase fills.
            v.truncate(len);
            v.resize(len, 0.0);
            v
        }
        None => vec![0f32; len],
    }
}

/// Hands `v` back for [`scratch`] to reuse (dropped when the pool is full).
pub(crate) fn recycle(v: Vec<f32>) {
    if v.capacity() == 0 {
        return;
    }
    let mut pool = SCRATCH.lock().unwrap_or_else(|e| e.into_inner());
    let held: usize = pool.iter().map(Vec::capacity).sum();
    if held + v.capacity() <= SCRATCH_MAX_FLOATS {
        pool.push(v);
    }
}

/// A new output of `len` floats written by `fill`, without zero-filling it first (a step's
/// outputs are tens of MB, and a recycled allocation would be cleared for nothing).
///
/// # Safety
/// `fill` must write every element of the slice it gets.
pub(crate) unsafe fn output(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: the capacity is `len`, and the caller guarantees `fill` initialized all of it.
    unsafe { v.set_len(len) };
    v
}

/// A [`scratch`] buffer that goes back to the pool when dropped: for per-call work buffers,
/// which as fresh allocations of a few hundred KB were cleared (and, past the allocator's
/// large-object size, page-faulted in again) on every call.
pub(crate) struct Pooled(pub(crate) Vec<f32>);

impl Pooled {
    /// `len` floats of unspecified contents.
    pub(crate) fn new(len: usize) -> Self {
        Pooled(scratch(len))
    }

    /// The buffer, no longer returned to the pool on drop (the caller [`recycle`]s it).
    pub(crate) fn into_inner(mut self) -> Vec<f32> {
        std::mem::take(&mut self.0)
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        recycle(std::mem::take(&mut self.0));
    }
}

/// The four dims of an NCHW tensor, or an error naming the tensor.
pub(crate) fn dims4(t: &Tensor, op: &str, what: &str) -> Result<(usize, usize, usize, usize)> {
    match t.dims() {
        &[a, b, c, d] => Ok((a, b, c, d)),
        d => bail!("{op}: {what} must have rank 4, got shape {d:?}"),
    }
}

/// The f32 data of a contiguous storage, or an error (custom ops receive whatever layout the
/// caller built, so this is re-checked inside `cpu_fwd`).
pub(crate) fn slice_f32<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
    what: &str,
) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        other => bail!("{op}: {what} must be f32, got {:?}", other.dtype()),
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op}: {what} must be contiguous"),
    }
}

/// Which vector extension the kernels were dispatched to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Simd {
    Avx512,
    Avx2,
    Base,
}

/// The best extension this CPU has, detected once at runtime.
pub(crate) fn simd() -> Simd {
    static LEVEL: OnceLock<Simd> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                return Simd::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Simd::Avx2;
            }
        }
        Simd::Base
    })
}

/// Defines `$name(args)` that runs the `#[inline(always)]` generic kernel `$generic::<FMA>` in a
/// function compiled for the best available extension, so LLVM vectorizes the same loops to
/// AVX-512 or AVX2 with FMA, or to baseline SSE2 (without FMA, where `mul_add` is a libm call).
macro_rules! simd_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident = $generic:ident ( $($arg:ident : $ty:ty),* $(,)? )) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,fma")]
                fn avx512($($arg: $ty),*) {
                    $generic::<true>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    $generic::<true>($($arg),*)
                }
                match $crate::ops::common::simd() {
                    // SAFETY: `simd()` detected avx512f and fma on this CPU at runtime.
                    $crate::ops::common::Simd::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: `simd()` detected avx2 and fma on this CPU at runtime.
                    $crate::ops::common::Simd::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::ops::common::Simd::Base => {}
                }
            }
            $generic::<false>($($arg),*)
        }
    };
}
pub(crate) use simd_dispatch;

/// `a * b + c`, fused when the caller was compiled with FMA.
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Dot product with 16 independent accumulators, so LLVM vectorizes it without reassociating.
/// (64 accumulators would break the FMA latency chain, but change the rounding of the
/// depthwise weight gradient, which the trained-model tests' measured bounds depend on.) The
/// depthwise kernel interleaves several such dots (`depthwise::tap_dots`); this single one is
/// the reference its test compares with bit for bit.
#[cfg(test)]
#[inline(always)]
pub(crate) fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..16 {
            acc[i] = madd::<FMA>(x[i], y[i], acc[i]);
        }
    }
    let mut tail = 0f32;
    for (&x, &y) in ca.remainder().iter().zip(cb.remainder()) {
        tail = madd::<FMA>(x, y, tail);
    }
    acc.iter().sum::<f32>() + tail
}

/// Sum with 16 independent accumulators (vectorizable, and more accurate than a serial sum).
#[inline(always)]
pub(crate) fn sum(a: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = a.chunks_exact(16);
    for x in &mut chunks {
        for i in 0..16 {
            acc[i] += x[i];
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}
