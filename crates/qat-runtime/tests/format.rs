//! The file format: save → load gives identical outputs on every ISA; tampered, truncated or
//! inconsistent files are refused with a clear error.

mod common;

use common::*;
use qat_runtime::format::METADATA_KEY;
use qat_runtime::{Isa, ModelOptions, QuantizedModel, RuntimeError};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;

fn model() -> QuantizedModel {
    build_small(&small(21), ModelOptions::default())
}

fn x(n: usize) -> Vec<f32> {
    inputs(&mut rng(22), n * 3 * 11 * 9, 3.0)
}

/// The file's JSON and tensors (name → (dtype, shape, bytes)).
type Parts = (String, Vec<(String, Dtype, Vec<usize>, Vec<u8>)>);

pub fn split(bytes: &[u8]) -> Parts {
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    let json = meta.metadata().as_ref().unwrap()[METADATA_KEY].clone();
    let st = SafeTensors::deserialize(bytes).unwrap();
    let mut t: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    (json, t)
}

pub fn join(json: &str, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let meta = HashMap::from([(METADATA_KEY.to_string(), json.to_string())]);
    safetensors::serialize(views, Some(meta)).unwrap()
}

fn load(bytes: &[u8]) -> Result<QuantizedModel, RuntimeError> {
    QuantizedModel::from_bytes(bytes, ModelOptions::default())
}

fn expect_err(bytes: &[u8], needle: &str) {
    match load(bytes) {
        Ok(_) => panic!("loaded a bad file (expected an error containing {needle:?})"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(needle),
                "error {msg:?} does not mention {needle:?}"
            );
        }
    }
}

#[test]
fn save_load_gives_identical_outputs_on_every_isa() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.int8.safetensors");
    m.save(&path).unwrap();
    let want = m.run(&x(4), 4).unwrap();
    for isa in Isa::supported() {
        let loaded = QuantizedModel::load_with(
            &path,
            ModelOptions {
                isa: Some(isa),
                threads: 1,
            },
        )
        .unwrap();
        assert_eq!(loaded.run(&x(4), 4).unwrap(), want, "{isa}");
        assert_eq!(loaded.ops(), m.ops());
        assert_eq!(loaded.input(), m.input());
    }
    // Re-saving a loaded model gives the same bytes.
    let again = QuantizedModel::load(&path).unwrap().to_bytes().unwrap();
    assert_eq!(again, std::fs::read(&path).unwrap());
}

#[test]
fn save_is_atomic_and_overwrites() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    std::fs::write(&path, b"old contents").unwrap();
    m.save(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), m.to_bytes().unwrap());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "temporary files left behind: {names:?}");
    // A directory that does not exist: an I/O error, no file created.
    let bad = dir.path().join("missing").join("m.safetensors");
    assert!(matches!(m.save(&bad), Err(RuntimeError::Io(_))));
}

#[test]
fn file_holds_canonical_weights_and_versioned_json() {
    let m = model();
    let (json, tensors) = split(&m.to_bytes().unwrap());
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["format"], "candle-qat-int8");
    assert_eq!(v["version"], 1);
    assert_eq!(v["ops"].as_array().unwrap().len(), m.ops().len());
    let conv1 = tensors.iter().find(|t| t.0 == "conv1.weight").unwrap();
    assert_eq!((conv1.1, conv1.2.clone()), (Dtype::I8, vec![8, 3, 3, 3]));
    let s = small(21);
    let raw: Vec<i8> = conv1.3.iter().map(|&b| b as i8).collect();
    assert_eq!(raw, s.conv1.weight, "weights are stored unpacked, OIHW");
    let b = tensors.iter().find(|t| t.0 == "conv1.bias").unwrap();
    assert_eq!(b.1, Dtype::I32);
    let dw = tensors.iter().find(|t| t.0 == "dw.weight").unwrap();
    assert_eq!(dw.2, vec![8, 1, 3, 3]);
}

