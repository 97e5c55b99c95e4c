//! [`PipelineConfig`]: every setting of a run (stored in `metrics.json`, so a resumed run
//! continues with the settings it started with), and the QAT presets by name.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use qat_core::{QDType, QScheme, Signedness, DEFAULT_EPS};
use qat_graph::qconfig::{FakeQuantKind, FqSpec, NodeQConfig, ObserverKind};
use qat_graph::QConfig;
use serde::{Deserialize, Serialize};

use super::error::{PipelineError, Result};

/// The QAT qconfig, by the name the `--qconfig` flag takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QConfigPreset {
    /// [`QConfig::default_qat`]: u8 [0, 255] moving-average activations, i8 per-channel weights.
    Default,
    /// [`QConfig::pytorch_x86`]: PyTorch's x86 QAT default (activations `reduce_range`, [0, 127]).
    PytorchX86,
    /// [`QConfig::lsq`] with 8 bits (learned scales).
    Lsq8,
    /// [`QConfig::lsq`] with 4 bits (needs the int8 kernels only for storage; accuracy drops).
    Lsq4,
}

impl QConfigPreset {
    /// Every preset, in `--help` order.
    pub const ALL: [QConfigPreset; 4] = [Self::Default, Self::PytorchX86, Self::Lsq8, Self::Lsq4];

    /// The flag spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::PytorchX86 => "pytorch-x86",
            Self::Lsq8 => "lsq8",
            Self::Lsq4 => "lsq4",
        }
    }

    /// The qconfig for QAT.
    pub fn qconfig(self) -> Result<QConfig> {
        Ok(match self {
            Self::Default => QConfig::default_qat(),
            Self::PytorchX86 => QConfig::pytorch_x86(),
            Self::Lsq8 => QConfig::lsq(8)?,
            Self::Lsq4 => QConfig::lsq(4)?,
        })
    }
}

impl fmt::Display for QConfigPreset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QConfigPreset {
    type Err = PipelineError;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|p| p.name()).collect();
                PipelineError::Invalid(format!(
                    "unknown qconfig {s:?}; one of: {}",
                    names.join(", ")
                ))
            })
    }
}

/// The post-training quantization qconfig: PyTorch's `HistogramObserver` (2048 bins) on u8
/// `[0, 255]` activations (no `reduce_range`: our kernels never saturate) and per-channel
/// min / max on i8 symmetric weights — as [`QConfig::ptq`], but as `FakeQuantize` modules so
/// the calibrated model can also be evaluated in fake-quant simulation.
pub fn ptq_qconfig() -> QConfig {
    QConfig::uniform(NodeQConfig {
        activation: FqSpec {
            kind: FakeQuantKind::FakeQuantize,
            observer: ObserverKind::Histogram { bins: 2048 },
            dtype: QDType::quint8(),
            scheme: QScheme::PerTensorAffine,
            eps: DEFAULT_EPS,
        },
        weight: FqSpec {
            kind: FakeQuantKind::FakeQuantize,
            observer: ObserverKind::MinMax,
            dtype: QDType::custom(Signedness::Signed, -128, 127).expect("a valid 8-bit range"),
            scheme: QScheme::PerChannelSymmetric { axis: 0 },
            eps: DEFAULT_EPS,
        },
    })
}

/// Every setting of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineConfig {
    /// `"fashion-mnist"` or `"mnist"`.
    pub dataset: String,
    /// Where to look first for the dataset (see [`qat_data::search_path`]).
    pub data_dir: Option<PathBuf>,
    /// MobileNetV2 width multiplier.
    pub width: f64,
    /// fp32 training epochs.
    pub epochs: usize,
    /// QAT fine-tuning epochs.
    pub qat_epochs: usize,
    pub batch_size: usize,
    /// Batch size for evaluation and calibration.
    pub eval_batch_size: usize,
    /// Peak fp32 learning rate (cosine with warm-up).
    pub lr: f64,
    /// Peak QAT learning rate (cosine, no warm-up).
    pub qat_lr: f64,
    pub momentum: f64,
    /// Coupled weight decay on conv / linear weights (never BN or biases).
    pub weight_decay: f64,
    /// Warm-up length as a fraction of the fp32 steps.
    pub warmup_fraction: f64,
    /// Batches of training images (no augmentation) for PTQ calibration.
    pub calibration_batches: usize,
    pub qconfig: QConfigPreset,
    /// Fraction of the QAT steps after which the folded BN statistics freeze.
    pub freeze_bn_at: f64,
    /// Fraction of the QAT steps after which the observers stop (qparams fixed).
    pub observers_off_at: f64,
    /// Clip the QAT gradients' global norm to this (`None`: no clipping). Once BN is frozen
    /// the gradients of the early layers grow: measured at batch 128, median norm 1.05 (max
    /// 1.33) with live BN, 2.1 (max 7.6–12.6) after freezing, where a single unclipped step
    /// once threw the loss from 0.5 to 4.6 and cost the run 0.7 points.
    #[serde(default)]
    pub qat_max_grad_norm: Option<f64>,
    /// Use only the first N training images (`None`: all).
    pub train_images: Option<usize>,
    /// Evaluate on the first N test images (`None`: all).
    pub test_images: Option<usize>,
    /// Random-crop padding in pixels (0: no crop).
    pub crop_pad: usize,
    pub hflip: bool,
    pub seed: u64,
    /// Threads (recorded in the report; the int8 runtime uses them per call).
    pub threads: usize,
    /// Timed repetitions per latency figure (the median is reported).
    pub latency_runs: usize,
    /// Draw progress bars on the terminal.
    pub progress: bool,
}

