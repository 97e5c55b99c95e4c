//! The main job end to end through the library API, at a tiny size, on real Fashion-MNIST
//! (`$QAT_DATA_DIR`, else `../shared/data` next to the workspace; skipped with a message when
//! absent, a failure when `CI=true`): report files exist and parse, the saved QAT checkpoint
//! reproduces the reported accuracy, and `resume` skips finished stages.

use std::path::{Path, PathBuf};

use mobilenet_v2::pipeline::{
    self, evaluate, load_qat, Metrics, PipelineConfig, QConfigPreset, CURVES, FP32, HISTOGRAMS,
    INT8, LAYER_ERROR, METRICS, QAT, REPORT,
};

fn data_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("QAT_DATA_DIR").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")),
    ];
    let found = candidates
        .into_iter()
        .flatten()
        .find(|d| d.join("fashion-mnist").is_dir());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but Fashion-MNIST is not in $QAT_DATA_DIR or ../shared/data"
        );
        eprintln!(
            "SKIP: Fashion-MNIST not found in $QAT_DATA_DIR/fashion-mnist or ../shared/data; \
             see qat_data::load's error for how to get it"
        );
    }
    found
}

/// Small enough for the debug profile: width 0.25, 96 training images, 2 epochs of 3 steps.
fn tiny(data: PathBuf) -> PipelineConfig {
    PipelineConfig {
        data_dir: Some(data),
        width: 0.25,
        epochs: 2,
        qat_epochs: 1,
        batch_size: 32,
        eval_batch_size: 50,
        train_images: Some(96),
        test_images: Some(100),
        calibration_batches: 2,
        lr: 0.02,
        latency_runs: 1,
        progress: false,
        ..PipelineConfig::quick()
    }
}

/// A minimal well-formedness check: every tag closes in order, and the root is `<svg>`.
fn assert_xml_ish(path: &Path) {
    let s = std::fs::read_to_string(path).unwrap();
    let body = s.trim_start();
    assert!(
        body.starts_with("<svg") || body.starts_with("<?xml"),
        "{path:?} does not start with an svg tag"
    );
    let mut stack: Vec<String> = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find('<') {
        let j = rest[i..]
            .find('>')
            .unwrap_or_else(|| panic!("{path:?}: unclosed '<'"))
            + i;
        let tag = &rest[i + 1..j];
        rest = &rest[j + 1..];
        if tag.starts_with('?') || tag.starts_with('!') || tag.ends_with('/') {
            continue;
        }
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| !c.is_whitespace())
            .collect();
        if tag.starts_with('/') {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.as_str()),
                "{path:?}: mismatched </{name}>"
            );
        } else {
            stack.push(name);
        }
    }
    assert!(stack.is_empty(), "{path:?}: unclosed tags {stack:?}");
    assert!(s.matches("<rect").count() > 2, "{path:?} draws nothing");
}

