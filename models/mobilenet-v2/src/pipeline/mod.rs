//! The main job: MobileNetV2 on Fashion-MNIST through fp32 training → post-training
//! quantization → quantization-aware fine-tuning → int8 conversion, writing a run folder:
//!
//! | file | what |
//! |---|---|
//! | `report.md` | the summary table, goals, per-epoch table, quantization ranges, settings, environment |
//! | `metrics.json` | every number ([`Metrics`]), per-epoch and per-step curves, histograms |
//! | `fp32.safetensors` | the trained float model (PyTorch `state_dict` names) |
//! | `qat.safetensors` | the QAT model's parameters, BN buffers and fake-quant state |
//! | `int8.safetensors` | the converted int8 model ([`qat_runtime::QuantizedModel::save`]) |
//! | `curves.svg`, `histograms.svg`, `layer_error.svg` | loss / accuracy curves; weight and activation histograms with the chosen ranges; per-layer fake-quant ⇄ int8 agreement |
//!
//! [`run`] starts a run; [`resume`] continues one from its folder, skipping every stage whose
//! metrics and checkpoint are already there. Stages write `metrics.json` as they finish.
//!
//! ```no_run
//! use mobilenet_v2::pipeline::{run, PipelineConfig};
//! # fn main() -> mobilenet_v2::pipeline::Result<()> {
//! let metrics = run(&PipelineConfig::quick(), "runs/quick".as_ref())?;
//! println!("{}", metrics.table());
//! # Ok(()) }
//! ```

mod checkpoint;
mod config;
mod env;
mod error;
mod eval;
mod fp32;
mod histogram;
mod int8;
mod plots;
mod ptq;
mod qat;
mod report;
mod train;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use qat_data::{load, Augment, Dataset, Loader, LoaderConfig, Split};

pub use checkpoint::{load_fp32, load_qat, save_fp32, save_qat, FP32, INT8, QAT};
pub use config::{ptq_qconfig, PipelineConfig, QConfigPreset};
pub use env::{
    cpu_model, cpu_seconds, keep_freed_memory, now_stamp, unix_now, utc_civil, utc_stamp,
    Environment,
};
pub use error::{PipelineError, Result};
pub use eval::{agreement, evaluate, EvalResult};
pub use histogram::{histogram, RangeHistogram};
pub use int8::{convert_model, evaluate_int8, Int8Metrics};
pub use plots::{write_all as write_plots, CURVES, HISTOGRAMS, LAYER_ERROR};
pub use ptq::PtqMetrics;
pub use qat::{eval_frozen, QatMetrics};
pub use report::{Fp32Metrics, Latency, Metrics, ModelInfo, METRICS, REPORT};
pub use train::{train, EpochRecord, TrainCurve, TrainSpec, Trainable};

/// The three loaders of a run.
struct Data {
    train: Loader,
    test: Loader,
    /// Un-augmented training images in dataset order (PTQ calibration).
    calib: Loader,
}

fn load_data(cfg: &PipelineConfig) -> Result<Data> {
    let dir = cfg.data_dir.as_deref();
    let mut train = load(&cfg.dataset, Split::Train, dir)?;
    let mut test = load(&cfg.dataset, Split::Test, dir)?;
    if let Some(n) = cfg.train_images {
        train.truncate(n);
    }
    if let Some(n) = cfg.test_images {
        test.truncate(n);
    }
    loaders(cfg, train, test)
}

fn loaders(cfg: &PipelineConfig, train: Dataset, test: Dataset) -> Result<Data> {
    let normalize = if cfg.dataset == "mnist" {
        qat_data::Normalize::MNIST
    } else {
        qat_data::Normalize::FASHION_MNIST
    };
    let train = Arc::new(train);
    let augment = Augment {
        pad: cfg.crop_pad,
        hflip: cfg.hflip,
    };
    let eval = LoaderConfig {
        normalize,
        ..LoaderConfig::eval(cfg.eval_batch_size)
    };
    Ok(Data {
        train: Loader::new(
            train.clone(),
            LoaderConfig {
                augment,
                normalize,
                ..LoaderConfig::train(cfg.batch_size, cfg.seed)
            },
        )?,
        test: Loader::new(Arc::new(test), eval)?,
        calib: Loader::new(train, eval)?,
    })
}

