//! Stage 1: plain fp32 training (SGD Nesterov, cosine with linear warm-up, weight decay on
//! conv / linear weights only).

use qat_data::Loader;
use qat_graph::{CosineWarmup, GraphModule, SgdConfig, WeightDecay};

use super::config::PipelineConfig;
use super::error::Result;
use super::eval::evaluate;
use super::train::{train, TrainCurve, TrainSpec};

/// Train `m` in place; returns the curves (a test evaluation after every epoch).
pub fn train_fp32(
    cfg: &PipelineConfig,
    m: &GraphModule,
    train_loader: &Loader,
    test_loader: &Loader,
) -> Result<TrainCurve> {
    let total = cfg.epochs * train_loader.batches_per_epoch();
    let warmup = ((total as f64 * cfg.warmup_fraction) as usize).min(total - 1);
    let spec = TrainSpec {
        label: "fp32",
        epochs: cfg.epochs,
        schedule: CosineWarmup::new(cfg.lr, 0.0, warmup, total)?,
        sgd: SgdConfig {
            lr: cfg.lr,
            momentum: cfg.momentum,
            nesterov: cfg.momentum > 0.0,
            weight_decay: WeightDecay::Coupled(cfg.weight_decay),
            ..SgdConfig::default()
        },
        progress: cfg.progress,
    };
    // The fused graph (Conv+BN+ReLU6 as one node, fused train ops) shares `m`'s variables
    // and trains faster.
    let fused = m.fused()?;
    train(&fused, train_loader, &spec, &mut |_| Ok(()), &mut || {
        evaluate(test_loader, |x| Ok(fused.forward_t(x, false)?))
    })
}
