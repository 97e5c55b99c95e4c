//! Fake-quantize real Fashion-MNIST images and print what each observer chose.
//!
//! ```sh
//! cargo run --release --example observe_fashion_mnist -- [--images N] [--data-dir DIR]
//! ```
//!
//! Every observer watches the same tensors in batches — the normalized test images, and the
//! responses of a fixed random 3×3 filter bank to them (activation-like: long tails, where
//! the observers disagree). Each table shows the range an observer settled on, its u8 scale / zero point, the fake-quant error against the float
//! images, the share of values clipped, and the share of gradient the clipped
//! straight-through estimator lets through (from a real backward pass).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use candle_qat::data::{load, Split};
use candle_qat::fakequant::{FakeQuantize, FusedMovingAvgObsFakeQuantize};
use candle_qat::observer::{
    HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver, Observer, ObserverConfig,
    PercentileObserver,
};
use candle_qat::prelude::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Fashion-MNIST normalization (the training mean / std of the pixels in [0, 1]).
const MEAN: f32 = 0.286;
const STD: f32 = 0.353;
const BATCH: usize = 100;

struct Args {
    images: usize,
    data_dir: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        images: 2000,
        data_dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--images" => {
                args.images = it
                    .next()
                    .context("--images needs a number")?
                    .parse()
                    .context("--images needs a number")?
            }
            "--data-dir" => {
                args.data_dir = Some(it.next().context("--data-dir needs a path")?.into())
            }
            "-h" | "--help" => {
                println!("usage: observe_fashion_mnist [--images N] [--data-dir DIR]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if args.images == 0 {
        bail!("--images must be at least 1");
    }
    Ok(args)
}

/// Either kind of fake-quant module, behind one face.
enum Fq {
    Plain(FakeQuantize),
    Fused(FusedMovingAvgObsFakeQuantize),
}

impl Fq {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Fq::Plain(m) => m.forward(x),
            Fq::Fused(m) => m.forward(x),
        }
    }
    fn enable_observer(&self, on: bool) {
        match self {
            Fq::Plain(m) => m.enable_observer(on),
            Fq::Fused(m) => m.enable_observer(on),
        }
    }
    fn qparams(&self) -> candle_core::Result<TensorQParams> {
        match self {
            Fq::Plain(m) => m.qparams(),
            Fq::Fused(m) => m.qparams(),
        }
    }
}

fn modules(dtype: QDType) -> Result<Vec<(&'static str, Fq)>> {
    let cfg = ObserverConfig::new(dtype, QScheme::PerTensorAffine);
    let plain = |o: Box<dyn Observer>| Fq::Plain(FakeQuantize::new(o));
    Ok(vec![
        ("MinMax", plain(Box::new(MinMaxObserver::new(cfg)?))),
        (
            "MovingAverageMinMax(0.01)",
            plain(Box::new(MovingAverageMinMaxObserver::new(cfg, 0.01)?)),
        ),
        (
            "FusedMovingAvgObsFakeQuantize",
            Fq::Fused(FusedMovingAvgObsFakeQuantize::new(cfg, 0.01)?),
        ),
        (
            "Histogram(2048)",
            plain(Box::new(HistogramObserver::new(cfg, 2048)?)),
        ),
        (
            "Percentile(0.01, 99.99)",
            plain(Box::new(PercentileObserver::with_defaults(cfg)?)),
        ),
    ])
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let mut data = load("fashion-mnist", Split::Test, args.data_dir.as_deref())?;
    data.truncate(args.images);
    let n = data.len();
    let (h, w) = (data.rows, data.cols);
    let images = Tensor::from_vec(data.normalized(MEAN, STD), (n, 1, h, w), &Device::Cpu)?;
    let (lo, hi) = (
        images.min_all()?.to_scalar::<f32>()?,
        images.max_all()?.to_scalar::<f32>()?,
    );
    println!("Fashion-MNIST test: {n} images {h}x{w}, normalized range [{lo:.4}, {hi:.4}]\n");
    let features = images.conv2d(&filter_bank(8)?, 1, 1, 1, 1)?;

    let u8 = QDType::quint8();
    let u4 = QDType::unsigned(4)?;
    for (what, x, label, dtype) in [
        ("images", &images, "u8", u8),
        ("3x3 filter responses", &features, "u8", u8),
        ("3x3 filter responses", &features, "u4", u4),
    ] {
        report(what, x, label, dtype)?;
    }
    println!("rmse: fake-quant vs float; clipped: values outside the representable range;");
    println!("grad: share of the upstream gradient the clipped straight-through estimator passes.");
    Ok(())
}

/// `c` seeded random 3×3 filters (a fixed xorshift stream, so runs are comparable).
fn filter_bank(c: usize) -> Result<Tensor> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let w: Vec<f32> = (0..c * 9)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    Ok(Tensor::from_vec(w, (c, 1, 3, 3), &Device::Cpu)?)
}

fn report(what: &str, images: &Tensor, label: &str, dtype: QDType) -> Result<()> {
    let n = images.dim(0)?;
    {
        let (lo, hi) = (
            images.min_all()?.to_scalar::<f32>()?,
            images.max_all()?.to_scalar::<f32>()?,
        );
        println!(
            "{what} [{lo:.3}, {hi:.3}] as {label} {:?}, per tensor affine",
            dtype.range()
        );
        println!(
            "{:<30} {:>18} {:>11} {:>4} {:>10} {:>9} {:>9}",
            "observer", "range", "scale", "zp", "rmse", "clipped", "grad"
        );
        for (name, fq) in modules(dtype)? {
            // Observe every batch (the training-time pass), then freeze and measure.
            for start in (0..n).step_by(BATCH) {
                let len = BATCH.min(n - start);
                fq.forward(&images.narrow(0, start, len)?)?;
            }
            fq.enable_observer(false);
            let q = fq.qparams()?.get(0);
            let x = Var::from_tensor(images)?;
            let y = fq.forward(x.as_tensor())?;
            let grads = y.sum_all()?.backward()?;
            let g = grads
                .get(x.as_tensor())
                .context("no gradient reached the input")?;
            let passed = g.sum_all()?.to_scalar::<f32>()? / images.elem_count() as f32;
            let rmse = (y - images)?
                .sqr()?
                .mean_all()?
                .sqrt()?
                .to_scalar::<f32>()?;
            let (qmin, qmax) = dtype.range();
            let (rlo, rhi) = (dequantize(qmin, q), dequantize(qmax, q));
            let clipped = images
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .filter(|&&v| v < rlo - q.scale / 2.0 || v > rhi + q.scale / 2.0)
                .count() as f32
                / images.elem_count() as f32;
            println!(
                "{name:<30} [{rlo:>7.3}, {rhi:>7.3}] {:>11.6} {:>4} {rmse:>10.5} {:>8.3}% {:>8.3}%",
                q.scale,
                q.zero_point,
                clipped * 100.0,
                passed * 100.0
            );
        }
        println!();
    }
    Ok(())
}
