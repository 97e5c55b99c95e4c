//! After the first call with a batch size, `run_into` / `run_u8_into` allocate nothing, at 1
//! and 2 threads, on a model holding every op kind and every depthwise kernel variant: a
//! counting global allocator (all threads) checks it.
//!
//! What is counted: every allocation on any thread of the process while the calls run — our
//! code, qat-kernels and rayon alike (rayon's pool threads start, and allocate their own state,
//! when the model is built, before counting). One allocation is rayon's, not ours, and not
//! per call: the first time a pool thread steals work, crossbeam-epoch registers that thread
//! (`Collector::register`, a heap `Local`), once per thread, whenever that first steal
//! happens (traced with a backtrace-printing allocator). At 2 threads the test allows at most
//! two allocations per pool thread over all the calls, and none at 1 thread. The binary has its own `main` (`harness =
//! false`): libtest's main thread allocates while it waits for tests, which a process-wide
//! count would see.

mod common;

use common::*;
use qat_runtime::{
    Activation, Bias, LinearParams, ModelBuilder, ModelOptions, QuantizedModel, Shape,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts (an atomic add, no allocation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCS.load(Ordering::SeqCst);
    f();
    ALLOCS.load(Ordering::SeqCst) - before
}

/// Every op kind: k×k conv (im2col), grouped 1×1, direct 1×1, depthwise through each kernel
/// variant (64-channel 3×3 at stride 1 and 2, 5×5 quad rows, 3×3 rows on a narrow input),
/// add, global average pool, float island, quantize, flatten, linear, dequantize.
fn model_of_every_op(threads: usize) -> QuantizedModel {
    let mut r = rng(61);
    let mut b = ModelBuilder::new();
    let relu6 = Activation::Relu6;
    b.input("x", Shape::new(3, 8, 32), q(0.02, 128)).unwrap();
    let c1 = conv(
        &mut r,
        3,
        72,
        3,
        1,
        1,
        1,
        Bias::None,
        q(0.05, 0),
        Activation::Relu,
    );
    b.conv2d("c1", "x", c1).unwrap();
    let dw1 = conv(&mut r, 72, 72, 3, 1, 1, 72, Bias::None, q(0.04, 0), relu6);
    b.conv2d("dw_s1", "c1", dw1).unwrap();
    let dw2 = conv(&mut r, 72, 72, 3, 2, 1, 72, Bias::None, q(0.04, 0), relu6);
    b.conv2d("dw_s2", "dw_s1", dw2).unwrap();
    let pw = conv(
        &mut r,
        72,
        8,
        1,
        1,
        0,
        1,
        Bias::None,
        q(0.05, 9),
        Activation::None,
    );
    b.conv2d("pw", "dw_s2", pw).unwrap();
    let g2 = conv(
        &mut r,
        72,
        8,
        1,
        2,
        0,
        2,
        Bias::None,
        q(0.05, 9),
        Activation::None,
    );
    b.conv2d("grouped", "dw_s1", g2).unwrap();
    b.add("add", "pw", "grouped", q(0.07, 3), Activation::Relu)
        .unwrap();
    let dw5 = conv(
        &mut r,
        8,
        8,
        5,
        1,
        2,
        8,
        Bias::None,
        q(0.04, 7),
        Activation::None,
    );
    b.conv2d("dw_5x5", "add", dw5).unwrap();
    let dw3 = conv(
        &mut r,
        8,
        8,
        3,
        2,
        1,
        8,
        Bias::None,
        q(0.04, 7),
        Activation::None,
    );
    b.conv2d("dw_rows", "dw_5x5", dw3).unwrap();
    b.dequantize("f", "dw_rows").unwrap();
    b.float_conv1x1("fc1", "f", 4, vec![0.1; 32], None).unwrap();
    b.float_hardswish("hs", "fc1").unwrap();
    b.quantize("q", "hs", q(0.03, 20)).unwrap();
    b.global_avg_pool("pool", "q", Some(q(0.02, 5))).unwrap();
    b.flatten("flat", "pool").unwrap();
    b.linear(
        "fc",
        "flat",
        LinearParams {
            out_features: 5,
            weight: weights(&mut r, 20),
            weight_scales: vec![0.01; 5],
            bias: Bias::None,
            output: q(0.1, 100),
            activation: Activation::None,
        },
    )
    .unwrap();
    b.dequantize("y", "fc").unwrap();
    // Every op splits at 2 threads (the default would keep ops this small on one thread).
    b.build_with("y", ModelOptions { isa: None, threads })
        .unwrap()
        .with_min_split_ns(0)
}

fn check_repeated_calls(threads: usize) {
    let m = model_of_every_op(threads);
    let kernels = m.kernel_names();
    let batch = 4;
    let x = inputs(&mut rng(62), batch * 3 * 8 * 32, 3.0);
    let mut out = vec![0f32; m.output_len(batch).unwrap()];
    let first = allocations(|| m.run_into(&x, batch, &mut out).unwrap());
    assert!(first > 0, "the first call allocates the arena");
    let want = out.clone();
    let mut counts = Vec::new();
    for _ in 0..20 {
        counts.push(allocations(|| m.run_into(&x, batch, &mut out).unwrap()));
        assert_eq!(out, want);
    }
    let xq = vec![7u8; batch * 3 * 8 * 32];
    m.run_u8_into(&xq, batch, &mut out).unwrap();
    for _ in 0..20 {
        counts.push(allocations(|| m.run_u8_into(&xq, batch, &mut out).unwrap()));
    }
    println!(
        "threads {threads}: first call {first} allocations, then {counts:?}; kernels {kernels:?}"
    );
    let (total, calls_allocating) = (
        counts.iter().sum::<usize>(),
        counts.iter().filter(|&&n| n > 0).count(),
    );
    // One registration per pool thread at most (see the module doc); none without a pool.
    let (max_total, max_calls) = if threads > 1 {
        (2 * threads, threads)
    } else {
        (0, 0)
    };
    assert!(
        total <= max_total && calls_allocating <= max_calls,
        "threads {threads}: repeated calls allocated {counts:?}"
    );
}

fn main() {
    check_variants();
    check_repeated_calls(1);
    check_repeated_calls(2);
    println!("no_alloc: ok");
}

/// The model reaches every depthwise kernel variant on AVX-512 VNNI.
fn check_variants() {
    let m = model_of_every_op(1);
    let names = m.kernel_names();
    let k = |n: &str| names.iter().find(|(a, _)| a == n).unwrap().1.clone();
    if m.isa() == qat_runtime::Isa::Avx512Vnni {
        assert_eq!(k("dw_s1"), "dwconv_avx512vnni_dw3x3_c64");
        assert_eq!(k("dw_s2"), "dwconv_avx512vnni_dw3x3_c64");
        assert_eq!(k("dw_5x5"), "dwconv_avx512vnni_quad");
        assert_eq!(k("dw_rows"), "dwconv_avx512vnni_rows");
    }
    assert!(k("pool").starts_with("elementwise_"));
}