#[test]
fn pipeline_end_to_end_writes_reports_and_resumes() {
    let Some(data) = data_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let cfg = tiny(data);
    let m = pipeline::run(&cfg, &dir).unwrap();

    // Files.
    for f in [
        REPORT,
        METRICS,
        FP32,
        QAT,
        INT8,
        CURVES,
        HISTOGRAMS,
        LAYER_ERROR,
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    for f in [CURVES, HISTOGRAMS, LAYER_ERROR] {
        assert_xml_ish(&dir.join(f));
    }

    // metrics.json: the keys and shapes a reader relies on.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(METRICS)).unwrap()).unwrap();
    for k in [
        "started",
        "config",
        "environment",
        "model",
        "fp32",
        "ptq",
        "qat",
    ] {
        assert!(!json[k].is_null(), "metrics.json lacks {k}");
    }
    assert_eq!(json["fp32"]["curve"]["epochs"].as_array().unwrap().len(), 2);
    assert_eq!(
        json["fp32"]["curve"]["step_loss"].as_array().unwrap().len(),
        6
    );
    assert_eq!(
        json["qat"]["curve"]["step_loss"].as_array().unwrap().len(),
        3
    );
    assert_eq!(json["model"]["test_images"], 100);
    assert!(json["environment"]["isa"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    let acc = json["qat"]["curve"]["epochs"][0]["test"]["accuracy"]
        .as_f64()
        .unwrap();
    assert!((0.0..=1.0).contains(&acc));
    // QAT froze BN / stopped observers halfway through its 3 steps.
    assert_eq!(json["qat"]["bn_frozen_at_step"], 2);
    assert_eq!(json["qat"]["observers_off_at_step"], 2);
    assert_eq!(
        json["qat"]["weight_histograms"].as_array().unwrap().len(),
        3
    );
    for h in json["ptq"]["activation_histograms"].as_array().unwrap() {
        let counts: u64 = h["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .sum();
        assert!(counts > 0);
        assert!(h["range"][0].as_f64().unwrap() <= h["range"][1].as_f64().unwrap());
    }
    // The file holds what `run` returned (floats through JSON text: compare the exact ones).
    let saved = Metrics::load(&dir).unwrap();
    assert_eq!(
        (&saved.started, &saved.config, &saved.model),
        (&m.started, &m.config, &m.model)
    );
    assert_eq!(
        saved.fp32.as_ref().unwrap().curve.step_loss,
        m.fp32.as_ref().unwrap().curve.step_loss
    );

    // report.md: the summary table and its rows.
    let report = std::fs::read_to_string(dir.join(REPORT)).unwrap();
    assert!(report.contains("| model | top-1 % |"));
    for row in [
        "| fp32 |",
        "| PTQ int8 |",
        "| PTQ (fake-quant) |",
        "| QAT (fake-quant) |",
        "| QAT int8 |",
    ] {
        assert!(report.contains(row), "report.md lacks {row}");
    }
    assert!(report.contains("## Environment") && report.contains(&m.environment.isa));

    // The saved QAT model reproduces the reported fake-quant accuracy exactly.
    let q = load_qat(&m.config, &dir).unwrap();
    let test = qat_data::load(
        "fashion-mnist",
        qat_data::Split::Test,
        cfg.data_dir.as_deref(),
    );
    let mut test = test.unwrap();
    test.truncate(100);
    let loader =
        qat_data::Loader::new(std::sync::Arc::new(test), qat_data::LoaderConfig::eval(50)).unwrap();
    let r = evaluate(&loader, |x| Ok(q.forward_t(x, false)?)).unwrap();
    let reported = m.qat.as_ref().unwrap().curve.epochs.last().unwrap();
    assert_eq!(r.accuracy, reported.test.accuracy);
    assert!((r.loss - reported.test.loss).abs() < 1e-5);

    // int8 agrees with its fake-quant model on the evaluated images; the saved int8 file
    // reproduces the reported int8 accuracy.
    let i8m = m.int8.as_ref().unwrap();
    assert_eq!(i8m.test.images, 100);
    assert_eq!(i8m.fake_quant.accuracy, r.accuracy);
    let same = i8m
        .test
        .predictions
        .iter()
        .zip(&i8m.fake_quant.predictions)
        .filter(|(a, b)| a == b)
        .count();
    assert_eq!(i8m.top1_agreement, same as f64 / 100.0);
    assert!(
        i8m.top1_agreement >= 0.95,
        "agreement {}",
        i8m.top1_agreement
    );
    // The integer-exact evaluation (candle, no SIMD kernel) predicts exactly what the
    // int8 model does on every image.
    let ie = i8m.integer_exact.as_ref().unwrap();
    assert_eq!(ie.predictions, i8m.test.predictions);
    assert_eq!(i8m.integer_exact_agreement, Some(1.0));
    assert_eq!(i8m.compare.samples, 100);
    // Each layer's own simulation error: DESIGN.md's goal, ≥ 99% equal, ≤ 1 step.
    assert!(
        i8m.compare.all_local_within(0.99, 1),
        "{:?}",
        i8m.compare.worst_layer()
    );
    let model = qat_runtime::QuantizedModel::load(dir.join(INT8)).unwrap();
    let r8 = pipeline::evaluate_int8(&model, &loader).unwrap();
    assert_eq!(r8.predictions, i8m.test.predictions);
    assert!(i8m.model_bytes > 0 && i8m.model_bytes < m.fp32.as_ref().unwrap().checkpoint_bytes);

    // Resume: everything finished is skipped, nothing retrained.
    let before = std::fs::read(dir.join(FP32)).unwrap();
    let again = pipeline::resume(&dir, false).unwrap();
    assert_eq!(again.resumed, ["fp32", "ptq", "qat", "int8"]);
    assert_eq!(again.fp32, saved.fp32);
    assert_eq!(again.ptq, saved.ptq);
    assert_eq!(again.qat, saved.qat);
    assert_eq!(std::fs::read(dir.join(FP32)).unwrap(), before);

    // A lost QAT checkpoint reruns QAT and, built on it, int8.
    std::fs::remove_file(dir.join(QAT)).unwrap();
    let int8_before = std::fs::metadata(dir.join(INT8))
        .unwrap()
        .modified()
        .unwrap();
    let partial = pipeline::resume(&dir, false).unwrap();
    assert_eq!(partial.resumed, ["fp32", "ptq"]);
    assert!(
        std::fs::metadata(dir.join(INT8))
            .unwrap()
            .modified()
            .unwrap()
            > int8_before
    );
    assert!(dir.join(QAT).is_file());
    assert_eq!(partial.qat.as_ref().unwrap().curve.step_loss.len(), 3);

    // Starting a new run over an existing one is refused.
    let err = pipeline::run(&cfg, &dir).unwrap_err().to_string();
    assert!(err.contains("--resume"), "{err}");
}

#[test]
fn pipeline_bad_settings_are_errors() {
    let base = PipelineConfig::quick();
    let bad = |c: PipelineConfig, what: &str| {
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(what), "{e} lacks {what}");
    };
    bad(
        PipelineConfig {
            width: 0.0,
            ..base.clone()
        },
        "width",
    );
    bad(
        PipelineConfig {
            epochs: 0,
            ..base.clone()
        },
        "epochs",
    );
    bad(
        PipelineConfig {
            qat_epochs: 0,
            ..base.clone()
        },
        "qat-epochs",
    );
    bad(
        PipelineConfig {
            batch_size: 1,
            ..base.clone()
        },
        "batch size",
    );
    bad(
        PipelineConfig {
            lr: f64::NAN,
            ..base.clone()
        },
        "lr",
    );
    bad(
        PipelineConfig {
            freeze_bn_at: 1.5,
            ..base.clone()
        },
        "freeze-bn-at",
    );
    for m in [0.0, -1.0, f64::NAN] {
        bad(
            PipelineConfig {
                qat_max_grad_norm: Some(m),
                ..base.clone()
            },
            "qat-max-grad-norm",
        );
    }
    bad(
        PipelineConfig {
            train_images: Some(3),
            ..base.clone()
        },
        "--train-images",
    );
    assert!("nope"
        .parse::<QConfigPreset>()
        .unwrap_err()
        .to_string()
        .contains("lsq8"));
    for p in QConfigPreset::ALL {
        assert_eq!(p.name().parse::<QConfigPreset>().unwrap(), p);
        p.qconfig().unwrap();
    }
    // A missing dataset says how to get it.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = PipelineConfig {
        dataset: "mnist-nowhere".into(),
        data_dir: Some(tmp.path().into()),
        ..base
    };
    let e = pipeline::run(&cfg, &tmp.path().join("run"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not found"), "{e}");
}
