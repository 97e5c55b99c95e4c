//! Shared setup of the MobileNetV2 golden tests: the architecture from a golden file's
//! metadata `config`, tensors from the file, and the QAT graph with PyTorch's `qat/*` state.

#![allow(dead_code)]

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use mobilenet_v2::{build, Activation, MobileNetV2Config};
use qat_graph::{prepare_qat_module, GraphModule, QConfig, QatGraph};
use qat_testutil::GoldenFile;
use serde_json::Value;

/// The architecture described by a golden file's metadata `config`.
pub fn config_from_meta(cfg: &Value) -> MobileNetV2Config {
    let num = |k: &str| {
        cfg[k]
            .as_f64()
            .unwrap_or_else(|| panic!("config.{k} missing"))
    };
    let input: Vec<usize> = cfg["input"]
        .as_array()
        .expect("config.input")
        .iter()
        .map(|v| v.as_u64().expect("input dims") as usize)
        .collect();
    assert_eq!(input.len(), 3, "config.input is [C, H, W]");
    assert_eq!(input[1], input[2], "square inputs only");
    let first_conv = cfg["first_conv"].as_str().expect("config.first_conv");
    let stride = first_conv
        .split("stride ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no stride in first_conv {first_conv:?}"));
    let activation = match cfg["activation"].as_str().expect("config.activation") {
        a if a.starts_with("ReLU6") => Activation::ReLU6,
        a if a.starts_with("ReLU") => Activation::ReLU,
        a => panic!("unknown activation {a:?}"),
    };
    let setting = cfg["inverted_residual_setting"]
        .as_array()
        .expect("config.inverted_residual_setting")
        .iter()
        .map(|row| {
            let r: Vec<usize> = row
                .as_array()
                .expect("setting row")
                .iter()
                .map(|v| v.as_u64().expect("setting value") as usize)
                .collect();
            [r[0], r[1], r[2], r[3]]
        })
        .collect();
    MobileNetV2Config {
        in_channels: input[0],
        input_size: input[1],
        width_mult: num("width_mult"),
        num_classes: num("num_classes") as usize,
        stem_stride: stride,
        inverted_residual_setting: setting,
        activation,
        ..MobileNetV2Config::imagenet(1.0, 1)
    }
}

/// The parsed metadata `config` of a golden file.
pub fn meta(f: &GoldenFile) -> Value {
    serde_json::from_str(f.meta("config").expect("metadata config")).unwrap()
}

/// A tensor of the file: i64 for counters, zero points and flags, f32 otherwise.
pub fn tensor(f: &GoldenFile, name: &str) -> Tensor {
    let t = f.tensor(name);
    let dev = &Device::Cpu;
    let int = ["num_batches_tracked", "zero_point", "_enabled"];
    if int.iter().any(|s| name.ends_with(s)) {
        let v: Vec<i64> = t.values.iter().map(|&v| v as i64).collect();
        Tensor::from_vec(v, t.shape.as_slice(), dev).unwrap()
    } else {
        Tensor::from_vec(t.f32(), t.shape.as_slice(), dev).unwrap()
    }
}

/// The state dict under `prefix` (`"fp32/"`, `"qat/"`), prefix stripped.
pub fn state_dict(f: &GoldenFile, prefix: &str) -> HashMap<String, Tensor> {
    f.names()
        .into_iter()
        .filter_map(|n| Some((n.strip_prefix(prefix)?.to_string(), tensor(f, &n))))
        .collect()
}

pub fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Top-1 class per row.
pub fn top1(t: &Tensor) -> Vec<u32> {
    t.argmax(1).unwrap().to_vec1::<u32>().unwrap()
}

/// The file's model prepared with `QConfig::default_qat()` (checked against the file's
/// `config.qconfig`) and PyTorch's fused / fake-quant `qat/*` state loaded, observers off (the
/// loaded qparams frozen, as `logits_fakequant` was computed).
pub fn qat_from_golden(f: &GoldenFile) -> QatGraph {
    let meta = meta(f);
    let qc = meta["qconfig"].to_string();
    assert!(
        qc.contains("FusedMovingAvgObsFakeQuantize")
            && qc.contains("[0,255]")
            && qc.contains("[-128,127]")
            && qc.contains("per_channel_symmetric")
            && !qc.contains("reduce_range"),
        "{}: qconfig {qc} is not QConfig::default_qat()",
        f.path.display()
    );
    let cfg = config_from_meta(&meta);
    let m = GraphModule::new(build(&cfg).unwrap(), 0, &Device::Cpu).unwrap();
    let q = prepare_qat_module(m, &QConfig::default_qat()).unwrap();
    let ignored = q.load_pytorch_qat_state(&state_dict(f, "qat/")).unwrap();
    // Only the FloatFunctional of blocks without a residual connection is unused.
    assert!(
        ignored.iter().all(|k| k.contains(".skip_add.")),
        "unexpected keys: {ignored:?}"
    );
    q.enable_observers(false);
    q
}
