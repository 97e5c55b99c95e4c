//! `qat-bench model`: latency of MobileNetV2 as our int8 model (qat-runtime) and as our fp32
//! graph (qat-graph's eval forward on candle), side by side.
//!
//! Both come from the same network: `mobilenet_v2::build` with seeded random weights. The
//! fp32 baseline is the fused `GraphModule` in eval mode. The int8 model is what a user gets:
//! `prepare_qat_module` (`QConfig::default_qat`), calibration on random batches, BN frozen,
//! observers off, `convert_with` for this CPU. The kernels' speed does not depend on the
//! values (lines carry `weights: "random"`).
//!
//! One line per (model, batch, threads): int8 and fp32 ms, the int8 speed-up over fp32, GMAC/s
//! (MACs of the convolutions and linears, `mobilenet_v2::macs`) and the int8 GMAC/s as a
//! percentage of the VNNI peak (`--peak-gmacs`; `qat-bench all` passes the figure its `peak`
//! section measured). At one thread, `cpu_ms` is the best process CPU time per int8 call: on
//! a loaded machine it stays near the quiet-machine latency while `ms` (wall) does not.
//!
//! `--file` times a saved int8 model instead (`QuantizedModel::save`, e.g. the training
//! example's output): input shape from the model, batch sizes from `--batch` (default 1), one
//! line per (batch, threads) with `model` the file's name.
//!
//! ```text
//! taskset -c 1 qat-bench model --threads 1
//! qat-bench model --model mnv2-28-w0.5 --batch 32 --threads 1 --threads 2
//! qat-bench model --file mnv2.int8.safetensors --batch 1 --batch 32 --threads 1
//! ```

use crate::json::emit;
use crate::timing::{best_seconds, process_cpu_seconds};
use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use mobilenet_v2::MobileNetV2Config;
use qat_graph::{convert_with, prepare_qat_module, GraphModule, QConfig};
use qat_runtime::{ModelOptions, QuantizedModel};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Arguments of `qat-bench model`.
#[derive(clap::Args)]
pub struct Args {
    /// Thread counts to run (repeat the flag).
    #[arg(long, default_values_t = vec![1, 2])]
    threads: Vec<usize>,
    /// Timed batches per figure (the best is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Only these models (`mnv2-28-w0.5`, `mnv2-224-w1.0`; repeat the flag). Default: both.
    #[arg(long)]
    model: Vec<String>,
    /// Only these batch sizes (repeat the flag). Default: 1 and 32 at 28×28, 1 at 224.
    #[arg(long)]
    batch: Vec<usize>,
    /// Skip the fp32 baseline.
    #[arg(long)]
    no_float: bool,
    /// VNNI peak (GMAC/s, one core) that `peak_pct` divides by. Default: MEASURED.md's
    /// `vpdpbusd` zmm figure for this machine type.
    #[arg(long, default_value_t = 549.0)]
    peak_gmacs: f64,
    /// Print the int8 model summary (`inspect`) to stderr.
    #[arg(long)]
    inspect: bool,
    /// Also time every op of the int8 model (best of `--per-op-reps` calls each): one
    /// `model_op` line per op, then one `model_op_kind` line per kernel kind.
    #[arg(long)]
    per_op: bool,
    /// Calls the per-op figures take their best from.
    #[arg(long, default_value_t = 20)]
    per_op_reps: usize,
    /// Time this saved int8 model (safetensors, `QuantizedModel::save`) instead of the
    /// built-in MobileNetV2s: input shape from the model, batches from `--batch` (default 1).
    #[arg(long, conflicts_with = "model")]
    file: Option<PathBuf>,
}

/// One benchmarked configuration.
struct Config {
    name: &'static str,
    net: fn() -> MobileNetV2Config,
    batches: &'static [usize],
}

const CONFIGS: [Config; 2] = [
    Config {
        name: "mnv2-28-w0.5",
        net: || MobileNetV2Config::small(1, 28, 0.5, 10),
        batches: &[1, 32],
    },
    Config {
        name: "mnv2-224-w1.0",
        net: || MobileNetV2Config::imagenet(1.0, 1000),
        batches: &[1],
    },
];

/// Random NCHW input of `batch` images.
fn input(cfg: &MobileNetV2Config, batch: usize, seed: u64) -> Vec<f32> {
    random_input(
        batch * cfg.in_channels * cfg.input_size * cfg.input_size,
        seed,
    )
}

/// `n` random values in the range of normalized images.
fn random_input(n: usize, seed: u64) -> Vec<f32> {
    let mut r = StdRng::seed_from_u64(seed);
    (0..n).map(|_| r.gen_range(-2.5f32..2.5)).collect()
}

