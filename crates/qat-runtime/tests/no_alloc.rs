//! After the first call with a batch size, the runtime allocates nothing (single thread): a
//! counting global allocator checks it on a model of every op whose qat-kernels kernel is
//! allocation-free. Two kernels of qat-kernels allocate small scratch per call of their own
//! (depthwise: a pointer list; global average pool: per-sample channel sums), measured
//! separately.

mod common;

use common::*;
use qat_runtime::{Activation, Bias, ModelBuilder, ModelOptions, QuantizedModel, Shape};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only counts (per thread, no allocation itself).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

/// Every op kind but depthwise and pool: k×k conv (im2col), grouped 1×1, direct 1×1, add,
/// float island, quantize, a full-size conv down to [C, 1, 1], flatten, linear, dequantize.
fn model_of_allocation_free_kernels() -> QuantizedModel {
    let mut r = rng(61);
    let mut b = ModelBuilder::new();
    b.input("x", Shape::new(3, 9, 9), q(0.02, 128)).unwrap();
    b.conv2d(
        "c1",
        "x",
        conv(
            &mut r,
            3,
            8,
            3,
            2,
            1,
            1,
            Bias::None,
            q(0.05, 0),
            Activation::Relu,
        ),
    )
    .unwrap();
    b.conv2d(
        "c2",
        "c1",
        conv(
            &mut r,
            8,
            8,
            1,
            1,
            0,
            1,
            Bias::None,
            q(0.05, 9),
            Activation::None,
        ),
    )
    .unwrap();
    b.conv2d(
        "c3",
        "c1",
        conv(
            &mut r,
            8,
            8,
            1,
            1,
            0,
            2,
            Bias::None,
            q(0.05, 9),
            Activation::None,
        ),
    )
    .unwrap();
    b.add("add", "c2", "c3", q(0.07, 3), Activation::Relu)
        .unwrap();
    b.dequantize("f", "add").unwrap();
    b.float_conv1x1("fc1", "f", 4, vec![0.1; 32], None).unwrap();
    b.float_hardswish("hs", "fc1").unwrap();
    b.quantize("q", "hs", q(0.03, 20)).unwrap();
    b.conv2d(
        "full",
        "q",
        conv(
            &mut r,
            4,
            4,
            5,
            1,
            0,
            1,
            Bias::None,
            q(0.05, 9),
            Activation::None,
        ),
    )
    .unwrap();
    b.flatten("flat", "full").unwrap();
    b.linear(
        "fc",
        "flat",
        qat_runtime::LinearParams {
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
    b.build_with(
        "y",
        ModelOptions {
            isa: None,
            threads: 1,
        },
    )
    .unwrap()
}

#[test]
fn repeated_runs_allocate_nothing() {
    let m = model_of_allocation_free_kernels();
    let x = inputs(&mut rng(62), 4 * 3 * 9 * 9, 3.0);
    let mut out = vec![0f32; m.output_len(4).unwrap()];
    let first = allocations(|| m.run_into(&x, 4, &mut out).unwrap());
    assert!(first > 0, "the first call allocates the arena");
    let want = out.clone();
    for _ in 0..3 {
        let n = allocations(|| m.run_into(&x, 4, &mut out).unwrap());
        assert_eq!(n, 0, "a repeated call allocated {n} times");
        assert_eq!(out, want);
    }
    // The u8 entry point too.
    let xq = vec![7u8; 4 * 3 * 9 * 9];
    m.run_u8_into(&xq, 4, &mut out).unwrap();
    assert_eq!(allocations(|| m.run_u8_into(&xq, 4, &mut out).unwrap()), 0);
}

#[test]
fn kernel_internal_allocations_are_small() {
    let m = build_small(
        &small(63),
        ModelOptions {
            isa: None,
            threads: 1,
        },
    );
    for batch in [1, 2, 4] {
        let x = inputs(&mut rng(64), batch * 3 * 11 * 9, 3.0);
        let mut out = vec![0f32; m.output_len(batch).unwrap()];
        m.run_into(&x, batch, &mut out).unwrap();
        let n = allocations(|| m.run_into(&x, batch, &mut out).unwrap());
        eprintln!(
            "small model, batch {batch}: {n} allocations per call (inside qat-kernels' depthwise and pool)"
        );
        // Scratch of the kernels only (the test above shows the runtime's part is 0): the
        // same small count every call, proportional to the batch, not to the data size.
        assert_eq!(allocations(|| m.run_into(&x, batch, &mut out).unwrap()), n);
        assert!(
            n <= 8 * batch + 4,
            "{n} allocations per call at batch {batch}"
        );
    }
}
