//! Stage 3: quantization-aware fine-tuning of the trained fp32 model — `prepare_qat` with the
//! chosen preset, SGD with a small cosine learning rate, BN statistics frozen and observers
//! off partway (PyTorch's recipe), evaluated with observers off after every epoch.

use candle_core::Tensor;
use qat_data::Loader;
use qat_graph::{prepare_qat_module, CosineWarmup, GraphModule, QatGraph, SgdConfig, WeightDecay};
use serde::{Deserialize, Serialize};

use super::config::PipelineConfig;
use super::error::Result;
use super::eval::evaluate;
use super::histogram::{activation_histograms, weight_histograms, RangeHistogram};
use super::train::{train, TrainCurve, TrainSpec};

/// QAT figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QatMetrics {
    pub curve: TrainCurve,
    /// Global step at which BN froze / observers stopped (`None`: never during training;
    /// both always hold at the end).
    pub bn_frozen_at_step: Option<usize>,
    pub observers_off_at_step: Option<usize>,
    pub weight_histograms: Vec<RangeHistogram>,
    pub activation_histograms: Vec<RangeHistogram>,
}

/// Evaluate with every observer off (an eval forward would otherwise move the qparams), then
/// restore each observer's switch.
pub fn eval_frozen(q: &QatGraph, test_loader: &Loader) -> Result<super::eval::EvalResult> {
    let on: Vec<bool> = q
        .fake_quants()
        .map(|f| f.observer_enabled())
        .collect::<qat_graph::Result<_>>()?;
    q.enable_observers(false);
    let r = evaluate(test_loader, |x| Ok(q.forward_t(x, false)?));
    for (f, on) in q.fake_quants().zip(on) {
        f.enable_observer(on);
    }
    r
}

/// Fine-tune a QAT copy of `fp32` (its own variables). Ends with BN frozen and observers off,
/// ready for `convert`. `sample` (a batch of images) feeds the activation histograms.
pub fn run_qat(
    cfg: &PipelineConfig,
    fp32: GraphModule,
    train_loader: &Loader,
    test_loader: &Loader,
    sample: &Tensor,
) -> Result<(QatGraph, QatMetrics)> {
    let q = prepare_qat_module(fp32, &cfg.qconfig.qconfig()?)?;
    let steps = cfg.qat_epochs * train_loader.batches_per_epoch();
    let freeze_at = (steps as f64 * cfg.freeze_bn_at).round() as usize;
    let obs_off_at = (steps as f64 * cfg.observers_off_at).round() as usize;
    let (mut bn_frozen_at_step, mut observers_off_at_step) = (None, None);
    let curve = {
        let spec = TrainSpec {
            label: "QAT",
            epochs: cfg.qat_epochs,
            schedule: CosineWarmup::new(cfg.qat_lr, 0.0, 0, steps)?,
            sgd: SgdConfig {
                lr: cfg.qat_lr,
                momentum: cfg.momentum,
                nesterov: cfg.momentum > 0.0,
                weight_decay: WeightDecay::Coupled(cfg.weight_decay),
                max_grad_norm: cfg.qat_max_grad_norm,
                ..SgdConfig::default()
            },
            progress: cfg.progress,
        };
        // Observers must see data before they can stop: never switch them off at step 0.
        let mut before = |t: usize| {
            if t == freeze_at && t > 0 && bn_frozen_at_step.is_none() {
                q.freeze_bn_stats();
                bn_frozen_at_step = Some(t);
            }
            if t == obs_off_at && t > 0 && observers_off_at_step.is_none() {
                q.enable_observers(false);
                observers_off_at_step = Some(t);
            }
            Ok(())
        };
        train(&q, train_loader, &spec, &mut before, &mut || {
            eval_frozen(&q, test_loader)
        })?
    };
    q.freeze_bn_stats();
    q.enable_observers(false);
    let weight_histograms = weight_histograms(&q, "QAT")?;
    let activation_histograms = activation_histograms(&q, sample, "QAT")?;
    Ok((
        q,
        QatMetrics {
            curve,
            bn_frozen_at_step,
            observers_off_at_step,
            weight_histograms,
            activation_histograms,
        },
    ))
}
