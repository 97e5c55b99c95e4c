//! `qat-bench model`: latency of a whole int8 model through qat-runtime.
//!
//! Until `convert` produces trained models, the networks are built with
//! [`qat_runtime::ModelBuilder`] in MobileNetV2's exact architecture (torchvision's layer
//! shapes, ReLU6, residual adds, global pool, classifier) with random weights: the int8 kernels'
//! speed does not depend on the values. Lines carry `weights: "random"` to say so.

use crate::json::emit;
use crate::timing::best_seconds;
use anyhow::Context;
use qat_core::QParams;
use qat_runtime::{
    Activation, Bias, Conv2dParams, LinearParams, ModelBuilder, ModelOptions, Op, QuantizedModel,
    Shape,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
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
    /// Print the model summary (`inspect`) to stderr.
    #[arg(long)]
    inspect: bool,
}

/// One benchmarked configuration.
struct Config {
    name: &'static str,
    in_channels: usize,
    input: usize,
    width: f64,
    stem_stride: usize,
    setting: [[usize; 4]; 7],
    classes: usize,
    batches: &'static [usize],
}

const IMAGENET: [[usize; 4]; 7] = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
];
const SMALL: [[usize; 4]; 7] = [
    [1, 16, 1, 1],
    [6, 24, 2, 1],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
];

const CONFIGS: [Config; 2] = [
    Config {
        name: "mnv2-28-w0.5",
        in_channels: 1,
        input: 28,
        width: 0.5,
        stem_stride: 1,
        setting: SMALL,
        classes: 10,
        batches: &[1, 32],
    },
    Config {
        name: "mnv2-224-w1.0",
        in_channels: 3,
        input: 224,
        width: 1.0,
        stem_stride: 2,
        setting: IMAGENET,
        classes: 1000,
        batches: &[1],
    },
];

/// torchvision's `_make_divisible(v, 8)`.
fn make_divisible(v: f64) -> usize {
    let r = (((v + 4.0) as usize) / 8 * 8).max(8);
    if (r as f64) < 0.9 * v {
        r + 8
    } else {
        r
    }
}

struct Gen {
    rng: StdRng,
}

impl Gen {
    fn conv(
        &mut self,
        ci: usize,
        co: usize,
        k: usize,
        stride: usize,
        groups: usize,
        act: Activation,
    ) -> Conv2dParams {
        let fan_in = (ci / groups * k * k) as f32;
        Conv2dParams {
            out_channels: co,
            kernel: (k, k),
            stride: (stride, stride),
            padding: (k / 2, k / 2),
            dilation: (1, 1),
            groups,
            weight: (0..co * ci / groups * k * k)
                .map(|_| self.rng.gen_range(-127i32..=127) as i8)
                .collect(),
            weight_scales: (0..co)
                .map(|_| self.rng.gen_range(0.5f32..1.5) / (127.0 * fan_in.sqrt()))
                .collect(),
            bias: Bias::I32((0..co).map(|_| self.rng.gen_range(-500..500)).collect()),
            output: if act == Activation::None {
                QParams {
                    scale: 0.08,
                    zero_point: 128,
                }
            } else {
                QParams {
                    scale: 6.0 / 255.0,
                    zero_point: 0,
                }
            },
            activation: act,
        }
    }
}

