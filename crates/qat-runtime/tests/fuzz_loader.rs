//! Fuzzing the loader with a proptest mutator: byte flips anywhere or in the header,
//! truncations, JSON edits (numbers, names, spans) and tensor edits (dtype, shape, removal) of
//! a valid file. Every input must give `Ok` or `Err`, never a panic; a model that loads must
//! also run (or refuse to) without panicking.

mod common;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use qat_runtime::format::METADATA_KEY;
use qat_runtime::{ModelBuilder, ModelOptions, QuantizedModel, Shape};
use rand::{Rng, SeedableRng};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

fn split(bytes: &[u8]) -> (String, Tensors) {
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    let json = meta.metadata().as_ref().unwrap()[METADATA_KEY].clone();
    let st = SafeTensors::deserialize(bytes).unwrap();
    let mut t: Tensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    (json, t)
}

/// Re-assemble; `None` when safetensors itself refuses the edited tensors (inconsistent
/// dtype / shape / byte count), which is not a loader input.
fn join(json: &str, tensors: &Tensors) -> Option<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|(n, d, s, b)| {
            safetensors::tensor::TensorView::new(*d, s.clone(), b)
                .ok()
                .map(|v| (n.clone(), v))
        })
        .collect::<Option<Vec<_>>>()?;
    let meta = HashMap::from([(METADATA_KEY.to_string(), json.to_string())]);
    safetensors::serialize(views, Some(meta)).ok()
}

/// A valid file covering every op kind: the small model plus a float island.
fn seed_file() -> Vec<u8> {
    let s = small(31);
    let mut b = ModelBuilder::new();
    b.input("x", s.shape, s.input).unwrap();
    b.conv2d("conv1", "x", s.conv1.clone()).unwrap();
    b.conv2d("dw", "conv1", s.dw.clone()).unwrap();
    b.conv2d("pw", "dw", s.pw.clone()).unwrap();
    b.conv2d("skip", "conv1", s.skip.clone()).unwrap();
    b.add("add", "pw", "skip", s.add_q, qat_runtime::Activation::Relu)
        .unwrap();
    b.dequantize("add_f", "add").unwrap();
    b.float_conv1x1("fpw", "add_f", 4, vec![0.25; 32], Some(vec![0.1; 4]))
        .unwrap();
    b.float_hardswish("hs", "fpw").unwrap();
    b.float_relu("relu", "hs").unwrap();
    b.float_add("fadd", "relu", "hs").unwrap();
    b.quantize("requant", "fadd", q(0.05, 7)).unwrap();
    b.global_avg_pool("pool", "requant", None).unwrap();
    b.flatten("flat", "pool").unwrap();
    b.dequantize("pool_f", "flat").unwrap();
    b.float_linear("head", "pool_f", 3, vec![0.5; 12], None)
        .unwrap();
    let m = b.build("head").unwrap();
    let _ = Shape::new(1, 1, 1);
    m.to_bytes().unwrap()
}

const NUMBERS: [&str; 14] = [
    "-1",
    "0",
    "1",
    "2",
    "3",
    "7",
    "255",
    "256",
    "65536",
    "1e9",
    "1e300",
    "-1e-30",
    "0.5",
    "18446744073709551615",
];

fn mutate_json(json: &str, r: &mut impl Rng) -> String {
    let b = json.as_bytes();
    match r.gen_range(0..5) {
        // Replace one number token.
        0 => {
            let starts: Vec<usize> = (0..b.len())
                .filter(|&i| {
                    (b[i].is_ascii_digit() || b[i] == b'-')
                        && (i == 0 || !b[i - 1].is_ascii_alphanumeric() && b[i - 1] != b'.')
                })
                .collect();
            if starts.is_empty() {
                return json.to_string();
            }
            let s = starts[r.gen_range(0..starts.len())];
            let mut e = s + 1;
            while e < b.len() && (b[e].is_ascii_digit() || b".eE+-".contains(&b[e])) {
                e += 1;
            }
            format!(
                "{}{}{}",
                &json[..s],
                NUMBERS[r.gen_range(0..NUMBERS.len())],
                &json[e..]
            )
        }
        // Replace one string token by another from the same JSON (names, op kinds, keys).
        1 => {
            let strings: Vec<(usize, usize)> = {
                let mut v = Vec::new();
                let mut i = 0;
                while i < b.len() {
                    if b[i] == b'"' {
                        let j = i + 1 + b[i + 1..].iter().position(|&c| c == b'"').unwrap_or(0);
                        v.push((i, j + 1));
                        i = j + 1;
                    } else {
                        i += 1;
                    }
                }
                v
            };
            let (s, e) = strings[r.gen_range(0..strings.len())];
            let (s2, e2) = strings[r.gen_range(0..strings.len())];
            format!("{}{}{}", &json[..s], &json[s2..e2], &json[e..])
        }
        // Delete a span.
        2 => {
            let s = r.gen_range(0..b.len());
            let e = (s + r.gen_range(1..40)).min(b.len());
            let (s, e) = (floor(json, s), floor(json, e));
            format!("{}{}", &json[..s], &json[e..])
        }
        // Duplicate an op (name collisions, re-definitions).
        3 => {
            let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
            let ops = v["ops"].as_array_mut().unwrap();
            let i = r.gen_range(0..ops.len());
            let op = ops[i].clone();
            let j = r.gen_range(0..=ops.len());
            ops.insert(j, op);
            v.to_string()
        }
        // Reorder two ops (use before definition).
        _ => {
            let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
            let ops = v["ops"].as_array_mut().unwrap();
            let (i, j) = (r.gen_range(0..ops.len()), r.gen_range(0..ops.len()));
            ops.swap(i, j);
            v.to_string()
        }
    }
}