#[test]
fn refuses_truncated_files() {
    let bytes = model().to_bytes().unwrap();
    for cut in [0, 1, 7, 8, 9, 100, bytes.len() / 2, bytes.len() - 1] {
        assert!(load(&bytes[..cut]).is_err(), "truncated at {cut} loaded");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(load(&longer).is_err());
}

#[test]
fn refuses_wrong_format_or_version() {
    let (json, t) = split(&model().to_bytes().unwrap());
    expect_err(
        &join(&json.replace("\"version\":1", "\"version\":2"), &t),
        "version",
    );
    expect_err(
        &join(&json.replace("candle-qat-int8", "something-else"), &t),
        "format",
    );
    expect_err(&join(&json.replace("\"version\":1,", ""), &t), "version");
    expect_err(&join("{not json", &t), "JSON");
    let no_meta = safetensors::serialize(
        Vec::<(String, safetensors::tensor::TensorView<'_>)>::new(),
        None,
    )
    .unwrap();
    expect_err(&no_meta, "metadata");
}

#[test]
fn refuses_unknown_ops_and_fields() {
    let (json, t) = split(&model().to_bytes().unwrap());
    expect_err(
        &join(&json.replace("\"op\":\"add\"", "\"op\":\"mul\""), &t),
        "mul",
    );
    expect_err(
        &join(
            &json.replace("\"groups\":1,", "\"groups\":1,\"colour\":3,"),
            &t,
        ),
        "colour",
    );
    expect_err(
        &join(
            &json.replacen("\"name\":\"conv1\"", "\"name\":\"conv1\",\"extra\":1", 1),
            &t,
        ),
        "extra",
    );
    expect_err(
        &join(
            &json.replace("\"activation\":\"relu6\"", "\"activation\":\"gelu\""),
            &t,
        ),
        "gelu",
    );
}

#[test]
fn refuses_missing_extra_or_mistyped_tensors() {
    let (json, t) = split(&model().to_bytes().unwrap());
    let without = |name: &str| {
        t.iter()
            .filter(|x| x.0 != name)
            .cloned()
            .collect::<Vec<_>>()
    };
    expect_err(
        &join(&json, &without("pw.weight")),
        "missing tensor `pw.weight`",
    );
    expect_err(
        &join(&json, &without("fc.weight_scales")),
        "fc.weight_scales",
    );
    expect_err(&join(&json, &without("conv1.bias")), "conv1.bias");
    let mut extra = t.clone();
    extra.push(("stray".into(), Dtype::I8, vec![1], vec![0]));
    expect_err(&join(&json, &extra), "stray");
    // dtype: the i8 weight re-labelled u8.
    let mut wrong = t.clone();
    for x in wrong.iter_mut().filter(|x| x.0 == "conv1.weight") {
        x.1 = Dtype::U8;
    }
    expect_err(&join(&json, &wrong), "conv1.weight");
    // shape: same bytes, another shape.
    let mut reshaped = t.clone();
    for x in reshaped.iter_mut().filter(|x| x.0 == "conv1.weight") {
        x.2 = vec![8, 27, 1, 1];
    }
    expect_err(&join(&json, &reshaped), "conv1.weight");
    // A weight tensor too short for the op's attributes.
    let mut short = t.clone();
    for x in short.iter_mut().filter(|x| x.0 == "fc.weight") {
        x.2 = vec![10, 4];
        x.3.truncate(40);
    }
    expect_err(&join(&json, &short), "fc");
}

#[test]
fn refuses_bad_scales_and_zero_points() {
    let (json, t) = split(&model().to_bytes().unwrap());
    for bad in [f32::NAN, f32::INFINITY, 0.0, -0.01] {
        let mut tt = t.clone();
        for x in tt.iter_mut().filter(|x| x.0 == "pw.weight_scales") {
            x.3[4..8].copy_from_slice(&bad.to_le_bytes());
        }
        expect_err(&join(&json, &tt), "pw");
    }
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = v.clone();
        f(&mut v);
        join(&v.to_string(), &t)
    };
    expect_err(
        &edit(&|v| v["input"]["qparams"]["zero_point"] = 256.into()),
        "zero point",
    );
    expect_err(
        &edit(&|v| v["input"]["qparams"]["scale"] = (-1.0).into()),
        "scale",
    );
    expect_err(
        &edit(&|v| v["input"]["qparams"]["scale"] = 1e300.into()),
        "scale",
    );
    expect_err(
        &edit(&|v| v["ops"][0]["attrs"]["output"]["zero_point"] = (-1).into()),
        "conv1",
    );
    expect_err(
        &edit(&|v| v["ops"][4]["attrs"]["output"]["scale"] = 0.0.into()),
        "add",
    );
    expect_err(&edit(&|v| v["ops"][1]["attrs"]["groups"] = 3.into()), "dw");
    expect_err(
        &edit(&|v| v["ops"][1]["attrs"]["input"] = "nowhere".into()),
        "nowhere",
    );
    expect_err(&edit(&|v| v["output"] = "nowhere".into()), "nowhere");
    expect_err(
        &edit(&|v| v["input"]["shape"] = serde_json::json!([3, 100000, 100000])),
        "shape",
    );
    expect_err(
        &edit(&|v| v["ops"][0]["attrs"]["out_channels"] = 9.into()),
        "conv1",
    );
}

#[test]
fn inspect_lists_ops_shapes_qparams_and_sizes() {
    let m = model();
    let text = m.inspect();
    for needle in [
        "conv1",
        "conv2d",
        "k3x3 s2x2",
        "[8, 6, 5]",
        "global_avg_pool",
        "linear",
        "[10, 1, 1]",
        "zp 128",
        "parameters:",
        "dwconv_",
    ] {
        assert!(text.contains(needle), "inspect lacks {needle:?}:\n{text}");
    }
    let params: usize = m.ops().iter().map(|n| n.op.param_bytes()).sum();
    assert!(text.contains(&format!("parameters: {params} bytes")));
    let size = m.to_bytes().unwrap().len();
    assert!(text.contains(&format!("file size: {size} bytes")), "{text}");
    // conv1: 8·3·9 weights + 8 scales + 8 biases.
    assert_eq!(m.ops()[0].op.param_bytes(), 216 + 32 + 32);
}
