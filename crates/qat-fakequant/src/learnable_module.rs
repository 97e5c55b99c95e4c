//! `LearnableFakeQuantize`: LSQ / LSQ+ with the scale and zero point as trainable
//! [`Var`]s (PyTorch's `_LearnableFakeQuantize`).

use std::sync::{Mutex, MutexGuard};

use candle_core::{bail, DType, Device, Error, Module, Result, Tensor, Var};
use qat_core::{QDType, QScheme};
use qat_observer::Observer;

use crate::learnable::{fake_quantize_learnable_per_channel, fake_quantize_learnable_per_tensor};
use crate::state::{self, State, OBSERVER_PREFIX};

const NAME: &str = "LearnableFakeQuantize";

#[derive(Debug)]
struct Inner {
    observer: Box<dyn Observer>,
    fake_quant_enabled: bool,
    static_enabled: bool,
    learning_enabled: bool,
}

/// Fake quantization whose scale and zero point are learned (LSQ; LSQ+ with a learned zero
/// point), initialized from an observer.
///
/// While *static estimation* is on (the default), `forward` observes the input and copies
/// the observer's qparams into the variables. [`enable_param_learning`] stops the observer
/// and lets gradients reach the variables (pass [`vars`] to the optimizer); the usual
/// schedule runs a few batches with static estimation first. `use_grad_scaling` applies
/// LSQ's gradient factor `1 / sqrt(numel * quant_max)`.
///
/// [`enable_param_learning`]: LearnableFakeQuantize::enable_param_learning
/// [`vars`]: LearnableFakeQuantize::vars
///
/// ```
/// use candle_core::{Device, Tensor};
/// use qat_fakequant::LearnableFakeQuantize;
/// use qat_observer::{MinMaxObserver, ObserverConfig};
/// let obs = MinMaxObserver::new(ObserverConfig::default()).unwrap();
/// let fq = LearnableFakeQuantize::new(Box::new(obs), None, false).unwrap();
/// let x = Tensor::new(&[-1.0f32, 0.5, 3.0], &Device::Cpu).unwrap();
/// fq.forward(&x).unwrap(); // static estimate: scale = 4/255, zero point 64
/// fq.enable_param_learning();
/// let y = fq.forward(&x).unwrap();
/// let grads = y.sum_all().unwrap().backward().unwrap();
/// assert!(grads.get(fq.vars()[0].as_tensor()).is_some());
/// ```
#[derive(Debug)]
pub struct LearnableFakeQuantize {
    inner: Mutex<Inner>,
    scale: Var,
    zero_point: Var,
    dtype: QDType,
    scheme: QScheme,
    use_grad_scaling: bool,
}

impl LearnableFakeQuantize {
    /// Wraps `observer`. Per-channel schemes need `channel_len` (the variables' length);
    /// the variables start at scale 1, zero point 0.
    pub fn new(
        observer: Box<dyn Observer>,
        channel_len: Option<usize>,
        use_grad_scaling: bool,
    ) -> Result<Self> {
        let (dtype, scheme) = (observer.dtype(), observer.scheme());
        let n = match (scheme.is_per_channel(), channel_len) {
            (false, _) => 1,
            (true, Some(c)) if c > 0 => c,
            (true, _) => bail!("{NAME}: a per-channel scheme needs channel_len > 0"),
        };
        let dev = Device::Cpu;
        Ok(Self {
            inner: Mutex::new(Inner {
                observer,
                fake_quant_enabled: true,
                static_enabled: true,
                learning_enabled: false,
            }),
            scale: Var::ones(n, DType::F32, &dev)?,
            zero_point: Var::zeros(n, DType::F32, &dev)?,
            dtype,
            scheme,
            use_grad_scaling,
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| Error::Msg(format!("{NAME}: state poisoned by a panic")))
    }

    fn set_flags(&self, fake_quant: bool, static_est: bool, learning: bool) {
        if let Ok(mut g) = self.inner.lock() {
            g.fake_quant_enabled = fake_quant;
            g.static_enabled = static_est;
            g.learning_enabled = learning;
        }
    }

    /// Learn the scale / zero point: observer off, gradients on, fake quantization on.
    pub fn enable_param_learning(&self) {
        self.set_flags(true, false, true)
    }

    /// Estimate the qparams with the observer (no learning), fake quantization on.
    pub fn enable_static_estimate(&self) {
        self.set_flags(true, true, false)
    }

    /// Observe only: estimate the qparams, fake quantization off.
    pub fn enable_static_observation(&self) {
        self.set_flags(false, true, false)
    }

    /// Switch fake quantization on or off alone.
    pub fn enable_fake_quant(&self, on: bool) {
        if let Ok(mut g) = self.inner.lock() {
            g.fake_quant_enabled = on;
        }
    }

    /// The trainable variables, `[scale, zero_point]`.
    pub fn vars(&self) -> Vec<Var> {
        vec![self.scale.clone(), self.zero_point.clone()]
    }

    /// The current `(scale, zero_point)` values.
    pub fn qparams(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((
            self.scale.as_tensor().to_vec1::<f32>()?,
            self.zero_point.as_tensor().to_vec1::<f32>()?,
        ))
    }

    /// PyTorch's `_LearnableFakeQuantize.forward`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut g = self.lock()?;
        let n = self.scale.elem_count();
        if g.static_enabled {
            g.observer.observe(&x.detach()).map_err(Error::wrap)?;
            let q = g.observer.qparams().map_err(Error::wrap)?;
            if q.scale.len() != n {
                bail!(
                    "{NAME}: the observer chose {} qparams, the module holds {n}",
                    q.scale.len()
                )
            }
            let zp: Vec<f32> = q.zero_point.iter().map(|&z| z as f32).collect();
            self.scale
                .set(&Tensor::from_vec(q.scale, n, &Device::Cpu)?)?;
            self.zero_point
                .set(&Tensor::from_vec(zp, n, &Device::Cpu)?)?;
        } else {
            let clamped = self
                .scale
                .as_tensor()
                .clamp(qat_core::DEFAULT_EPS as f64, f64::MAX)?;
            self.scale.set(&clamped)?;
        }
        if !g.fake_quant_enabled {
            return Ok(x.clone());
        }
        if self.scheme.is_symmetric() {
            self.zero_point
                .set(&self.zero_point.as_tensor().zeros_like()?)?;
        }
        let (lo, hi) = self.dtype.range();
        let gf = if self.use_grad_scaling {
            1.0 / ((x.elem_count() as f64) * hi as f64).sqrt()
        } else {
            1.0
        };
        let (s, z) = if g.learning_enabled {
            (
                self.scale.as_tensor().clone(),
                self.zero_point.as_tensor().clone(),
            )
        } else {
            (
                self.scale.as_detached_tensor(),
                self.zero_point.as_detached_tensor(),
            )
        };
        match self.scheme.axis() {
            Some(axis) => fake_quantize_learnable_per_channel(x, &s, &z, axis, lo, hi, gf),
            None => fake_quantize_learnable_per_tensor(x, &s, &z, lo, hi, gf),
        }
    }

