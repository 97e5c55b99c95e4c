//! `qat-bench gemm`: GMAC/s of our packed int8 GEMM (u8 output with the fused requant
//! epilogue, and the i32 form), tract-linalg's int8 matmul (i8 × i8 → i32, its preferred
//! kernel, packed A and B, stored to an i32 matrix), and candle's f32 matmul, on the issue's
//! shapes and MobileNetV2's 1×1 convolutions (as GEMMs over pixels).

use crate::json::emit;
use crate::timing::best_seconds;
use anyhow::{anyhow, Context};
use qat_core::Requant;
use qat_kernels::gemm::PackedGemm;
use qat_kernels::Isa;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::time::Duration;

/// Arguments of `qat-bench gemm`.
#[derive(clap::Args)]
pub struct Args {
    /// Thread counts to run (repeat the flag).
    #[arg(long, default_values_t = vec![1, 2])]
    threads: Vec<usize>,
    /// Skip the MobileNetV2 layers.
    #[arg(long)]
    no_mobilenet: bool,
    /// Also time the scalar reference kernel (slow: ~1 GMAC/s).
    #[arg(long)]
    scalar: bool,
    /// Timed batches per figure (the best is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
}

/// One GEMM shape and where it comes from.
struct Shape {
    set: String,
    m: usize,
    k: usize,
    n: usize,
}

fn issue_shapes() -> Vec<Shape> {
    [
        (784, 96, 576),
        (196, 192, 1152),
        (3136, 32, 192),
        (1024, 1024, 1024),
    ]
    .into_iter()
    .map(|(m, k, n)| Shape {
        set: "issue".into(),
        m,
        k,
        n,
    })
    .collect()
}

/// torchvision's `_make_divisible(v, 8)`.
fn make_divisible(v: f64) -> usize {
    let r = (((v + 4.0) as usize) / 8 * 8).max(8);
    if (r as f64) < 0.9 * v {
        r + 8
    } else {
        r
    }
}