impl Default for PipelineConfig {
    /// The default run, sized for about 20 minutes on a quiet 2-core machine from measured CPU
    /// time (at batch 128: ≈ 18.5 CPU-ms per image for an fp32 step, ≈ 27.5 for a QAT step):
    /// 2 fp32 epochs + 1 QAT epoch over the first 20 000 training images, evaluated on the
    /// first 5 000 test images. `--train-images 0 --test-images 0 --epochs 3` is the
    /// reference recipe on the full official split.
    fn default() -> Self {
        PipelineConfig {
            dataset: "fashion-mnist".into(),
            data_dir: None,
            width: 0.5,
            epochs: 2,
            qat_epochs: 1,
            batch_size: 128,
            eval_batch_size: 250,
            lr: 0.1,
            qat_lr: 0.01,
            momentum: 0.9,
            weight_decay: 5e-4,
            warmup_fraction: 0.1,
            calibration_batches: 8,
            qconfig: QConfigPreset::Default,
            freeze_bn_at: 0.5,
            observers_off_at: 0.5,
            qat_max_grad_norm: Some(2.0),
            train_images: Some(20_000),
            test_images: Some(5_000),
            crop_pad: 2,
            hflip: true,
            seed: 0,
            threads: 2,
            latency_runs: 10,
            progress: true,
        }
    }
}

impl PipelineConfig {
    /// `--quick`: 1 024 training / 500 test images, one epoch each; about a minute in release.
    pub fn quick() -> Self {
        PipelineConfig {
            epochs: 1,
            qat_epochs: 1,
            batch_size: 32,
            eval_batch_size: 100,
            lr: 0.05,
            train_images: Some(1024),
            test_images: Some(500),
            calibration_batches: 2,
            latency_runs: 3,
            ..Self::default()
        }
    }

    /// Check the settings before anything runs.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(PipelineError::Invalid(m));
        if !(self.width > 0.0 && self.width.is_finite()) {
            return bad(format!("width must be > 0, got {}", self.width));
        }
        if self.epochs == 0 || self.qat_epochs == 0 {
            return bad(format!(
                "epochs and qat-epochs must be at least 1 (QAT needs data to calibrate its \
                 observers), got {} and {}",
                self.epochs, self.qat_epochs
            ));
        }
        if self.batch_size < 2 || self.eval_batch_size == 0 {
            return bad(format!(
                "batch size must be at least 2 (BatchNorm needs 2 samples) and the eval batch \
                 size at least 1, got {} and {}",
                self.batch_size, self.eval_batch_size
            ));
        }
        for (name, v) in [("lr", self.lr), ("qat-lr", self.qat_lr)] {
            if !(v > 0.0 && v.is_finite()) {
                return bad(format!("{name} must be > 0, got {v}"));
            }
        }
        if !(0.0..1.0).contains(&self.momentum)
            || !(0.0..f64::INFINITY).contains(&self.weight_decay)
        {
            return bad(format!(
                "momentum must be in [0, 1) and weight decay >= 0, got {} and {}",
                self.momentum, self.weight_decay
            ));
        }
        for (name, v) in [
            ("warmup fraction", self.warmup_fraction),
            ("freeze-bn-at", self.freeze_bn_at),
            ("observers-off-at", self.observers_off_at),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("{name} must be in [0, 1], got {v}"));
            }
        }
        if let Some(m) = self.qat_max_grad_norm {
            if !(m > 0.0 && m.is_finite()) {
                return bad(format!("qat-max-grad-norm must be > 0, got {m}"));
            }
        }
        if self.calibration_batches == 0 || self.latency_runs == 0 {
            return bad("calibration batches and latency runs must be at least 1".into());
        }
        if matches!(self.train_images, Some(n) if n < self.batch_size)
            || matches!(self.test_images, Some(0))
        {
            return bad(format!(
                "--train-images must be at least the batch size ({}) and --test-images at \
                 least 1",
                self.batch_size
            ));
        }
        Ok(())
    }

    /// The model this run trains: the small-image MobileNetV2, 1×28×28, 10 classes.
    pub fn model(&self) -> crate::MobileNetV2Config {
        crate::MobileNetV2Config::small(1, 28, self.width, 10)
    }
}
