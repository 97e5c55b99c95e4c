//! `qat-bench dwconv`: GMAC/s of our depthwise 3×3 int8 kernel on MobileNetV2's depthwise
//! layers (224 width 1.0, and the 28×28 width-0.5 variant), batch 1: every kernel family this
//! CPU has at 1 thread, the best one at each requested thread count; candle's f32
//! `conv2d(groups = C)` on two layers as the yardstick.

use crate::json::emit;
use crate::timing::best_seconds;
use anyhow::Context;
use qat_core::QParams;
use qat_kernels::conv::Conv2dGeometry;
use qat_kernels::dwconv::shapes::{DwLayer, MOBILENET_V2_DW_LAYERS};
use qat_kernels::dwconv::DwConv;
use qat_kernels::{isa, Activation, Isa};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::time::Duration;

/// Arguments of `qat-bench dwconv`.
#[derive(clap::Args)]
pub struct Args {
    /// Thread counts for the best ISA (repeat the flag).
    #[arg(long, default_values_t = vec![1, 2])]
    threads: Vec<usize>,
    /// Timed batches per figure (the best is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Skip candle's f32 yardstick.
    #[arg(long)]
    no_candle: bool,
}

/// Layers candle is timed on (its per-channel loop is slow: two layers suffice).
const CANDLE_LAYERS: [(usize, usize, usize); 2] = [(144, 56, 1), (576, 14, 1)];

fn shape_fields(l: &DwLayer) -> Vec<(&'static str, serde_json::Value)> {
    vec![
        ("net", json!(l.net)),
        ("n", json!(1)),
        ("c", json!(l.c)),
        ("h", json!(l.hw)),
        ("w", json!(l.hw)),
        ("stride", json!(l.stride)),
        ("k", json!(3)),
    ]
}

fn report(bench_impl: &str, isa: &str, kernel: &str, threads: usize, l: &DwLayer, secs: f64) {
    let mut fields = vec![
        ("bench", json!("dwconv")),
        ("threads", json!(threads)),
        ("impl", json!(bench_impl)),
        ("isa", json!(isa)),
        ("kernel", json!(kernel)),
    ];
    fields.extend(shape_fields(l));
    fields.push(("gmacs", json!(l.macs() as f64 / secs / 1e9)));
    fields.push(("ms", json!(secs * 1e3)));
    emit(&fields);
}

/// Time ours on one layer: seconds per call and the kernel variant that ran.
fn time_ours(
    l: &DwLayer,
    isa: Isa,
    threads: usize,
    reps: usize,
) -> anyhow::Result<(f64, &'static str)> {
    let mut rng = StdRng::seed_from_u64(l.c as u64 * 1000 + l.hw as u64);
    let w: Vec<i8> = (0..l.c * 9).map(|_| rng.gen()).collect();
    let scales: Vec<f32> = (0..l.c).map(|_| rng.gen_range(0.002..0.02)).collect();
    let bias: Vec<i32> = (0..l.c).map(|_| rng.gen_range(-5000..5000)).collect();
    let dw = DwConv::new(
        l.c,
        Conv2dGeometry::square(3, l.stride, 1),
        &w,
        &scales,
        &bias,
        QParams {
            scale: 0.02,
            zero_point: 7,
        },
        QParams {
            scale: 0.05,
            zero_point: 3,
        },
        Activation::Relu6,
    )?;
    let x: Vec<u8> = (0..l.hw * l.hw * l.c).map(|_| rng.gen()).collect();
    let mut y = vec![0u8; l.out_hw() * l.out_hw() * l.c];
    let mut scratch = vec![0u8; dw.scratch_len(l.hw, l.hw, isa, threads)?];
    let run = || {
        dw.run_with_scratch(&x, 1, l.hw, l.hw, &mut y, isa, threads, &mut scratch)
            .expect("validated shapes");
    };
    let min_batch = Duration::from_millis(50);
    let kernel = dw.kernel_name(isa, l.hw)?;
    let secs = if threads <= 1 {
        best_seconds(run, reps, min_batch)
    } else {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .context("building the rayon pool")?;
        pool.install(|| best_seconds(run, reps, min_batch))
    };
    Ok((secs, kernel))
}

/// Time candle's f32 depthwise conv (NCHW, groups = C).
fn time_candle(l: &DwLayer, reps: usize) -> anyhow::Result<f64> {
    use candle_core::{Device, Tensor};
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (1, l.c, l.hw, l.hw), &dev)?;
    let k = Tensor::randn(0f32, 1.0, (l.c, 1, 3, 3), &dev)?;
    // One call up front surfaces an error instead of timing it.
    x.conv2d(&k, 1, l.stride, 1, l.c)?;
    Ok(best_seconds(
        || {
            x.conv2d(&k, 1, l.stride, 1, l.c).expect("checked above");
        },
        reps.min(3),
        Duration::from_millis(100),
    ))
}

/// Run the subcommand.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let best = isa::active();
    let mut families: Vec<Isa> = Vec::new();
    let probe = DwConv::new(
        1,
        Conv2dGeometry::square(3, 1, 1),
        &[0; 9],
        &[1.0],
        &[0],
        QParams {
            scale: 1.0,
            zero_point: 0,
        },
        QParams {
            scale: 1.0,
            zero_point: 0,
        },
        Activation::None,
    )?;
    for i in Isa::supported() {
        if i <= best
            && !families
                .iter()
                .any(|f| probe.kernel_isa(*f) == probe.kernel_isa(i))
        {
            families.push(i);
        }
    }
    for l in MOBILENET_V2_DW_LAYERS {
        for &i in &families {
            if i != best {
                let (secs, kernel) = time_ours(l, i, 1, args.reps)?;
                report("ours", probe.kernel_isa(i).name(), kernel, 1, l, secs);
            }
        }
        for &t in &args.threads {
            let (secs, kernel) = time_ours(l, best, t, args.reps)?;
            report("ours", probe.kernel_isa(best).name(), kernel, t, l, secs);
        }
        if !args.no_candle && CANDLE_LAYERS.contains(&(l.c, l.hw, l.stride)) {
            let secs = time_candle(l, args.reps)?;
            // candle sizes its own thread pool from RAYON_NUM_THREADS / the core count.
            let threads = candle_core::utils::get_num_threads();
            report(
                "candle-f32-conv2d-groups",
                "f32",
                "conv2d",
                threads,
                l,
                secs,
            );
        }
    }
    Ok(())
}
