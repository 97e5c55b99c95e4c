//! fp32 parity with PyTorch on every `mobilenet_v2_*.safetensors` golden file: build the
//! architecture from the file's metadata `config`, load its `fp32/*` state dict under
//! torchvision's names, and compare eval logits (unfused and fused) with `logits_fp32`.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use common::{config_from_meta, max_abs, meta, tensor};
use mobilenet_v2::build;
use qat_graph::{GraphModule, OpsPath};
use qat_testutil::GoldenFile;

const TOL: f32 = 1e-4;

#[test]
fn fp32_logits_match_pytorch() {
    let files = GoldenFile::all_with_prefix("mobilenet_v2_", "fp32_logits_match_pytorch");
    for f in &files {
        let cfg = config_from_meta(&meta(f));
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