/// The distinct 1×1 convolutions of MobileNetV2 (expand, project, last), as (M, K, N).
fn mobilenet_shapes(
    set: &str,
    input: usize,
    width: f64,
    stem_stride: usize,
    setting: &[[usize; 4]],
) -> Vec<Shape> {
    let mut out: Vec<Shape> = Vec::new();
    let mut push = |m: usize, k: usize, n: usize| {
        if !out.iter().any(|s| (s.m, s.k, s.n) == (m, k, n)) {
            out.push(Shape {
                set: set.into(),
                m,
                k,
                n,
            });
        }
    };
    let mut c = make_divisible(32.0 * width);
    let mut res = input.div_ceil(stem_stride);
    for &[t, co, reps, s] in setting {
        let oc = make_divisible(co as f64 * width);
        for r in 0..reps {
            let stride = if r == 0 { s } else { 1 };
            let hidden = (c as f64 * t as f64).round() as usize;
            if t != 1 {
                push(res * res, c, hidden);
            }
            res = res.div_ceil(stride);
            push(res * res, hidden, oc);
            c = oc;
        }
    }
    push(res * res, c, make_divisible(1280.0 * width.max(1.0)));
    out
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

pub fn run(args: &Args) -> anyhow::Result<()> {
    let mut shapes = issue_shapes();
    if !args.no_mobilenet {
        shapes.extend(mobilenet_shapes("mnv2-224-w1.0", 224, 1.0, 2, &IMAGENET));
        shapes.extend(mobilenet_shapes("mnv2-28-w0.5", 28, 0.5, 1, &SMALL));
    }
    let best = qat_kernels::isa::active();
    for &threads in &args.threads {
        for s in &shapes {
            let issue = s.set == "issue";
            let isas: Vec<Isa> = if issue {
                Isa::supported()
                    .into_iter()
                    .filter(|&i| args.scalar || i != Isa::Scalar)
                    .collect()
            } else {
                vec![best]
            };
            for isa in isas {
                ours(args, s, isa, threads, false)?;
                if issue && isa == best {
                    ours(args, s, isa, threads, true)?;
                }
            }
            tract(args, s, threads)?;
            if issue {
                candle(args, s, threads)?;
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn line(s: &Shape, threads: usize, imp: &str, isa: &str, kernel: &str, output: &str, secs: f64) {
    let macs = (s.m * s.k * s.n) as f64;
    emit(&[
        ("bench", json!("gemm")),
        ("threads", json!(threads)),
        ("impl", json!(imp)),
        ("isa", json!(isa)),
        ("kernel", json!(kernel)),
        ("output", json!(output)),
        ("set", json!(s.set)),
        ("m", json!(s.m)),
        ("k", json!(s.k)),
        ("n", json!(s.n)),
        ("gmacs", json!((macs / secs / 1e9 * 10.0).round() / 10.0)),
        ("ms", json!(secs * 1e3)),
    ]);
}

fn ours(args: &Args, s: &Shape, isa: Isa, threads: usize, i32_out: bool) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(1);
    let a: Vec<u8> = (0..s.m * s.k).map(|_| rng.gen()).collect();
    let w: Vec<i8> = (0..s.n * s.k).map(|_| rng.gen()).collect();
    let bias: Vec<i32> = (0..s.n).map(|_| rng.gen_range(-1000..1000)).collect();
    let rq: Vec<Requant> = (0..s.n)
        .map(|_| Requant {
            multiplier: 1.0 / (64.0 * s.k as f32),
            zero_point: 128,
            qmin: 0,
            qmax: 255,
        })
        .collect();
    let g = PackedGemm::new(&w, s.n, s.k, Some(&bias), 3, &rq, isa)?;
    let secs = if i32_out {
        let mut out = vec![0i32; s.m * s.n];
        best_seconds(
            || g.gemm_i32(&a, s.m, s.k, &mut out, s.n, threads).unwrap(),
            args.reps,
            Duration::from_millis(60),
        )
    } else {
        let mut out = vec![0u8; s.m * s.n];
        best_seconds(
            || g.gemm_u8(&a, s.m, s.k, &mut out, s.n, threads).unwrap(),
            args.reps,
            Duration::from_millis(60),
        )
    };
    let output = if i32_out { "i32" } else { "u8" };
    line(
        s,
        threads,
        "ours",
        isa.name(),
        g.kernel_name(),
        output,
        secs,
    );
    Ok(())
}

fn tract(args: &Args, s: &Shape, threads: usize) -> anyhow::Result<()> {
    use tract_data::prelude::*;
    use tract_linalg::mmm::{AsInputValue, FusedSpec};
    use tract_linalg::multithread::{multithread_tract_scope, Executor};
    use tract_linalg::WeightType;

    let mmm = tract_linalg::MmmDispatch::native()
        .preferred_kernel(DatumType::I32, Some(s.m), Some(s.k), Some(s.n))
        .ok_or_else(|| anyhow!("tract-linalg has no i32 kernel"))?;
    let packing = mmm
        .packings()
        .iter()
        .position(|(pa, pb)| {
            matches!(pa.precursor(), WeightType::Plain(DatumType::I8))
                && matches!(pb.precursor(), WeightType::Plain(DatumType::I8))
        })
        .ok_or_else(|| anyhow!("tract kernel {} has no i8×i8 packing", mmm.name()))?;
    let mut rng = StdRng::seed_from_u64(1);
    let a: Vec<i8> = (0..s.m * s.k).map(|_| rng.gen()).collect();
    let b: Vec<i8> = (0..s.k * s.n).map(|_| rng.gen()).collect();
    let a = Tensor::from_shape(&[s.m, s.k], &a)?;
    let b = Tensor::from_shape(&[s.k, s.n], &b)?;
    let (pack_a, pack_b) = &mmm.packings()[packing];
    let pa = pack_a.prepare_one(&a, 1, 0).context("tract packs A")?;
    let pb = pack_b.prepare_one(&b, 0, 1).context("tract packs B")?;
    let mut c = Tensor::zero::<i32>(&[s.m, s.n])?;
    // SAFETY (tract API): scratch is used with the kernel that allocated it; `c` outlives the
    // store spec that points into it, and its shape is m × n as the view says.
    let mut scratch = unsafe { mmm.allocate_scratch_space() };
    let mut body = || {
        let store = unsafe { mmm.c_view(Some(0), Some(1)).wrap(&c.view_mut()) };
        unsafe {
            mmm.run_with_scratch_space(
                s.m,
                s.n,
                scratch.as_mut(),
                &[
                    FusedSpec::AddMatMul {
                        a: AsInputValue::Borrowed(&*pa),
                        b: AsInputValue::Borrowed(&*pb),
                        packing,
                    },
                    FusedSpec::Store(store),
                ],
            )
            .unwrap()
        }
    };
    let secs = if threads == 1 {
        best_seconds(&mut body, args.reps, Duration::from_millis(60))
    } else {
        multithread_tract_scope(Executor::multithread(threads), || {
            best_seconds(&mut body, args.reps, Duration::from_millis(60))
        })
    };
    line(
        s,
        threads,
        "tract-linalg",
        "native",
        mmm.name(),
        "i32",
        secs,
    );
    Ok(())
}

fn candle(args: &Args, s: &Shape, threads: usize) -> anyhow::Result<()> {
    use candle_core::{Device, Tensor};
    // candle's CPU matmul (gemm crate) sizes its pool from RAYON_NUM_THREADS at first use;
    // a scoped pool pins the thread count for this measurement.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let a = Tensor::randn(0f32, 1.0, (s.m, s.k), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (s.k, s.n), &Device::Cpu)?;
    let secs = pool.install(|| {
        best_seconds(
            || {
                let _ = a.matmul(&b).unwrap();
            },
            args.reps,
            Duration::from_millis(60),
        )
    });
    line(
        s,
        threads,
        "candle-f32",
        "native",
        "candle matmul",
        "f32",
        secs,
    );
    Ok(())
}
