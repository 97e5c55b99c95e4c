//! `qat-bench`: throughput of candle-qat's int8 kernels, printed as one JSON object per line.
//!
//! Every line carries `bench`, `threads`, `impl` (`ours` or the peer's name), `isa`, the shape
//! fields and the figure (`gmacs`, GMAC/s, and `ms`). Subcommands live in one module each;
//! a new one is a module plus one enum arm below.
//!
//! ```text
//! taskset -c 1 qat-bench peak
//! qat-bench gemm --threads 1 --threads 2
//! ```

use clap::{Parser, Subcommand};

mod all;
mod dwconv;
mod gemm;
mod json;
mod model;
mod peak;
mod timing;
mod train_step;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "qat-bench", about = "int8 kernel benchmarks as JSON lines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Instruction peaks: int8 dot products (VNNI zmm / ymm, AVX2) and f32 FMA.
    Peak(peak::Args),
    /// GEMM throughput: ours on every supported ISA, tract-linalg's int8 matmul, candle f32.
    Gemm(gemm::Args),
    /// Whole int8 models through qat-runtime (MobileNetV2 28×28 w0.5 and 224 w1.0).
    Model(model::Args),
    /// Depthwise 3×3 throughput on MobileNetV2's layers; candle f32 as the yardstick.
    Dwconv(dwconv::Args),
    /// MobileNetV2 training step (fp32 / QAT) in ms: forward, backward, SGD.
    TrainStep(train_step::Args),
    /// Every section above in one markdown report (+ JSON lines), with the machine's details.
    All(all::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Peak(args) => peak::run(&args),
        Command::Gemm(args) => gemm::run(&args),
        Command::Model(args) => model::run(&args),
        Command::Dwconv(args) => dwconv::run(&args),
        Command::TrainStep(args) => train_step::run(&args),
        Command::All(args) => all::run(&args),
    }
}
