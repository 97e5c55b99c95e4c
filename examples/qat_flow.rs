//! The library flow on your own model: build a float graph → fuse → prepare for QAT → train a
//! few steps with fake quantization → freeze → convert to int8 → run (and save / load).
//!
//! ```sh
//! cargo run --release --example qat_flow
//! ```
//!
//! The task is synthetic (bright vs dark 8×8 images with noise), so the example needs no data
//! and finishes in a second; the MobileNetV2 main job (`-p mobilenet-v2 --example
//! qat_fashion_mnist`) is the same flow at full size.

use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};
use candle_qat::graph::{BnCfg, Conv2dCfg, LinearCfg};
use candle_qat::prelude::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `n` 1×8×8 images: class 1 has mean +0.5, class 0 mean −0.5, uniform noise ±1 (a fixed
/// xorshift stream, so every run sees the same data).
fn batch(n: usize, state: &mut u64) -> Result<(Tensor, Tensor)> {
    let mut next = || {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state >> 40) as f32 / (1u64 << 24) as f32
    };
    let labels: Vec<u32> = (0..n).map(|i| (i % 2) as u32).collect();
    let pixels: Vec<f32> = labels
        .iter()
        .flat_map(|&l| {
            let mean = if l == 1 { 0.5 } else { -0.5 };
            (0..64)
                .map(|_| mean + 2.0 * next() - 1.0)
                .collect::<Vec<_>>()
        })
        .collect();
    Ok((
        Tensor::from_vec(pixels, (n, 1, 8, 8), &Device::Cpu)?,
        Tensor::from_vec(labels, n, &Device::Cpu)?,
    ))
}

fn main() -> Result<()> {
    // 1. Your model: a graph of named nodes (PyTorch-style names become state_dict keys).
    let mut g = Graph::new();
    let x = g.input("x", [1, 8, 8])?;
    let x = g.conv2d("conv", x, Conv2dCfg::new(1, 8, 3).padding(1).bias(false))?;
    let x = g.batch_norm2d("bn", x, BnCfg::new(8))?;
    let x = g.relu("relu", x)?;
    let x = g.global_avg_pool("pool", x)?;
    let x = g.flatten("flatten", x)?;
    let fc = LinearCfg {
        in_features: 8,
        out_features: 2,
        bias: true,
    };
    g.linear("fc", x, fc)?;

    // 2–3. Fuse (conv+bn+relu → one node) and prepare for QAT: observers and fake-quants are
    // placed automatically, BN is folded PyTorch's way. No manual model surgery.
    let qat = prepare_qat(&fuse(&g)?, &QConfig::default_qat())?;
    println!("fake-quant modules: {:?}", qat.fake_quant_names());

    // 4. Train with fake quantization; freeze BN statistics and observers for the last steps.
    let cfg = SgdConfig {
        lr: 0.05,
        momentum: 0.9,
        nesterov: true,
        ..SgdConfig::default()
    };
    let mut opt = Sgd::new(qat.trainable(), cfg)?;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for step in 0..40 {
        if step == 30 {
            qat.freeze_bn_stats();
            qat.enable_observers(false);
        }
        let (x, y) = batch(32, &mut rng)?;
        let loss = candle_nn::loss::cross_entropy(&qat.forward_t(&x, true)?, &y)?;
        opt.backward_step(&loss)?;
        if step % 10 == 0 {
            println!("step {step:>2}: loss {:.4}", loss.to_scalar::<f32>()?);
        }
    }

    // 5. Convert to a real int8 model (BN folded, weights quantized and packed for this CPU)
    //    and run it: f32 in, f32 out, int8 inside. It agrees with the fake-quant model.
    let int8 = convert(&qat)?;
    let (x, y) = batch(256, &mut rng)?;
    let accuracy = |logits: &Tensor| -> Result<(Tensor, f32)> {
        let pred = logits.argmax(1)?;
        let correct = pred.eq(&y)?.to_dtype(candle_core::DType::F32)?.sum_all()?;
        Ok((pred, correct.to_scalar::<f32>()? / 256.0))
    };
    let (p_fq, acc_fq) = accuracy(&qat.forward_t(&x, false)?)?;
    let (p_i8, acc_i8) = accuracy(&int8.run_tensor(&x)?)?;
    let same = p_fq
        .eq(&p_i8)?
        .to_dtype(candle_core::DType::F32)?
        .sum_all()?;
    println!(
        "accuracy on 256 fresh images: fake-quant {:.1}%, int8 {:.1}% (same prediction on {} of \
         256, ISA {})",
        100.0 * acc_fq,
        100.0 * acc_i8,
        same.to_scalar::<f32>()?,
        int8.isa()
    );
    ensure!(
        acc_i8 > 0.9,
        "the toy task should be learned (int8 accuracy {acc_i8})"
    );

    // The int8 model is one file; loading packs it for whatever CPU runs it.
    let path = std::env::temp_dir().join("qat_flow.int8.safetensors");
    int8.save(&path)?;
    let loaded = QuantizedModel::load(&path)?;
    ensure!(loaded.run_tensor(&x)?.to_vec2::<f32>()? == int8.run_tensor(&x)?.to_vec2::<f32>()?);
    println!("saved and reloaded {}", path.display());
    Ok(())
}
