//! `qat-bench train-step`: milliseconds per training step of MobileNetV2 (small-image config,
//! 1×28×28, width 0.5 by default) in fp32, in QAT (`prepare_qat` with `default_qat`) and
//! optionally in QAT with BN statistics frozen and observers off.
//!
//! fp32 trains the fused graph (Conv+BN+ReLU6 as one node: the same parameters and math as the
//! graph as built, which `--unfused` runs instead); QAT always runs on the fused graph.
//! A step is forward (train mode) + cross-entropy + backward + SGD (momentum 0.9, Nesterov,
//! weight decay 5e-4 on conv / linear weights, PyTorch's coupled form). After warm-up steps,
//! every step is timed in three parts (forward + loss, backward, optimizer); lines carry the
//! median / min / mean of the whole step, images/s, and the medians of the parts. When fp32 and
//! QAT both run, a last line gives their ratio: of the wall-clock medians (`ratio`) and of the
//! process-CPU medians (`cpu_ratio`, the one to trust on a shared machine: other processes on the
//! pinned core inflate wall time, up to 2x, in whichever mode they happen to overlap). Inputs are
//! a fixed random batch with random labels: the cost of a step does not depend on the values.
//!
//! Threads: `--threads N` sets `RAYON_NUM_THREADS` (candle's CPU backend and its matmul read it)
//! and builds rayon's global pool with N threads (our fast ops run on it), before any candle
//! call. For single-core figures pin the process too:
//!
//! ```text
//! taskset -c 1 qat-bench train-step --threads 1
//! ```

use std::time::Instant;

use crate::timing::process_cpu_seconds;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use mobilenet_v2::{build, MobileNetV2Config};
use qat_graph::{prepare_qat_module, GraphModule, QConfig, Sgd, SgdConfig, WeightDecay};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::json::emit;

/// Arguments of `qat-bench train-step`.
#[derive(clap::Args)]
pub struct Args {
    /// Images per step.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// MobileNetV2 width multiplier.
    #[arg(long, default_value_t = 0.5)]
    width: f64,
    /// Input height and width (1 channel, 10 classes).
    #[arg(long, default_value_t = 28)]
    size: usize,
    /// Threads for rayon and candle (set once per process).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Modes to run, in order: fp32, qat, qat-frozen (repeat the flag).
    #[arg(long, default_values_t = vec!["fp32".to_string(), "qat".to_string()])]
    mode: Vec<String>,
    /// Untimed steps before measuring.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Train fp32 on the graph as built (Conv, BN, ReLU6 as separate nodes) instead of the
    /// fused graph ([`GraphModule::fused`]: same parameters and math, fewer autograd nodes).
    #[arg(long)]
    unfused: bool,
    /// Keep mimalloc's default purging of freed memory (off by default: see `mobilenet_v2::pipeline::keep_freed_memory`).
    #[arg(long)]
    allocator_purge: bool,
    /// Learning rate (small, so random-label training stays finite).
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Fp32,
    Qat,
    QatFrozen,
}

impl Mode {
    fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "fp32" => Mode::Fp32,
            "qat" => Mode::Qat,
            "qat-frozen" => Mode::QatFrozen,
            other => bail!("unknown mode {other:?} (expected fp32, qat or qat-frozen)"),
        })
    }
    fn name(self) -> &'static str {
        match self {
            Mode::Fp32 => "fp32",
            Mode::Qat => "qat",
            Mode::QatFrozen => "qat-frozen",
        }
    }
}

/// A model in one of the modes: something that runs a train-mode forward.
enum Model {
    Float(GraphModule),
    Qat(qat_graph::QatGraph),
}

impl Model {
    fn forward(&self, x: &Tensor) -> qat_graph::Result<Tensor> {
        match self {
            Model::Float(m) => m.forward_t(x, true),
            Model::Qat(q) => q.forward_t(x, true),
        }
    }
}

/// Per-step seconds of the three parts.
#[derive(Clone, Copy, Default)]
struct StepTimes {
    forward: f64,
    backward: f64,
    optimizer: f64,
    /// CPU seconds of the whole process over the step (all threads): on a loaded machine this
    /// stays close to the unloaded wall time at 1 thread, while wall time does not.
    cpu: f64,
}

