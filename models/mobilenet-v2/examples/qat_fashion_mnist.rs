//! The main job: MobileNetV2 on Fashion-MNIST, fp32 → post-training quantization → QAT, with
//! progress bars, a summary table, and a run folder (report.md, metrics.json, checkpoints,
//! SVG plots). See `mobilenet_v2::pipeline` for what each stage does.
//!
//! ```sh
//! cargo run --release -p mobilenet-v2 --example qat_fashion_mnist            # default run
//! cargo run --release -p mobilenet-v2 --example qat_fashion_mnist -- --quick # about a minute
//! cargo run --release -p mobilenet-v2 --example qat_fashion_mnist -- --resume runs/<stamp>
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mobilenet_v2::pipeline::{self, now_stamp, PipelineConfig, QConfigPreset};

// Candle frees and reallocates large buffers every op; mimalloc keeps them (MEASURED.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// MobileNetV2 on Fashion-MNIST: fp32 → PTQ → QAT, with a report folder.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Width multiplier.
    #[arg(long)]
    width: Option<f64>,
    /// fp32 training epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// QAT fine-tuning epochs.
    #[arg(long)]
    qat_epochs: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak fp32 learning rate (cosine with warm-up).
    #[arg(long)]
    lr: Option<f64>,
    /// Peak QAT learning rate (cosine).
    #[arg(long)]
    qat_lr: Option<f64>,
    /// QAT qconfig preset: default, pytorch-x86, lsq8, lsq4.
    #[arg(long)]
    qconfig: Option<String>,
    /// Fraction of the QAT steps after which BN statistics freeze.
    #[arg(long)]
    freeze_bn_at: Option<f64>,
    /// Fraction of the QAT steps after which the observers stop.
    #[arg(long)]
    observers_off_at: Option<f64>,
    /// Clip the QAT gradients' global norm to this (0: no clipping).
    #[arg(long)]
    qat_max_grad_norm: Option<f64>,
    /// Batches of training images for PTQ calibration.
    #[arg(long)]
    calibration_batches: Option<usize>,
    /// Train on the first N training images (0: all 60 000).
    #[arg(long)]
    train_images: Option<usize>,
    /// Evaluate on the first N test images (0: all 10 000).
    #[arg(long)]
    test_images: Option<usize>,
    /// Threads for training and the int8 runtime.
    #[arg(long)]
    threads: Option<usize>,
    /// Where to look for the dataset first.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Run folder (default runs/<UTC timestamp>/).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this folder, skipping finished stages (other flags are ignored:
    /// the run keeps the settings it started with).
    #[arg(long)]
    resume: Option<PathBuf>,
    #[arg(long)]
    seed: Option<u64>,
    /// A tiny run (a few hundred images): checks the whole pipeline in about a minute.
    #[arg(long)]
    quick: bool,
    /// No progress bars.
    #[arg(long)]
    no_progress: bool,
}

fn config(a: &Args) -> Result<PipelineConfig, pipeline::PipelineError> {
    let mut c = if a.quick {
        PipelineConfig::quick()
    } else {
        PipelineConfig::default()
    };
    let limit = |n: usize| (n > 0).then_some(n);
    c.width = a.width.unwrap_or(c.width);
    c.epochs = a.epochs.unwrap_or(c.epochs);
    c.qat_epochs = a.qat_epochs.unwrap_or(c.qat_epochs);
    c.batch_size = a.batch_size.unwrap_or(c.batch_size);
    c.lr = a.lr.unwrap_or(c.lr);
    c.qat_lr = a.qat_lr.unwrap_or(c.qat_lr);
    if let Some(q) = &a.qconfig {
        c.qconfig = q.parse::<QConfigPreset>()?;
    }
    c.freeze_bn_at = a.freeze_bn_at.unwrap_or(c.freeze_bn_at);
    c.observers_off_at = a.observers_off_at.unwrap_or(c.observers_off_at);
    if let Some(m) = a.qat_max_grad_norm {
        c.qat_max_grad_norm = (m != 0.0).then_some(m);
    }
    c.calibration_batches = a.calibration_batches.unwrap_or(c.calibration_batches);
    c.train_images = a.train_images.map_or(c.train_images, limit);
    c.test_images = a.test_images.map_or(c.test_images, limit);
    c.threads = a.threads.unwrap_or(c.threads);
    c.data_dir = a.data_dir.clone().or(c.data_dir);
    c.seed = a.seed.unwrap_or(c.seed);
    c.progress = !a.no_progress;
    c.validate()?;
    Ok(c)
}

fn main() -> ExitCode {
    mobilenet_v2::pipeline::keep_freed_memory();
    let args = Args::parse();
    let result = (|| {
        let threads = match &args.resume {
            Some(dir) => pipeline::Metrics::load(dir)?.config.threads,
            None => config(&args)?.threads,
        };
        // candle reads its thread count from RAYON_NUM_THREADS; set it before any pool starts.
        std::env::set_var("RAYON_NUM_THREADS", threads.max(1).to_string());
        // candle's own elementwise pool (CANDLE_NUM_THREADS, default: RAYON_NUM_THREADS) now
        // only runs the backward's gradient sums and the optimizer, and its workers spin
        // between ops: on 2 shared cores one thread there measured 13% less CPU and less wall
        // time per batch-128 step (`qat-bench train-step --threads 2 --batch 128`, 2 runs:
        // 1158 / 1132 vs 1292 / 1339 CPU ms). Our ops and the GEMMs still use `threads`.
        if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
        let (metrics, dir) = match &args.resume {
            Some(dir) => (pipeline::resume(dir, !args.no_progress)?, dir.clone()),
            None => {
                let cfg = config(&args)?;
                let dir = args
                    .out
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("runs").join(now_stamp()));
                (pipeline::run(&cfg, &dir)?, dir)
            }
        };
        println!("\n{}", metrics.table());
        println!("run folder: {}", dir.display());
        Ok::<_, pipeline::PipelineError>(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
