//! SGD with momentum / Nesterov (PyTorch's `torch.optim.SGD` update rule) and weight decay
//! that only touches conv / linear weights (never BN parameters or biases).
//!
//! With buffer `b`, gradient `g`, learning rate `lr`, momentum `μ`, dampening `τ`:
//! `d = g (+ wd·p when coupled)`; first step `b = d`, later `b = μ·b + (1 − τ)·d`;
//! Nesterov `d = d + μ·b`, else `d = b`; `p = p − lr·d`. Decoupled weight decay (SGDW)
//! instead shrinks the weight first: `p = p·(1 − lr·wd)`, leaving the gradient alone.
//! With `max_grad_norm`, every gradient is first scaled by `min(1, max / (‖g‖ + 1e-6))`, `‖g‖`
//! the L2 norm over all parameters together (PyTorch's `clip_grad_norm_`).
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use qat_graph::{ParamKind, Sgd, SgdConfig, WeightDecay};
//! # fn main() -> qat_graph::Result<()> {
//! let w = Var::new(&[1.0f32, -2.0], &Device::Cpu)?;
//! let cfg = SgdConfig { lr: 0.1, momentum: 0.9, nesterov: true, ..SgdConfig::default() };
//! let mut opt = Sgd::new(vec![("w".into(), w.clone(), ParamKind::ConvWeight)], cfg)?;
//! let loss = w.as_tensor().sqr()?.sum_all()?;
//! opt.backward_step(&loss)?;
//! # Ok(()) }
//! ```

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::error::{GraphError, Result};
use crate::params::ParamKind;

/// Weight decay flavour.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum WeightDecay {
    #[default]
    None,
    /// PyTorch SGD's `weight_decay`: `wd·p` added to the gradient (L2 penalty).
    Coupled(f64),
    /// Decoupled (SGDW): `p ← p·(1 − lr·wd)` before the gradient step.
    Decoupled(f64),
}

/// SGD hyper-parameters (PyTorch's names and defaults, lr aside).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
    /// Applied to conv / linear weights only.
    pub weight_decay: WeightDecay,
    /// Clip the global gradient norm to this (before weight decay); `None`: no clipping.
    /// QAT with frozen BatchNorm wants it: without batch statistics the gradients of the
    /// early layers grow several-fold, and an unclipped step can throw the model off.
    pub max_grad_norm: Option<f64>,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            lr: 0.1,
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: WeightDecay::None,
            max_grad_norm: None,
        }
    }
}

struct Slot {
    var: Var,
    decays: bool,
    buf: Option<Tensor>,
}

/// The optimizer over a set of named parameters.
pub struct Sgd {
    cfg: SgdConfig,
    slots: Vec<Slot>,
    last_grad_norm: Option<f64>,
}

impl Sgd {
    /// An optimizer for `params` (e.g. [`GraphModule::trainable`](crate::GraphModule::trainable));
    /// the kind decides weight decay ([`ParamKind::decays`]). Rejects the configurations
    /// PyTorch rejects (Nesterov without momentum or with dampening, negative values).
    pub fn new(params: Vec<(String, Var, ParamKind)>, cfg: SgdConfig) -> Result<Self> {
        let wd = match cfg.weight_decay {
            WeightDecay::None => 0.0,
            WeightDecay::Coupled(w) | WeightDecay::Decoupled(w) => w,
        };
        if !(cfg.lr >= 0.0 && cfg.momentum >= 0.0 && wd >= 0.0 && cfg.dampening >= 0.0) {
            return Err(GraphError::Invalid(format!(
                "SGD: lr, momentum, dampening and weight decay must be >= 0 ({cfg:?})"
            )));
        }
        if let Some(m) = cfg.max_grad_norm {
            if !(m > 0.0 && m.is_finite()) {
                return Err(GraphError::Invalid(format!(
                    "SGD: max_grad_norm must be a positive finite number, got {m}"
                )));
            }
        }
        if cfg.nesterov && (cfg.momentum <= 0.0 || cfg.dampening != 0.0) {
            return Err(GraphError::Invalid(
                "SGD: Nesterov momentum requires a momentum and zero dampening".into(),
            ));
        }
        let slots = params
            .into_iter()
            .map(|(_, var, kind)| Slot {
                var,
                decays: kind.decays(),
                buf: None,
            })
            .collect();
        Ok(Sgd {
            cfg,
            slots,
            last_grad_norm: None,
        })
    }

    /// The current learning rate.
    pub fn lr(&self) -> f64 {
        self.cfg.lr
    }
    /// Set the learning rate (for schedules).
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// The global gradient norm of the last step, before clipping (computed only when
    /// `max_grad_norm` is set).
    pub fn last_grad_norm(&self) -> Option<f64> {
        self.last_grad_norm
    }

    /// The factor `max_grad_norm` scales this step's gradients by (1 without clipping).
    fn clip_factor(&mut self, grads: &GradStore) -> Result<f64> {
        let Some(max) = self.cfg.max_grad_norm else {
            return Ok(1.0);
        };
        let mut sq = 0f64;
        for s in &self.slots {
            if let Some(g) = grads.get(s.var.as_tensor()) {
                sq += g
                    .sqr()?
                    .sum_all()?
                    .to_dtype(candle_core::DType::F64)?
                    .to_scalar::<f64>()?;
            }
        }
        let norm = sq.sqrt();
        self.last_grad_norm = Some(norm);
        if !norm.is_finite() {
            return Err(GraphError::Invalid(format!(
                "SGD: the gradient norm is {norm} (a NaN or Inf gradient); not stepping"
            )));
        }
        Ok((max / (norm + 1e-6)).min(1.0))
    }

    /// One update from the gradients in `grads`; parameters without a gradient are skipped
    /// (their momentum is not advanced), as in PyTorch.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let clip = self.clip_factor(grads)?;
        let c = self.cfg;
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            let p = s.var.as_tensor().detach();
            let mut d = if clip < 1.0 {
                (g.detach() * clip)?
            } else {
                g.detach()
            };
            let mut p_new = p.clone();
            match c.weight_decay {
                WeightDecay::Coupled(wd) if s.decays && wd != 0.0 => d = (d + (&p * wd)?)?,
                WeightDecay::Decoupled(wd) if s.decays && wd != 0.0 => {
                    p_new = (&p * (1.0 - c.lr * wd))?
                }
                _ => {}
            }
            if c.momentum != 0.0 {
                let buf = match s.buf.take() {
                    None => d.clone(),
                    Some(b) => ((b * c.momentum)? + (&d * (1.0 - c.dampening))?)?,
                };
                d = if c.nesterov {
                    (d + (&buf * c.momentum)?)?
                } else {
                    buf.clone()
                };
                s.buf = Some(buf);
            }
            s.var.set(&(p_new - (d * c.lr)?)?)?;
        }
        Ok(())
    }

    /// Backpropagate `loss` and step.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.step(&grads)
    }
}