impl StepTimes {
    fn total(&self) -> f64 {
        self.forward + self.backward + self.optimizer
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn set_threads(threads: usize) -> anyhow::Result<()> {
    if threads == 0 {
        bail!("--threads must be at least 1");
    }
    // candle reads RAYON_NUM_THREADS whenever it sizes a matmul / conv; set before any op.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    // candle's own barrier pool (elementwise ops) may be sized apart, for experiments.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("building rayon's global pool (was it already built?)")?;
    Ok(())
}

/// Runs one mode and returns its median step in seconds: wall clock and process CPU.
fn run_mode(args: &Args, mode: Mode, cfg: &MobileNetV2Config) -> anyhow::Result<(f64, f64)> {
    let dev = Device::Cpu;
    let graph = build(cfg)?;
    let float = GraphModule::new(graph, 7, &dev)?;
    let model = match mode {
        Mode::Fp32 if args.unfused => Model::Float(float),
        Mode::Fp32 => Model::Float(float.fused()?),
        Mode::Qat | Mode::QatFrozen => {
            let q = prepare_qat_module(float, &QConfig::default_qat())?;
            Model::Qat(q)
        }
    };
    let params = match &model {
        Model::Float(m) => m.trainable(),
        Model::Qat(q) => q.trainable(),
    };
    let mut opt = Sgd::new(
        params,
        SgdConfig {
            lr: args.lr,
            momentum: 0.9,
            nesterov: true,
            weight_decay: WeightDecay::Coupled(5e-4),
            ..SgdConfig::default()
        },
    )?;

    let mut rng = StdRng::seed_from_u64(1);
    let (n, s) = (args.batch, args.size);
    let xs: Vec<f32> = (0..n * s * s).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let labels: Vec<u32> = (0..n)
        .map(|_| rng.gen_range(0..cfg.num_classes as u32))
        .collect();
    let x = Tensor::from_vec(xs, (n, 1, s, s), &dev)?;
    let y = Tensor::new(labels.as_slice(), &dev)?;

    let mut step = |i: usize| -> anyhow::Result<StepTimes> {
        if mode == Mode::QatFrozen && i == 1 {
            // One live step first so the observers have ranges, then frozen as after PyTorch's
            // `freeze_bn_stats` + `disable_observer` late in QAT.
            if let Model::Qat(q) = &model {
                q.freeze_bn_stats();
                q.enable_observers(false);
            }
        }
        let c0 = process_cpu_seconds();
        let t0 = Instant::now();
        let logits = model.forward(&x)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        opt.step(&grads)?;
        drop(grads);
        let t3 = Instant::now();
        let c3 = process_cpu_seconds();
        let l = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        if !l.is_finite() {
            bail!("{} step {i}: loss is {l}", mode.name());
        }
        Ok(StepTimes {
            forward: (t1 - t0).as_secs_f64(),
            backward: (t2 - t1).as_secs_f64(),
            optimizer: (t3 - t2).as_secs_f64(),
            cpu: c3 - c0,
        })
    };
    for i in 0..args.warmup.max(if mode == Mode::QatFrozen { 2 } else { 0 }) {
        step(i)?;
    }
    let first = args.warmup.max(if mode == Mode::QatFrozen { 2 } else { 0 });
    let times: Vec<StepTimes> = (0..args.steps)
        .map(|i| step(first + i))
        .collect::<anyhow::Result<_>>()?;
    let total: Vec<f64> = times.iter().map(StepTimes::total).collect();
    let part = |f: fn(&StepTimes) -> f64| median(&times.iter().map(f).collect::<Vec<_>>()) * 1e3;
    let med = median(&total);
    let min = total.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = total.iter().sum::<f64>() / total.len() as f64;
    emit(&[
        ("bench", json!("train-step")),
        ("mode", json!(mode.name())),
        (
            "graph",
            json!(if mode == Mode::Fp32 && args.unfused {
                "unfused"
            } else {
                "fused"
            }),
        ),
        ("threads", json!(args.threads)),
        ("impl", json!("ours")),
        ("net", json!("mobilenet_v2")),
        ("batch", json!(n)),
        ("size", json!(s)),
        ("width", json!(args.width)),
        ("steps", json!(args.steps)),
        ("median_ms", json!(med * 1e3)),
        ("min_ms", json!(min * 1e3)),
        ("mean_ms", json!(mean * 1e3)),
        ("images_per_s", json!(n as f64 / med)),
        ("cpu_median_ms", json!(part(|t| t.cpu))),
        (
            "cpu_min_ms",
            json!(times.iter().map(|t| t.cpu).fold(f64::INFINITY, f64::min) * 1e3),
        ),
        ("forward_ms", json!(part(|t| t.forward))),
        ("backward_ms", json!(part(|t| t.backward))),
        ("optimizer_ms", json!(part(|t| t.optimizer))),
    ]);
    Ok((
        med,
        median(&times.iter().map(|t| t.cpu).collect::<Vec<_>>()),
    ))
}

/// Run the benchmark.
pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.batch == 0 || args.steps == 0 {
        bail!("--batch and --steps must be at least 1");
    }
    let modes: Vec<Mode> = args
        .mode
        .iter()
        .map(|m| Mode::parse(m))
        .collect::<anyhow::Result<_>>()?;
    set_threads(args.threads)?;
    if !args.allocator_purge {
        mobilenet_v2::pipeline::keep_freed_memory();
    }
    let cfg = MobileNetV2Config::small(1, args.size, args.width, 10);
    let mut fp32 = None;
    let mut qat = None;
    for mode in modes {
        let med = run_mode(args, mode, &cfg)?;
        match mode {
            Mode::Fp32 => fp32 = Some(med),
            Mode::Qat => qat = Some(med),
            Mode::QatFrozen => {}
        }
    }
    if let (Some((f, fc)), Some((q, qc))) = (fp32, qat) {
        emit(&[
            ("bench", json!("train-step")),
            ("mode", json!("qat/fp32")),
            ("threads", json!(args.threads)),
            ("ratio", json!(q / f)),
            ("cpu_ratio", json!(qc / fc)),
        ]);
    }
    Ok(())
}