fn tensor(cfg: &MobileNetV2Config, batch: usize, seed: u64) -> anyhow::Result<Tensor> {
    let s = cfg.input_size;
    Ok(Tensor::from_vec(
        input(cfg, batch, seed),
        (batch, cfg.in_channels, s, s),
        &Device::Cpu,
    )?)
}

/// The fused fp32 module and the int8 model converted from its calibrated QAT twin.
fn build(cfg: &MobileNetV2Config) -> anyhow::Result<(GraphModule, qat_graph::QatGraph)> {
    let graph = mobilenet_v2::build(cfg)?;
    let float = GraphModule::new(graph, 7, &Device::Cpu)?;
    let fused = float.fused()?;
    let qat = prepare_qat_module(float, &QConfig::default_qat())?;
    // With random weights, BN at its initial running statistics shrinks the activations layer
    // after layer (to ~1e-7 deep in the net) and their scales collapse with them, which gives
    // requantization multipliers no trained model has. Train-mode forwards first move the
    // running statistics towards the batch statistics (momentum 0.1: 88% of the way in 20).
    for i in 0..20 {
        qat.forward_t(&tensor(cfg, 2, 100 + i)?, true)?;
    }
    let batches = [tensor(cfg, 4, 21)?, tensor(cfg, 4, 22)?];
    qat.calibrate(&batches)?;
    qat.freeze_bn_stats();
    qat.enable_observers(false);
    Ok((fused, qat))
}

/// Best seconds per call of the int8 model.
fn time_int8(m: &QuantizedModel, x: &[f32], batch: usize, reps: usize) -> anyhow::Result<f64> {
    let mut out = vec![0f32; m.output_len(batch)?];
    let mut failed = None;
    let secs = best_seconds(
        || {
            if let Err(e) = m.run_into(x, batch, &mut out) {
                failed = Some(e);
            }
        },
        reps,
        Duration::from_millis(200),
    );
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(secs),
    }
}

/// Best CPU seconds per call of the int8 model on one thread: on a shared machine, time
/// slices lost to other processes inflate wall time but not CPU time.
fn cpu_int8(m: &QuantizedModel, x: &[f32], batch: usize, wall: f64, reps: usize) -> f64 {
    let mut out = vec![0f32; m.output_len(batch).unwrap_or(0)];
    // Batches of about 100 ms of work, so the clock's granularity does not matter.
    let calls = ((0.1 / wall.max(1e-6)) as usize).clamp(1, 10_000);
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(3) {
        let t = process_cpu_seconds();
        for _ in 0..calls {
            let _ = m.run_into(x, batch, &mut out);
        }
        best = best.min((process_cpu_seconds() - t) / calls as f64);
    }
    best
}

/// Best seconds per eval forward of the fp32 module on `threads` threads: candle sizes its
/// conv / matmul work from `RAYON_NUM_THREADS` and runs it, like our fast ops, on the current
/// rayon pool.
fn time_fp32(m: &GraphModule, x: &Tensor, threads: usize, reps: usize) -> anyhow::Result<f64> {
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("building the rayon pool")?;
    let mut failed = None;
    let secs = pool.install(|| {
        best_seconds(
            || {
                if let Err(e) = m.forward_t(x, false) {
                    failed = Some(e);
                }
            },
            reps,
            Duration::from_millis(200),
        )
    });
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(secs),
    }
}

/// One `model_op` line per op and one `model_op_kind` line per kernel, with the op's share of
/// the summed per-op time and its GMAC/s against `--peak-gmacs`.
fn per_op(
    m: &QuantizedModel,
    x: &[f32],
    batch: usize,
    threads: usize,
    model: &str,
    args: &Args,
) -> anyhow::Result<()> {
    let ops = m.profile(x, batch, args.per_op_reps)?;
    let total: f64 = ops.iter().map(|o| o.seconds).sum();
    let gmacs = |macs: u64, s: f64| macs as f64 / s / 1e9;
    let line = |bench: &str, name: &str, kernel: &str, n: usize, s: f64, macs: u64| {
        emit(&[
            ("bench", json!(bench)),
            ("threads", json!(threads)),
            ("model", json!(model)),
            ("batch", json!(batch)),
            ("op", json!(name)),
            ("kernel", json!(kernel)),
            ("ops", json!(n)),
            ("ms", json!(round(s * 1e3, 4))),
            ("pct", json!(round(100.0 * s / total, 1))),
            ("macs", json!(macs)),
            ("gmacs", json!(round(gmacs(macs, s), 1))),
            (
                "peak_pct",
                json!(round(
                    100.0 * gmacs(macs, s) / args.peak_gmacs / threads as f64,
                    1
                )),
            ),
        ]);
    };
    for o in &ops {
        line("model_op", &o.name, &o.kernel, 1, o.seconds, o.macs);
    }
    // Per (op kind, kernel), slowest first.
    let mut kinds: Vec<(String, usize, f64, u64)> = Vec::new();
    for o in &ops {
        let key = format!("{}:{}", o.kind, o.kernel);
        match kinds.iter_mut().find(|k| k.0 == key) {
            Some(k) => {
                k.1 += 1;
                k.2 += o.seconds;
                k.3 += o.macs;
            }
            None => kinds.push((key, 1, o.seconds, o.macs)),
        }
    }
    kinds.sort_by(|a, b| b.2.total_cmp(&a.2));
    for (key, n, s, macs) in kinds {
        line("model_op_kind", &key, "", n, s, macs);
    }
    Ok(())
}

