//! The small model end to end against the scalar reference (exact on every u8 value), across
//! ISAs, thread counts, concurrent callers and both entry points.

mod common;

use common::*;
use qat_runtime::{Isa, ModelOptions, ValueData};

#[test]
fn small_model_matches_scalar_reference_exactly() {
    let s = small(1);
    let model = build_small(&s, ModelOptions::default());
    let n = 3;
    let x = inputs(&mut rng(2), n * 3 * 11 * 9, 2.5);
    let want = reference_small(&s, &x, n);
    let trace = model.run_traced(&x, n).unwrap();
    for (name, r) in &want {
        let got = trace.iter().find(|t| t.name == *name).unwrap();
        match &got.data {
            ValueData::U8 { data, qparams } => {
                assert_eq!(*qparams, r.q, "{name} qparams");
                let diff = data.iter().zip(&r.data).filter(|(a, b)| a != b).count();
                assert_eq!(diff, 0, "{name}: {diff} of {} u8 values differ", data.len());
            }
            ValueData::F32(_) => panic!("{name} should be u8"),
        }
    }
    // The reference is not trivially constant: the layers' outputs vary.
    for (name, r) in &want {
        let distinct: std::collections::HashSet<u8> = r.data.iter().copied().collect();
        assert!(distinct.len() > 2, "{name} is degenerate: {distinct:?}");
    }
    let logits = model.run(&x, n).unwrap();
    let fc = &want.iter().find(|(n, _)| *n == "fc").unwrap().1;
    assert_eq!(logits, ref_dequant(fc));
    assert_eq!(logits.len(), n * 10);
}

#[test]
fn every_isa_gives_identical_outputs() {
    let s = small(3);
    let x = inputs(&mut rng(4), 5 * 3 * 11 * 9, 3.0);
    let scalar = build_small(
        &s,
        ModelOptions {
            isa: Some(Isa::Scalar),
            threads: 1,
        },
    );
    let want = scalar.run_traced(&x, 5).unwrap();
    let isas = Isa::supported();
    eprintln!("ISAs tested: {isas:?}");
    for isa in isas {
        let m = build_small(
            &s,
            ModelOptions {
                isa: Some(isa),
                threads: 1,
            },
        );
        assert_eq!(m.isa(), isa);
        assert_eq!(
            m.run_traced(&x, 5).unwrap(),
            want,
            "{isa} differs from scalar"
        );
    }
    let best = build_small(&s, ModelOptions::default());
    assert_eq!(best.isa(), qat_kernels::isa::active());
    assert_eq!(best.run_traced(&x, 5).unwrap(), want);
}

#[test]
fn thread_counts_give_identical_outputs() {
    let s = small(5);
    // A larger batch so that the kernels do split the work.
    let n = 16;
    let x = inputs(&mut rng(6), n * 3 * 11 * 9, 3.0);
    let one = build_small(
        &s,
        ModelOptions {
            isa: None,
            threads: 1,
        },
    );
    let want = one.run_traced(&x, n).unwrap();
    for threads in [2, 3] {
        // Split every op (the default keeps ops this small on one thread), and the default.
        for min_split_ns in [0, 10_000] {
            let m = build_small(&s, ModelOptions { isa: None, threads })
                .with_min_split_ns(min_split_ns);
            assert_eq!(m.threads(), threads);
            assert_eq!(
                m.run_traced(&x, n).unwrap(),
                want,
                "{threads} threads (min split {min_split_ns} ns) differ"
            );
        }
    }
}

#[test]
fn one_model_serves_concurrent_callers() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<qat_runtime::QuantizedModel>();
    let s = small(7);
    let model = build_small(
        &s,
        ModelOptions {
            isa: None,
            threads: 2,
        },
    );
    let batches = [1usize, 2, 4, 7];
    let xs: Vec<Vec<f32>> = batches
        .iter()
        .enumerate()
        .map(|(i, &n)| inputs(&mut rng(100 + i as u64), n * 3 * 11 * 9, 3.0))
        .collect();
    let want: Vec<Vec<f32>> = batches
        .iter()
        .zip(&xs)
        .map(|(&n, x)| model.run(x, n).unwrap())
        .collect();
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (model, xs, want) = (&model, &xs, &want);
            scope.spawn(move || {
                for round in 0..20 {
                    let i = (t + round) % batches.len();
                    assert_eq!(model.run(&xs[i], batches[i]).unwrap(), want[i]);
                }
            });
        }
    });
}