/// MobileNetV2 as an int8 plan: quantize → stem → inverted residuals → last 1×1 → pool →
/// flatten → linear → dequantize.
fn build(cfg: &Config, options: ModelOptions) -> anyhow::Result<QuantizedModel> {
    let mut g = Gen {
        rng: StdRng::seed_from_u64(7),
    };
    let mut b = ModelBuilder::new();
    let input_q = QParams {
        scale: 0.02,
        zero_point: 128,
    };
    b.input(
        "x",
        Shape::new(cfg.in_channels, cfg.input, cfg.input),
        input_q,
    )?;
    let mut c = make_divisible(32.0 * cfg.width);
    b.conv2d(
        "features.0",
        "x",
        g.conv(cfg.in_channels, c, 3, cfg.stem_stride, 1, Activation::Relu6),
    )?;
    let mut prev = "features.0".to_string();
    let mut idx = 1;
    for &[t, co, reps, s] in &cfg.setting {
        let oc = make_divisible(co as f64 * cfg.width);
        for r in 0..reps {
            let stride = if r == 0 { s } else { 1 };
            let hidden = (c as f64 * t as f64).round() as usize;
            let block = format!("features.{idx}");
            let mut x = prev.clone();
            if t != 1 {
                let n = format!("{block}.expand");
                b.conv2d(&n, &x, g.conv(c, hidden, 1, 1, 1, Activation::Relu6))?;
                x = n;
            }
            let dw = format!("{block}.dw");
            b.conv2d(
                &dw,
                &x,
                g.conv(hidden, hidden, 3, stride, hidden, Activation::Relu6),
            )?;
            let pw = format!("{block}.project");
            b.conv2d(&pw, &dw, g.conv(hidden, oc, 1, 1, 1, Activation::None))?;
            prev = if stride == 1 && c == oc {
                let add = format!("{block}.add");
                b.add(
                    &add,
                    &prev,
                    &pw,
                    QParams {
                        scale: 0.1,
                        zero_point: 128,
                    },
                    Activation::None,
                )?;
                add
            } else {
                pw
            };
            c = oc;
            idx += 1;
        }
    }
    let last = make_divisible(1280.0 * cfg.width.max(1.0));
    b.conv2d(
        "features.last",
        &prev,
        g.conv(c, last, 1, 1, 1, Activation::Relu6),
    )?;
    b.global_avg_pool("pool", "features.last", None)?;
    b.flatten("flatten", "pool")?;
    b.linear(
        "classifier",
        "flatten",
        LinearParams {
            out_features: cfg.classes,
            weight: (0..cfg.classes * last)
                .map(|_| g.rng.gen_range(-127i32..=127) as i8)
                .collect(),
            weight_scales: vec![1.0 / (127.0 * (last as f32).sqrt()); cfg.classes],
            bias: Bias::None,
            output: QParams {
                scale: 0.1,
                zero_point: 128,
            },
            activation: Activation::None,
        },
    )?;
    b.dequantize("logits", "classifier")?;
    Ok(b.build_with("logits", options)?)
}

/// Multiply-accumulates per image of the quantized convs and linears.
fn macs(m: &QuantizedModel) -> usize {
    let mut c_in = std::collections::HashMap::new();
    c_in.insert(m.input().name.clone(), m.input().shape.c);
    let mut total = 0;
    for n in m.ops() {
        match &n.op {
            Op::Conv2d { params: p, input } => {
                let ci = c_in[input];
                total +=
                    n.shape.c * n.shape.h * n.shape.w * (ci / p.groups) * p.kernel.0 * p.kernel.1;
            }
            Op::Linear { params: p, .. } => total += p.weight.len(),
            _ => {}
        }
        c_in.insert(n.name.clone(), n.shape.c);
    }
    total
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let isa = qat_kernels::isa::active();
    for cfg in &CONFIGS {
        for &threads in &args.threads {
            let model = build(
                cfg,
                ModelOptions {
                    isa: Some(isa),
                    threads,
                },
            )
            .with_context(|| format!("building {}", cfg.name))?;
            if args.inspect && threads == args.threads[0] {
                eprintln!("{}", model.inspect());
            }
            let per_image = macs(&model);
            for &batch in cfg.batches {
                let mut r = StdRng::seed_from_u64(11);
                let x: Vec<f32> = (0..model.input_len(batch)?)
                    .map(|_| r.gen_range(-2.5f32..2.5))
                    .collect();
                let mut out = vec![0f32; model.output_len(batch)?];
                let mut failed = None;
                let secs = best_seconds(
                    || {
                        if let Err(e) = model.run_into(&x, batch, &mut out) {
                            failed = Some(e);
                        }
                    },
                    args.reps,
                    Duration::from_millis(200),
                );
                if let Some(e) = failed {
                    return Err(e).context(cfg.name);
                }
                emit(&[
                    ("bench", json!("model")),
                    ("threads", json!(threads)),
                    ("impl", json!("ours")),
                    ("isa", json!(isa.to_string())),
                    ("model", json!(cfg.name)),
                    ("weights", json!("random")),
                    ("c", json!(cfg.in_channels)),
                    ("h", json!(cfg.input)),
                    ("w", json!(cfg.input)),
                    ("width", json!(cfg.width)),
                    ("batch", json!(batch)),
                    ("macs_per_image", json!(per_image)),
                    (
                        "gmacs",
                        json!(((per_image * batch) as f64 / secs / 1e9 * 10.0).round() / 10.0),
                    ),
                    ("ms", json!(secs * 1e3)),
                    ("ms_per_image", json!(secs * 1e3 / batch as f64)),
                ]);
            }
        }
    }
    Ok(())
}
