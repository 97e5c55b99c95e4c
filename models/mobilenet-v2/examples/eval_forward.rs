//! Time one fp32 eval forward of MobileNetV2 (small config) after a warm-up run.
//!
//! `cargo run --release -p mobilenet-v2 --example eval_forward -- [width] [batch] [candle|fast]`

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use mobilenet_v2::{build, MobileNetV2Config};
use qat_graph::{GraphModule, OpsPath};

// Candle frees and reallocates large buffers every op; mimalloc keeps them (MEASURED.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let width: f64 = args.get(1).map_or(Ok(0.5), |s| s.parse())?;
    let batch: usize = args.get(2).map_or(Ok(32), |s| s.parse())?;
    let path = match args.get(3).map(String::as_str) {
        None | Some("fast") => OpsPath::Fast,
        Some("candle") => OpsPath::Candle,
        Some(p) => return Err(format!("unknown ops path {p:?} (candle | fast)").into()),
    };
    let cfg = MobileNetV2Config::small(1, 28, width, 10);
    let mut m = GraphModule::new(build(&cfg)?, 0, &Device::Cpu)?;
    m.set_ops_path(path);
    let x = Tensor::randn(0f32, 1f32, (batch, 1, 28, 28), &Device::Cpu)?.to_dtype(DType::F32)?;
    m.forward_t(&x, false)?;
    let t = Instant::now();
    let y = m.forward_t(&x, false)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    println!(
        "mobilenet_v2 28x28 width {width} batch {batch} ops {path:?}: eval forward {ms:.1} ms \
         ({} threads), output {:?}",
        candle_core::utils::get_num_threads(),
        y.dims()
    );
    Ok(())
}