fn round(v: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (v * p).round() / p
}

/// The timing fields every `model` line carries, built-in model or `--file`: one call of
/// `batch` images doing `macs` MACs in `int8` seconds (`cpu`: process CPU seconds, 1 thread).
fn timing_fields(
    batch: usize,
    macs: f64,
    int8: f64,
    cpu: Option<f64>,
    threads: usize,
    peak_gmacs: f64,
) -> [(&'static str, Value); 7] {
    let gmacs = macs / int8 / 1e9;
    [
        ("batch", json!(batch)),
        ("macs_per_image", json!(macs / batch as f64)),
        ("ms", json!(int8 * 1e3)),
        ("ms_per_image", json!(int8 * 1e3 / batch as f64)),
        ("cpu_ms", json!(cpu.map(|c| c * 1e3))),
        ("gmacs", json!(round(gmacs, 1))),
        (
            "peak_pct",
            json!(round(100.0 * gmacs / peak_gmacs / threads as f64, 1)),
        ),
    ]
}

/// Load a saved int8 model packed for `isa` and `threads`, the error naming the file.
fn load(path: &Path, isa: qat_kernels::Isa, threads: usize) -> anyhow::Result<QuantizedModel> {
    let options = ModelOptions {
        isa: Some(isa),
        threads,
    };
    QuantizedModel::load_with(path, options)
        .with_context(|| format!("loading the int8 model {}", path.display()))
}

/// `--file`: time a saved model at each batch size and thread count.
fn run_file(path: &Path, args: &Args) -> anyhow::Result<()> {
    let isa = qat_kernels::isa::active();
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    );
    let batches = if args.batch.is_empty() {
        vec![1]
    } else {
        args.batch.clone()
    };
    for &threads in &args.threads {
        let model = load(path, isa, threads)?;
        if args.inspect && threads == args.threads[0] {
            eprintln!("{}", model.inspect());
        }
        let shape = model.input().shape;
        for &batch in &batches {
            let x = random_input(model.input_len(batch)?, 11);
            // MACs from the model's own op table (one profiled call).
            let macs: u64 = model.profile(&x, batch, 1)?.iter().map(|o| o.macs).sum();
            let int8 = time_int8(&model, &x, batch, args.reps).context(name.clone())?;
            let cpu = (threads == 1).then(|| cpu_int8(&model, &x, batch, int8, args.reps));
            if args.per_op {
                per_op(&model, &x, batch, threads, &name, args)?;
            }
            let timing = timing_fields(batch, macs as f64, int8, cpu, threads, args.peak_gmacs);
            let fields = [
                ("bench", json!("model")),
                ("threads", json!(threads)),
                ("impl", json!("ours")),
                ("isa", json!(isa.to_string())),
                ("model", json!(name)),
                ("weights", json!("file")),
                ("int8_from", json!(path.display().to_string())),
                ("c", json!(shape.c)),
                ("h", json!(shape.h)),
                ("w", json!(shape.w)),
            ];
            emit(&[&fields[..], &timing[..]].concat());
        }
    }
    Ok(())
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.threads.contains(&0) {
        bail!("--threads must be at least 1");
    }
    if args.batch.contains(&0) {
        bail!("--batch must be at least 1");
    }
    if let Some(path) = &args.file {
        return run_file(path, args);
    }
    for m in &args.model {
        if !CONFIGS.iter().any(|c| c.name == m) {
            bail!("unknown --model {m:?} (expected mnv2-28-w0.5 or mnv2-224-w1.0)");
        }
    }
    let isa = qat_kernels::isa::active();
    for cfg in &CONFIGS {
        if !args.model.is_empty() && !args.model.iter().any(|m| m == cfg.name) {
            continue;
        }
        let batches: Vec<usize> = if args.batch.is_empty() {
            cfg.batches.to_vec()
        } else {
            args.batch.clone()
        };
        let net = (cfg.net)();
        let (fused, qat) = build(&net).with_context(|| format!("building {}", cfg.name))?;
        let per_image = mobilenet_v2::macs(&net)? as f64;
        for &threads in &args.threads {
            let options = ModelOptions {
                isa: Some(isa),
                threads,
            };
            let model =
                convert_with(&qat, options).with_context(|| format!("converting {}", cfg.name))?;
            if args.inspect && threads == args.threads[0] {
                eprintln!("{}", model.inspect());
            }
            for &batch in &batches {
                let x = input(&net, batch, 11);
                let int8 = time_int8(&model, &x, batch, args.reps).context(cfg.name)?;
                let cpu = (threads == 1).then(|| cpu_int8(&model, &x, batch, int8, args.reps));
                let fp32 = if args.no_float {
                    None
                } else {
                    let xt = tensor(&net, batch, 11)?;
                    Some(time_fp32(&fused, &xt, threads, args.reps).context(cfg.name)?)
                };
                if args.per_op {
                    per_op(&model, &x, batch, threads, cfg.name, args)?;
                }
                let macs = per_image * batch as f64;
                let timing = timing_fields(batch, macs, int8, cpu, threads, args.peak_gmacs);
                let fields = [
                    ("bench", json!("model")),
                    ("threads", json!(threads)),
                    ("impl", json!("ours")),
                    ("isa", json!(isa.to_string())),
                    ("model", json!(cfg.name)),
                    ("weights", json!("random")),
                    (
                        "int8_from",
                        json!("convert(prepare_qat(default_qat), calibrated)"),
                    ),
                    ("c", json!(net.in_channels)),
                    ("h", json!(net.input_size)),
                    ("w", json!(net.input_size)),
                    ("width", json!(net.width_mult)),
                    ("fp32_ms", json!(fp32.map(|s| s * 1e3))),
                    ("fp32_gmacs", json!(fp32.map(|s| round(macs / s / 1e9, 1)))),
                    ("int8_speedup", json!(fp32.map(|s| round(s / int8, 2)))),
                ];
                emit(&[&fields[..], &timing[..]].concat());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that does not exist, or that is not a model, is an error naming the file and
    /// the problem, never a panic.
    #[test]
    fn missing_or_corrupt_file_is_a_clear_error() {
        let isa = qat_kernels::Isa::Scalar;
        let dir = std::env::temp_dir().join(format!("qat-bench-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.int8.safetensors");
        let e = format!("{:#}", load(&missing, isa, 1).unwrap_err());
        assert!(e.contains("missing.int8.safetensors"), "{e}");
        let corrupt = dir.join("corrupt.int8.safetensors");
        std::fs::write(&corrupt, b"\x10\0\0\0\0\0\0\0{not json at all").unwrap();
        let e = format!("{:#}", load(&corrupt, isa, 1).unwrap_err());
        assert!(e.contains("corrupt.int8.safetensors"), "{e}");
        assert!(
            e.len() > "loading the int8 model ".len() + corrupt.as_os_str().len(),
            "{e}"
        );
        let empty = dir.join("empty.int8.safetensors");
        std::fs::write(&empty, b"").unwrap();
        assert!(load(&empty, isa, 1).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A saved model loads with its own input shape and times at every batch / thread count;
    /// a missing file makes the whole command fail.
    #[test]
    fn times_a_saved_model() {
        use qat_core::QParams;
        use qat_runtime::{Bias, LinearParams, ModelBuilder, Shape};
        let q = QParams {
            scale: 0.1,
            zero_point: 3,
        };
        let mut b = ModelBuilder::new();
        b.input("x", Shape::new(6, 1, 1), q).unwrap();
        let fc = LinearParams {
            out_features: 4,
            weight: (0..24).map(|i| i as i8 - 12).collect(),
            weight_scales: vec![0.02; 4],
            bias: Bias::None,
            output: q,
            activation: qat_kernels::Activation::None,
        };
        b.linear("fc", "x", fc).unwrap();
        b.dequantize("y", "fc").unwrap();
        let dir = std::env::temp_dir().join(format!("qat-bench-saved-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tiny.int8.safetensors");
        b.build("y").unwrap().save(&path).unwrap();
        let loaded = load(&path, qat_kernels::isa::active(), 1).unwrap();
        assert_eq!(loaded.input().shape, Shape::new(6, 1, 1));
        let mut args = Args {
            threads: vec![1, 2],
            reps: 1,
            model: Vec::new(),
            batch: vec![1, 3],
            no_float: true,
            peak_gmacs: 100.0,
            inspect: false,
            per_op: true,
            per_op_reps: 1,
            file: Some(path),
        };
        run(&args).unwrap();
        args.file = Some(dir.join("nope.int8.safetensors"));
        let e = format!("{:#}", run(&args).unwrap_err());
        assert!(e.contains("nope.int8.safetensors"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
