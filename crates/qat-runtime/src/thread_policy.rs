//! How many threads one op of a run uses: an op too small to pay for a fork-join runs on the
//! calling thread. Every kernel gives the same bytes for any thread count, so this only
//! moves time.
//!
//! Measured on this project's 2-core AVX-512 VNNI VM (`qat-bench model --per-op`, MobileNetV2
//! 28×28 w0.5, batch 1, best of 200 calls): split over 2 threads, every depthwise op (1.4–8.8
//! µs alone) took 1.10–1.67× its 1-thread time and the stem 1.14×; GEMMs of 2–16 µs gained
//! nothing; the whole batch-1 model ran 0.179 ms at 1 thread and 0.210 ms at 2 (on a Xeon
//! host 0.172 vs 0.213–0.227 ms). At batch 32 the smallest op is 30 µs and 2 threads nearly
//! halve the model (5.45 → 2.97 ms). So an op gets one thread per [`MIN_NS_PER_THREAD`]
//! (or the model's `with_min_split_ns`) of estimated single-thread time, from per-kernel
//! throughputs measured in the same runs. The model uses that per call: when any op of a
//! call would split, every op does (waking a parked worker for the big ops only measured
//! slower than keeping the pool busy); when none would, the call runs on the caller's thread.

use crate::exec::Kernel;
use crate::op::Node;
use crate::profile::macs_per_sample;
use crate::Shape;

/// Estimated single-thread nanoseconds one more thread must take over before an op splits.
pub(crate) const MIN_NS_PER_THREAD: u64 = 10_000;

/// Work units (MACs or elements) per nanosecond of one thread, by kernel kind, from the
/// batch-1 per-op figures: depthwise 46–77 MAC/ns, the largest GEMMs ~200 (3.3 M MACs of the
/// last 1×1 conv in 15.5 µs, no faster on 2 threads), skip adds ~6 elements/ns.
const DEPTHWISE_PER_NS: u64 = 60;
const GEMM_PER_NS: u64 = 200;
const ELEMENTWISE_PER_NS: u64 = 6;
const FLOAT_PER_NS: u64 = 20;

/// Threads an elementwise pass over `elements` bytes / floats uses, out of `threads`.
pub(crate) fn elementwise_threads(elements: usize, threads: usize, min_ns: u64) -> usize {
    parts(elements as u64 / ELEMENTWISE_PER_NS, threads, min_ns)
}

/// Threads step `kernel` (node `node`, input `in_shape`) uses on a batch of `batch`, out of
/// `threads`, at least `min_ns` estimated nanoseconds per thread.
pub(crate) fn step_threads(
    kernel: &Kernel,
    node: &Node,
    in_shape: Shape,
    batch: usize,
    threads: usize,
    min_ns: u64,
) -> usize {
    if threads <= 1 {
        return 1;
    }
    let n = batch as u64;
    let macs = n.saturating_mul(macs_per_sample(&node.op, node.shape));
    let in_elems = n.saturating_mul((in_shape.c * in_shape.h * in_shape.w) as u64);
    let ns = match kernel {
        Kernel::Depthwise(_) | Kernel::Stem(_) => macs / DEPTHWISE_PER_NS,
        Kernel::ConvGemm { .. } | Kernel::Linear(_) => macs / GEMM_PER_NS,
        Kernel::FloatMatrix => macs / FLOAT_PER_NS,
        Kernel::Quantize(_)
        | Kernel::Dequantize(_)
        | Kernel::Add(_)
        | Kernel::Pool { .. }
        | Kernel::FloatRelu
        | Kernel::FloatHardswish
        | Kernel::FloatAdd
        | Kernel::Flatten => in_elems / ELEMENTWISE_PER_NS,
    };
    parts(ns, threads, min_ns)
}

/// One thread per `min_ns` of `ns` (all `threads` when `min_ns` is 0), at least 1, at most
/// `threads`.
fn parts(ns: u64, threads: usize, min_ns: u64) -> usize {
    if min_ns == 0 {
        return threads.max(1);
    }
    let want = (ns / min_ns).max(1);
    usize::try_from(want)
        .map_or(threads, |w| w.min(threads))
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_grow_with_work_and_stop_at_threads() {
        let m = MIN_NS_PER_THREAD;
        assert_eq!(parts(0, 4, m), 1);
        assert_eq!(parts(m - 1, 4, m), 1);
        assert_eq!(parts(2 * m, 4, m), 2);
        assert_eq!(parts(100 * m, 4, m), 4);
        assert_eq!(parts(u64::MAX, 3, m), 3);
        assert_eq!(parts(u64::MAX, 0, m), 1);
        // 0 splits everything.
        assert_eq!(parts(0, 3, 0), 3);
        assert_eq!(parts(0, 0, 0), 1);
        // 28×28×16 bytes (a batch-1 skip add, ~2 µs) stay on one thread; batch 32 splits.
        assert_eq!(elementwise_threads(28 * 28 * 16, 2, m), 1);
        assert_eq!(elementwise_threads(32 * 28 * 28 * 16, 2, m), 2);
    }
}
