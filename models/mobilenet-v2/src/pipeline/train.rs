//! The training loop shared by fp32 training and QAT fine-tuning: SGD with a per-step
//! learning-rate schedule, per-step hooks (BN freezing, observers off), a progress bar, and an
//! evaluation after every epoch.

use std::time::Instant;

use candle_core::{Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use qat_data::Loader;
use qat_graph::{CosineWarmup, GraphModule, ParamKind, QatGraph, Sgd, SgdConfig};
use serde::{Deserialize, Serialize};

use super::env::cpu_seconds;
use super::error::{PipelineError, Result};
use super::eval::{argmax, to_tensors, EvalResult};

/// A model the loop can train.
pub trait Trainable {
    /// Train-mode forward to logits.
    fn forward_train(&self, x: &Tensor) -> Result<Tensor>;
    /// The parameters the optimizer updates.
    fn parameters(&self) -> Vec<(String, Var, ParamKind)>;
}

impl Trainable for GraphModule {
    fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_t(x, true)?)
    }
    fn parameters(&self) -> Vec<(String, Var, ParamKind)> {
        self.trainable()
    }
}

impl Trainable for QatGraph {
    fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_t(x, true)?)
    }
    fn parameters(&self) -> Vec<(String, Var, ParamKind)> {
        self.trainable()
    }
}

/// One epoch's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss and accuracy over the epoch (augmented images, train mode).
    pub train_loss: f64,
    pub train_accuracy: f64,
    /// The evaluation after the epoch.
    pub test: EvalResult,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    pub images_per_s: f64,
    pub seconds: f64,
    /// Process CPU seconds of the epoch's training steps (all threads; `None` off Linux):
    /// the figure that does not depend on what else the machine runs.
    pub cpu_seconds: Option<f64>,
}

/// A whole training stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainCurve {
    pub epochs: Vec<EpochRecord>,
    /// Loss of every step, in order.
    pub step_loss: Vec<f32>,
    /// Images per step (for a step → images axis).
    pub batch_size: usize,
    pub seconds: f64,
}

/// How a stage trains.
pub struct TrainSpec<'a> {
    /// Progress-bar label (`fp32`, `QAT`).
    pub label: &'a str,
    pub epochs: usize,
    pub schedule: CosineWarmup,
    pub sgd: SgdConfig,
    pub progress: bool,
}

/// A progress bar for `len` steps (hidden when `show` is false, e.g. in tests).
pub(crate) fn bar(len: usize, prefix: String, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    let style = ProgressStyle::with_template(
        "{prefix:>12} [{bar:28}] {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
    )
    .expect("a valid template")
    .progress_chars("=> ");
    pb.set_style(style);
    pb.set_prefix(prefix);
    pb
}

/// Train `model` for `spec.epochs` epochs of `loader`. `before_step(t)` runs before global step
/// `t` (schedules of BN freezing / observers); `eval()` scores the model after each epoch.
pub fn train(
    model: &dyn Trainable,
    loader: &Loader,
    spec: &TrainSpec<'_>,
    before_step: &mut dyn FnMut(usize) -> Result<()>,
    eval: &mut dyn FnMut() -> Result<EvalResult>,
) -> Result<TrainCurve> {
    let (rows, cols) = (loader.dataset().rows, loader.dataset().cols);
    let steps = loader.batches_per_epoch();
    let mut opt = Sgd::new(model.parameters(), spec.sgd)?;
    let mut curve = TrainCurve {
        epochs: Vec::new(),
        step_loss: Vec::new(),
        batch_size: loader.config().batch_size,
        seconds: 0.0,
    };
    let start = Instant::now();
    for epoch in 0..spec.epochs {
        let t0 = Instant::now();
        let cpu0 = cpu_seconds();
        let pb = bar(
            steps,
            format!("{} {}/{}", spec.label, epoch + 1, spec.epochs),
            spec.progress,
        );
        let (mut seen, mut correct, mut loss_sum) = (0usize, 0usize, 0f64);
        let mut lr = spec.schedule.lr(0);
        for (i, b) in loader.epoch(epoch as u64).enumerate() {
            let t = epoch * steps + i;
            before_step(t)?;
            lr = spec.schedule.lr(t);
            opt.set_lr(lr);
            let (x, y) = to_tensors(&b, rows, cols)?;
            let logits = model.forward_train(&x)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            let l = loss.to_scalar::<f32>()?;
            if !l.is_finite() {
                return Err(PipelineError::Invalid(format!(
                    "{} training diverged at epoch {} step {i}: loss {l} (try a lower learning \
                     rate)",
                    spec.label,
                    epoch + 1
                )));
            }
            opt.backward_step(&loss)?;
            seen += b.len();
            loss_sum += l as f64 * b.len() as f64;
            correct += argmax(&logits)?
                .iter()
                .zip(&b.labels)
                .filter(|(p, l)| p == l)
                .count();
            curve.step_loss.push(l);
            let secs = t0.elapsed().as_secs_f64();
            pb.set_message(format!(
                "loss {:.3} acc {:5.1}% {:.0} img/s lr {lr:.4}",
                loss_sum / seen as f64,
                100.0 * correct as f64 / seen as f64,
                seen as f64 / secs
            ));
            pb.inc(1);
        }
        let train_secs = t0.elapsed().as_secs_f64();
        let cpu = cpu0.zip(cpu_seconds()).map(|(a, b)| b - a);
        pb.set_message(format!(
            "loss {:.3} acc {:5.1}% — evaluating",
            loss_sum / seen as f64,
            100.0 * correct as f64 / seen as f64
        ));
        let test = eval()?;
        pb.finish_with_message(format!(
            "loss {:.3} acc {:5.1}% {:.0} img/s | test acc {:.2}%",
            loss_sum / seen as f64,
            100.0 * correct as f64 / seen as f64,
            seen as f64 / train_secs,
            100.0 * test.accuracy
        ));
        curve.epochs.push(EpochRecord {
            epoch: epoch + 1,
            train_loss: loss_sum / seen as f64,
            train_accuracy: correct as f64 / seen as f64,
            test,
            lr,
            images_per_s: seen as f64 / train_secs,
            seconds: t0.elapsed().as_secs_f64(),
            cpu_seconds: cpu,
        });
    }
    curve.seconds = start.elapsed().as_secs_f64();
    Ok(curve)
}
