//! Safetensors state dicts: round trip with PyTorch names / dtypes, strict errors listing
//! missing, unexpected and mismatched keys, corrupt files.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use qat_graph::{BnCfg, Conv2dCfg, Graph, GraphError, GraphModule};

const CPU: Device = Device::Cpu;

fn model(seed: u64) -> GraphModule {
    let mut g = Graph::new();
    let x = g.input("x", [2, 4, 4]).unwrap();
    let c = g
        .conv2d("features.0.0", x, Conv2dCfg::new(2, 3, 3).bias(false))
        .unwrap();
    g.batch_norm2d("features.0.1", c, BnCfg::new(3)).unwrap();
    GraphModule::new(g, seed, &CPU).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn save_load_round_trip_with_pytorch_names_and_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let a = model(1);
    a.forward_t(&Tensor::ones((2, 2, 4, 4), DType::F32, &CPU).unwrap(), true)
        .unwrap();
    a.save_safetensors(&path).unwrap();
    let raw = candle_core::safetensors::load(&path, &CPU).unwrap();
    assert_eq!(raw["features.0.1.num_batches_tracked"].dtype(), DType::I64);
    assert_eq!(raw["features.0.0.weight"].dims(), &[3, 2, 3, 3]);
    assert_eq!(raw.len(), 6);
    let b = model(2);
    assert_ne!(
        flat(&b.state_dict()["features.0.0.weight"]),
        flat(&raw["features.0.0.weight"])
    );
    b.load_safetensors(&path).unwrap();
    for (k, t) in a.state_dict() {
        assert_eq!(flat(&b.state_dict()[&k]), flat(&t), "{k}");
    }
    assert_eq!(
        b.state_dict()["features.0.1.num_batches_tracked"]
            .to_scalar::<i64>()
            .unwrap(),
        1
    );
}

#[test]
fn mismatched_state_dicts_list_every_problem_and_change_nothing() {
    let m = model(1);
    let before = flat(&m.state_dict()["features.0.0.weight"]);
    let mut sd: HashMap<String, Tensor> = model(3).state_dict();
    sd.remove("features.0.1.running_var");
    sd.insert(
        "features.0.1.extra".into(),
        Tensor::zeros(3, DType::F32, &CPU).unwrap(),
    );
    sd.insert(
        "features.0.1.weight".into(),
        Tensor::zeros(4, DType::F32, &CPU).unwrap(),
    );
    let e = m.load_state_dict(&sd).unwrap_err();
    match &e {
        GraphError::StateDict {
            missing,
            unexpected,
            mismatched,
        } => {
            assert_eq!(missing, &["features.0.1.running_var"]);
            assert_eq!(unexpected, &["features.0.1.extra"]);
            assert_eq!(mismatched.len(), 1);
            assert!(mismatched[0].contains("features.0.1.weight"));
        }
        e => panic!("unexpected error {e}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("missing") && msg.contains("unexpected") && msg.contains("shape"),
        "{msg}"
    );
    assert_eq!(
        flat(&m.state_dict()["features.0.0.weight"]),
        before,
        "nothing loaded"
    );

    // An integer tensor where a float parameter belongs is a mismatch too.
    let mut sd = model(3).state_dict();
    sd.insert(
        "features.0.1.bias".into(),
        Tensor::zeros(3, DType::I64, &CPU).unwrap(),
    );
    assert!(m.load_state_dict(&sd).is_err());
}

#[test]
fn corrupt_and_missing_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(1);
    let good = dir.path().join("good.safetensors");
    m.save_safetensors(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", bytes[..bytes.len() - 10].to_vec()),
        ("garbage", b"not a safetensors file at all".to_vec()),
        ("empty", vec![]),
        ("huge header", {
            let mut b = bytes.clone();
            b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            b
        }),
    ];
    for (what, data) in cases {
        let p = dir.path().join(format!("{what}.safetensors"));
        std::fs::write(&p, data).unwrap();
        let e = m.load_safetensors(&p).unwrap_err();
        assert!(e.to_string().contains("reading safetensors"), "{what}: {e}");
    }
    assert!(m
        .load_safetensors(dir.path().join("absent.safetensors"))
        .is_err());
    // A prefix that matches nothing: everything is missing.
    let e = m.load_safetensors_prefixed(&good, "fp32/").unwrap_err();
    assert!(
        matches!(e, GraphError::StateDict { ref missing, .. } if missing.len() == 6),
        "{e}"
    );
}