fn floor(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn mutate(
    seed_bytes: &[u8],
    json: &str,
    tensors: &Tensors,
    kind: u8,
    seed: u64,
) -> Option<Vec<u8>> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let mut bytes = seed_bytes.to_vec();
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    match kind {
        // Byte flips anywhere.
        0 => {
            for _ in 0..r.gen_range(1..8) {
                let i = r.gen_range(0..bytes.len());
                bytes[i] ^= r.gen_range(1..=255u8);
            }
            Some(bytes)
        }
        // Byte flips in the header (length prefix and JSON).
        1 => {
            for _ in 0..r.gen_range(1..4) {
                let i = r.gen_range(0..header_end);
                bytes[i] ^= r.gen_range(1..=255u8);
            }
            Some(bytes)
        }
        // Truncation.
        2 => {
            bytes.truncate(r.gen_range(0..bytes.len()));
            Some(bytes)
        }
        // JSON edits, file re-assembled consistently.
        3 => join(&mutate_json(json, &mut r), tensors),
        // Tensor edits: dtype, shape, removal, data flips (NaN / 0 / negative scales).
        _ => {
            let mut t = tensors.clone();
            let i = r.gen_range(0..t.len());
            match r.gen_range(0..4) {
                0 => {
                    t[i].1 = [Dtype::I8, Dtype::U8, Dtype::I32, Dtype::F32, Dtype::F16]
                        [r.gen_range(0..5)]
                }
                1 => {
                    let n: usize = t[i].2.iter().product();
                    t[i].2 = if r.gen_bool(0.5) { vec![n] } else { vec![1, n] };
                }
                2 => {
                    t.remove(i);
                }
                _ => {
                    let len = t[i].3.len();
                    let j = r.gen_range(0..len);
                    t[i].3[j] ^= r.gen_range(1..=255u8);
                }
            }
            join(json, &t)
        }
    }
}

#[test]
fn loader_never_panics_on_mutated_files() {
    let seed_bytes = seed_file();
    let (json, tensors) = split(&seed_bytes);
    // The seed itself loads and runs.
    let m = QuantizedModel::from_bytes(&seed_bytes, ModelOptions::default()).unwrap();
    m.run(&vec![0.5; m.input_len(1).unwrap()], 1).unwrap();

    // QAT_FUZZ_CASES runs a longer campaign.
    let cases: u32 = std::env::var("QAT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let (ok, err, ran, skipped) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let start = std::time::Instant::now();
    runner
        .run(&(0u8..5, any::<u64>()), |(kind, seed)| {
            let Some(bytes) = mutate(&seed_bytes, &json, &tensors, kind, seed) else {
                skipped.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            };
            match QuantizedModel::from_bytes(&bytes, ModelOptions::default()) {
                Ok(m) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                    // Run models of a sane size; the result may be Ok or Err, never a panic.
                    if let Ok(n) = m.input_len(1) {
                        if n <= 1 << 16 {
                            let _ = m.run(&vec![0.25; n], 1);
                            ran.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Err(e) => {
                    err.fetch_add(1, Ordering::Relaxed);
                    if e.to_string().is_empty() {
                        return Err(TestCaseError::fail("empty error message"));
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    let (ok, err) = (ok.into_inner(), err.into_inner());
    eprintln!(
        "loader fuzz: {cases} cases ({} mutated files, {} not re-assemblable), {ok} loaded ({} ran), {err} refused, {:.2} s",
        ok + err,
        skipped.into_inner(),
        ran.into_inner(),
        start.elapsed().as_secs_f64()
    );
    assert!(
        err > cases as usize / 2,
        "most mutations should be refused ({err})"
    );
}
