//! Learning-rate schedule: linear warm-up, then cosine decay.

use crate::error::{GraphError, Result};

/// Linear warm-up for `warmup_steps` steps, then cosine annealing to `min_lr` at
/// `total_steps`:
///
/// - `t < warmup`: `lr = base · (t + 1) / warmup` (the first step already trains);
/// - `warmup ≤ t < total`: `lr = min + ½ (base − min)(1 + cos(π (t − warmup) / (total − warmup)))`;
/// - `t ≥ total`: `min`.
///
/// ```
/// use qat_graph::CosineWarmup;
/// let s = CosineWarmup::new(0.1, 0.0, 2, 6).unwrap();
/// assert!((s.lr(0) - 0.05).abs() < 1e-12);
/// assert!((s.lr(2) - 0.1).abs() < 1e-12);
/// assert!((s.lr(4) - 0.05).abs() < 1e-12);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineWarmup {
    pub base_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl CosineWarmup {
    /// Checks `0 ≤ min_lr ≤ base_lr` and `warmup_steps < total_steps`.
    pub fn new(base_lr: f64, min_lr: f64, warmup_steps: usize, total_steps: usize) -> Result<Self> {
        if !(0.0 <= min_lr && min_lr <= base_lr) || warmup_steps >= total_steps {
            return Err(GraphError::Invalid(format!(
                "cosine schedule needs 0 <= min_lr ({min_lr}) <= base_lr ({base_lr}) and \
                 warmup_steps ({warmup_steps}) < total_steps ({total_steps})"
            )));
        }
        Ok(CosineWarmup {
            base_lr,
            min_lr,
            warmup_steps,
            total_steps,
        })
    }

    /// The learning rate at step `t` (0-based).
    pub fn lr(&self, t: usize) -> f64 {
        if t < self.warmup_steps {
            return self.base_lr * (t + 1) as f64 / self.warmup_steps as f64;
        }
        if t >= self.total_steps {
            return self.min_lr;
        }
        let progress =
            (t - self.warmup_steps) as f64 / (self.total_steps - self.warmup_steps) as f64;
        self.min_lr
            + 0.5 * (self.base_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}