#[test]
fn buffers_are_planned_once_per_batch_size() {
    let s = small(8);
    let model = build_small(&s, ModelOptions::default());
    let x = inputs(&mut rng(9), 2 * 3 * 11 * 9, 3.0);
    assert_eq!(model.arena_bytes(), 0);
    let mut out = vec![0f32; model.output_len(2).unwrap()];
    model.run_into(&x, 2, &mut out).unwrap();
    let after_first = model.arena_bytes();
    assert!(after_first > 0);
    for _ in 0..5 {
        let before = out.clone();
        model.run_into(&x, 2, &mut out).unwrap();
        assert_eq!(out, before);
        assert_eq!(
            model.arena_bytes(),
            after_first,
            "a repeated call allocated new buffers"
        );
    }
    // A second batch size gets its own arena; the first is kept.
    model.run(&x[..3 * 11 * 9], 1).unwrap();
    assert!(model.arena_bytes() > after_first);
    // Slots are shared between values: fewer bytes than one buffer per value would take
    // (values + the conv1 im2col matrix + the NCHW staging buffer, for batch 2).
    let input_elems = 3 * 11 * 9;
    let values: usize = input_elems
        + model
            .ops()
            .iter()
            .filter(|n| n.op.kind() != "flatten")
            .map(|n| {
                let e = n.shape.c * n.shape.h * n.shape.w;
                if matches!(n.ty, qat_runtime::ValueType::F32) {
                    4 * e
                } else {
                    e
                }
            })
            .sum::<usize>();
    let cols = 11 * 9 * 27 + 5 * 5 * 4;
    let one_per_value = 2 * (values + cols.max(11 * 9 * 27) + input_elems);
    assert!(
        after_first < one_per_value,
        "{after_first} ≥ {one_per_value}"
    );
}

#[test]
fn u8_entry_point_matches_f32_entry_point() {
    let s = small(10);
    let model = build_small(&s, ModelOptions::default());
    let n = 2;
    let x = inputs(&mut rng(11), n * 3 * 11 * 9, 3.0);
    let xq = ref_quantize_nchw(&x, n, s.shape, s.input);
    assert_eq!(
        model.run_u8(&xq.data, n).unwrap(),
        model.run(&x, n).unwrap()
    );
}

#[test]
fn general_convolutions_match_reference() {
    use qat_runtime::{Activation, Bias, ModelBuilder, Shape};
    let mut r = rng(12);
    // (ci, co, k, stride, pad, dilation, groups, h, w)
    let cases = [
        (3, 5, 3, 1, 1, 1, 1, 7, 6),
        (4, 6, 3, 2, 0, 1, 2, 9, 9),
        (6, 6, 3, 1, 2, 2, 3, 8, 7),
        (5, 5, 5, 2, 2, 1, 5, 9, 8),    // depthwise 5×5 s2
        (16, 16, 3, 1, 1, 1, 16, 5, 5), // depthwise 3×3 s1
        (7, 9, 1, 1, 0, 1, 1, 4, 3),    // direct 1×1
        (7, 9, 2, 1, 1, 1, 1, 4, 3),    // even kernel
        (2, 4, 1, 3, 1, 1, 2, 7, 7),    // 1×1 padded, strided, grouped
        // Few input channels: im2col through staged rows (runs of ≤ 16 bytes).
        (1, 16, 3, 1, 1, 1, 1, 28, 28), // the 28×28 stem
        (3, 8, 3, 2, 1, 1, 1, 15, 14),  // the 224 stem's shape, odd sizes
        (2, 5, 5, 2, 2, 1, 1, 9, 11),   // 10-byte runs, padding 2
        (1, 4, 3, 1, 0, 1, 1, 6, 5),    // unpadded
        (1, 3, 7, 1, 3, 1, 1, 5, 5),    // kernel wider than the image
        (1, 3, 3, 2, 1, 2, 1, 9, 9),    // dilated: the general path
    ];
    let mut stem_runs = 0;
    for (i, &(ci, co, k, st, p, d, g, h, w)) in cases.iter().enumerate() {
        let mut params = conv(
            &mut r,
            ci,
            co,
            k,
            st,
            p,
            g,
            Bias::I32(vec![77; co]),
            q(0.07, 50),
            Activation::Relu6,
        );
        params.dilation = (d, d);
        let inq = q(0.03, 200);
        let mut b = ModelBuilder::new();
        b.input("x", Shape::new(ci, h, w), inq).unwrap();
        b.conv2d("c", "x", params.clone()).unwrap();
        for (isa, threads) in Isa::supported().into_iter().flat_map(|i| [(i, 1), (i, 2)]) {
            let m = b
                .clone()
                .build_with(
                    "c",
                    ModelOptions {
                        isa: Some(isa),
                        threads,
                    },
                )
                .unwrap();
            if m.kernel_names()
                .iter()
                .any(|(_, k)| k.starts_with("direct_"))
            {
                stem_runs += 1;
            }
            let x = inputs(&mut rng(i as u64), 2 * ci * h * w, 4.0);
            let xq = ref_quantize_nchw(&x, 2, Shape::new(ci, h, w), inq);
            let want = ref_conv(&xq, &params);
            let got = m.run_traced(&x, 2).unwrap();
            match &got[1].data {
                ValueData::U8 { data, .. } => {
                    assert_eq!(data, &want.data, "case {i} on {isa}, {threads} threads")
                }
                ValueData::F32(_) => panic!("u8 expected"),
            }
        }
    }
    // The direct few-channel kernel took the stem shapes where the CPU has it.
    #[cfg(target_arch = "x86_64")]
    if Isa::Avx512Vnni.is_supported() && std::arch::is_x86_feature_detected!("avx512vbmi") {
        assert!(stem_runs >= 8, "direct stem kernel ran {stem_runs} times");
    }
    eprintln!("direct stem kernel: {stem_runs} runs");
}
