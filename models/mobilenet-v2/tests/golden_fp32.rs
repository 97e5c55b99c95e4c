//! fp32 parity with PyTorch on every `mobilenet_v2_*.safetensors` golden file: build the
//! architecture from the file's metadata `config`, load its `fp32/*` state dict under
//! torchvision's names, and compare eval logits (unfused and fused) with `logits_fp32`.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use mobilenet_v2::{build, Activation, MobileNetV2Config};
use qat_graph::{GraphModule, OpsPath};
use qat_testutil::GoldenFile;
use serde_json::Value;

const TOL: f32 = 1e-4;

/// The architecture described by a golden file's metadata `config`.
fn config_from_meta(cfg: &Value) -> MobileNetV2Config {
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

fn tensor(f: &GoldenFile, name: &str) -> Tensor {
    let t = f.tensor(name);
    Tensor::from_vec(t.f32(), t.shape.as_slice(), &Device::Cpu).unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
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

#[test]
fn fp32_logits_match_pytorch() {
    let files = GoldenFile::all_with_prefix("mobilenet_v2_", "fp32_logits_match_pytorch");
    for f in &files {
        let meta: Value = serde_json::from_str(f.meta("config").expect("metadata config")).unwrap();
        let cfg = config_from_meta(&meta);
        let graph = build(&cfg).unwrap();
        let model = GraphModule::new(graph, 0, &Device::Cpu).unwrap();

        // The file's fp32 state dict must be exactly our graph's (names, shapes).
        let sd: HashMap<String, Tensor> = f
            .names()
            .into_iter()
            .filter_map(|n| {
                let k = n.strip_prefix("fp32/")?.to_string();
                let t = f.tensor(&n);
                let v = if k.ends_with("num_batches_tracked") {
                    Tensor::new(t.values[0] as i64, &Device::Cpu).unwrap()
                } else {
                    Tensor::from_vec(t.f32(), t.shape.as_slice(), &Device::Cpu).unwrap()
                };
                Some((k, v))
            })
            .collect();
        model.load_state_dict(&sd).unwrap();
        // Loading straight from the file through the prefix gives the same parameters.
        let direct = GraphModule::new(build(&cfg).unwrap(), 1, &Device::Cpu).unwrap();
        direct.load_safetensors_prefixed(&f.path, "fp32/").unwrap();

        // The reference candle ops too (the default is the fast custom-op path).
        let mut reference = GraphModule::new(build(&cfg).unwrap(), 2, &Device::Cpu).unwrap();
        reference.load_state_dict(&sd).unwrap();
        reference.set_ops_path(OpsPath::Candle);

        let x = tensor(f, "input");
        let want = tensor(f, "logits_fp32");
        for (what, m) in [
            ("unfused", &model),
            ("from file", &direct),
            ("candle ops", &reference),
        ] {
            let y = m.forward_t(&x, false).unwrap();
            let d = max_abs(&y, &want);
            println!("{}: {what} max |Δ| = {d:e}", f.path.display());
            assert!(
                d <= TOL,
                "{}: {what} logits differ by {d}",
                f.path.display()
            );
        }
        let fused = model.fused().unwrap();
        assert!(fused.graph().len() < model.graph().len());
        let d = max_abs(&fused.forward_t(&x, false).unwrap(), &want);
        println!("{}: fused max |Δ| = {d:e}", f.path.display());
        assert!(d <= TOL, "{}: fused logits differ by {d}", f.path.display());
    }
}