/// Median wall time of `runs` calls of `f` after one warm-up call, in milliseconds.
pub fn median_ms(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let s = Instant::now();
            f().map(|_| s.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_>>()?;
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// `n` test images as one NCHW tensor (repeating the set if it is smaller).
fn test_images(test: &Loader, n: usize) -> Result<Tensor> {
    let d = test.dataset();
    let px = d.rows * d.cols;
    let norm = test.config().normalize;
    let v: Vec<f32> = (0..n * px)
        .map(|k| norm.apply(d.images[(k / px) % d.len() * px + k % px]))
        .collect();
    Ok(Tensor::from_vec(v, (n, 1, d.rows, d.cols), &Device::Cpu)?)
}

/// Median latency of `forward` on 1 and 32 test images.
fn latency_of(
    cfg: &PipelineConfig,
    test: &Loader,
    forward: &dyn Fn(&Tensor) -> Result<()>,
) -> Result<Latency> {
    let mut ms = [0.0; 2];
    for (slot, n) in ms.iter_mut().zip([1, 32]) {
        let x = test_images(test, n)?;
        *slot = median_ms(cfg.latency_runs, || forward(&x))?;
    }
    Ok(Latency {
        batch1_ms: ms[0],
        batch32_ms: ms[1],
    })
}

fn say(cfg: &PipelineConfig, msg: &str) {
    if cfg.progress {
        eprintln!("{msg}");
    }
}

/// Start a run in `out` (created; must not already hold a run's `metrics.json`).
pub fn run(cfg: &PipelineConfig, out: &Path) -> Result<Metrics> {
    cfg.validate()?;
    if out.join(METRICS).exists() {
        return Err(PipelineError::Invalid(format!(
            "{} already holds a run; continue it with --resume {0} or pick another --out",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(error::io(out))?;
    let data = load_data(cfg)?;
    let g = crate::build(&cfg.model())?;
    let metrics = Metrics {
        started: now_stamp(),
        config: cfg.clone(),
        environment: Environment::detect(cfg.threads),
        model: ModelInfo {
            parameters: g
                .param_specs()
                .iter()
                .filter(|s| s.kind.is_trainable())
                .map(|s| s.shape.iter().product::<usize>())
                .sum(),
            macs_per_image: g.macs(),
            train_images: data.train.dataset().len(),
            test_images: data.test.dataset().len(),
        },
        fp32: None,
        ptq: None,
        qat: None,
        int8: None,
        resumed: vec![],
    };
    stages(metrics, &data, out)
}

/// Continue the run in `dir` with the settings it started with (`progress` aside), skipping
/// every finished stage.
pub fn resume(dir: &Path, progress: bool) -> Result<Metrics> {
    let mut metrics = Metrics::load(dir)?;
    metrics.config.progress = progress;
    metrics.config.validate()?;
    metrics.resumed.clear();
    let data = load_data(&metrics.config)?;
    stages(metrics, &data, dir)
}

fn stages(mut m: Metrics, data: &Data, dir: &Path) -> Result<Metrics> {
    let cfg = m.config.clone();
    // Once a stage reruns, every later stage reruns too (they are built on its output).
    let mut stale = false;
    // fp32 training.
    let fp32 = if m.fp32.is_some() && dir.join(FP32).exists() {
        m.resumed.push("fp32".into());
        load_fp32(&cfg, dir)?
    } else {
        stale = true;
        let module = checkpoint::new_module(&cfg)?;
        let curve = fp32::train_fp32(&cfg, &module, &data.train, &data.test)?;
        let test = curve.epochs.last().expect("epochs >= 1").test.clone();
        let path = save_fp32(&module, dir)?;
        say(&cfg, "fp32: measuring latency");
        m.fp32 = Some(Fp32Metrics {
            curve,
            test,
            latency: {
                // What a float deployment would run: the fused graph in eval mode.
                let fused = module.fused()?;
                latency_of(&cfg, &data.test, &|x| {
                    fused.forward_t(x, false)?;
                    Ok(())
                })?
            },
            checkpoint_bytes: std::fs::metadata(&path).map_err(error::io(&path))?.len(),
        });
        m.write_reports(dir)?;
        module
    };
    // Post-training quantization.
    let calib = ptq::batches(&data.calib, 1)?.remove(0);
    if m.ptq.is_some() && !stale {
        m.resumed.push("ptq".into());
    } else {
        say(&cfg, "PTQ: calibrating and evaluating");
        let (_ptq, metrics) = ptq::run_ptq(
            &cfg,
            checkpoint::copy_module(&cfg, &fp32)?,
            &data.calib,
            &data.test,
        )?;
        m.ptq = Some(metrics);
        m.write_reports(dir)?;
    }
    // Quantization-aware fine-tuning.
    let qat = if m.qat.is_some() && !stale && dir.join(QAT).exists() {
        m.resumed.push("qat".into());
        load_qat(&cfg, dir)?
    } else {
        stale = true;
        let (q, metrics) = qat::run_qat(
            &cfg,
            checkpoint::copy_module(&cfg, &fp32)?,
            &data.train,
            &data.test,
            &calib,
        )?;
        save_qat(&q, dir)?;
        m.qat = Some(metrics);
        m.write_reports(dir)?;
        q
    };
    // int8: convert, evaluate, compare with fake-quant, time, save.
    if m.int8.is_some() && !stale && dir.join(INT8).exists() {
        m.resumed.push("int8".into());
    } else {
        say(
            &cfg,
            "int8: converting, evaluating, comparing with fake-quant, timing",
        );
        let latency = |f: &dyn Fn(&Tensor) -> Result<()>| latency_of(&cfg, &data.test, f);
        m.int8 = Some(int8::run_int8(&cfg, &qat, &data.test, dir, latency)?);
        m.write_reports(dir)?;
    }
    write_plots(&m, dir)?;
    m.write_reports(dir)?;
    Ok(m)
}