    /// The state with PyTorch's names: `scale`, `zero_point` (f32), `fake_quant_enabled`,
    /// `static_enabled`, `learning_enabled` (u8), `eps`, `activation_post_process.*`.
    pub fn state(&self) -> Result<State> {
        let g = self.lock()?;
        let mut st = State::new();
        st.insert("scale".into(), self.scale.as_detached_tensor().copy()?);
        st.insert(
            "zero_point".into(),
            self.zero_point.as_detached_tensor().copy()?,
        );
        st.insert(
            "fake_quant_enabled".into(),
            state::flag(g.fake_quant_enabled, DType::U8)?,
        );
        st.insert(
            "static_enabled".into(),
            state::flag(g.static_enabled, DType::U8)?,
        );
        st.insert(
            "learning_enabled".into(),
            state::flag(g.learning_enabled, DType::U8)?,
        );
        st.insert(
            "eps".into(),
            Tensor::new(&[qat_core::DEFAULT_EPS], &Device::Cpu)?,
        );
        for (k, v) in g.observer.state().map_err(Error::wrap)? {
            st.insert(format!("{OBSERVER_PREFIX}{k}"), v);
        }
        Ok(st)
    }

    /// Restore a state from [`LearnableFakeQuantize::state`]; checked before anything changes.
    pub fn load_state(&self, st: &State) -> Result<()> {
        let own = [
            "scale",
            "zero_point",
            "fake_quant_enabled",
            "static_enabled",
            "learning_enabled",
            "eps",
        ];
        let n = self.scale.elem_count();
        let read = |name: &str| -> Result<Tensor> {
            let t = state::get(NAME, st, name)?;
            if t.elem_count() != n || t.rank() > 1 {
                bail!(
                    "{NAME}: state `{name}` must hold {n} values, got shape {:?}",
                    t.dims()
                )
            }
            t.to_dtype(DType::F32)?.reshape(n)
        };
        let (s, z) = (read("scale")?, read("zero_point")?);
        for (i, v) in s.to_vec1::<f32>()?.into_iter().enumerate() {
            crate::check::scale(NAME, &format!("state scale[{i}]"), v)?;
        }
        if z.to_vec1::<f32>()?.iter().any(|v| !v.is_finite()) {
            bail!("{NAME}: state zero_point holds a non-finite value")
        }
        let fq = state::read_flag(NAME, st, "fake_quant_enabled")?;
        let se = state::read_flag(NAME, st, "static_enabled")?;
        let le = state::read_flag(NAME, st, "learning_enabled")?;
        let obs = state::split_observer(NAME, st, &own)?;
        let mut g = self.lock()?;
        g.observer.load_state(&obs).map_err(Error::wrap)?;
        self.scale.set(&s)?;
        self.zero_point.set(&z)?;
        g.fake_quant_enabled = fq;
        g.static_enabled = se;
        g.learning_enabled = le;
        Ok(())
    }
}

impl Module for LearnableFakeQuantize {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        LearnableFakeQuantize::forward(self, xs)
    }
}
