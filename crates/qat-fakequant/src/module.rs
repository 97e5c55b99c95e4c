//! `FakeQuantize`: an observer plus fake quantization, each switched on or off on its own
//! (PyTorch's `torch.ao.quantization.FakeQuantize`).

use std::sync::Mutex;

use candle_core::{bail, DType, Error, Module, Result, Tensor};
use qat_core::{QDType, QScheme, TensorQParams};
use qat_observer::Observer;

use crate::fake_quant::fake_quantize_values;
use crate::state::{self, State, OBSERVER_PREFIX};
use crate::switches::{switch_methods, Switches};

const NAME: &str = "FakeQuantize";

#[derive(Debug)]
struct Inner {
    observer: Box<dyn Observer>,
    scale: Vec<f32>,
    zero_point: Vec<i32>,
    switches: Switches,
}

/// An observer and fake quantization: `forward` observes the input (when the observer is
/// enabled), recomputes the qparams from the observer, then fake-quantizes with them (when
/// fake quantization is enabled; otherwise the input passes through unchanged).
///
/// The QAT schedule "observers off, fake-quant on" is `enable_observer(false)`: the
/// qparams then stay frozen. State uses PyTorch's names: `scale`, `zero_point` (i32),
/// `fake_quant_enabled`, `observer_enabled` (u8), `activation_post_process.<observer state>`.
/// The state sits behind a mutex, so `forward(&self)` implements candle's [`Module`].
///
/// ```
/// use candle_core::{Device, Module, Tensor};
/// use qat_fakequant::FakeQuantize;
/// use qat_observer::{MinMaxObserver, ObserverConfig};
/// let obs = MinMaxObserver::new(ObserverConfig::default()).unwrap();
/// let fq = FakeQuantize::new(Box::new(obs));
/// let x = Tensor::new(&[-1.0f32, 0.0, 0.3, 3.0], &Device::Cpu).unwrap();
/// let y = fq.forward(&x).unwrap();
/// let q = fq.qparams().unwrap();
/// assert_eq!(q.zero_point, vec![64]); // range [-1, 3] on quint8
/// fq.enable_observer(false); // freeze the qparams
/// let _ = fq.forward(&(x * 10.0).unwrap()).unwrap();
/// assert_eq!(fq.qparams().unwrap(), q);
/// ```
#[derive(Debug)]
pub struct FakeQuantize {
    inner: Mutex<Inner>,
    dtype: QDType,
    scheme: QScheme,
}

impl FakeQuantize {
    /// Wraps `observer`; both switches on, qparams `scale = [1.0]`, `zero_point = [0]`
    /// until the first observed batch (PyTorch's initial buffers).
    pub fn new(observer: Box<dyn Observer>) -> Self {
        let (dtype, scheme) = (observer.dtype(), observer.scheme());
        FakeQuantize {
            inner: Mutex::new(Inner {
                observer,
                scale: vec![1.0],
                zero_point: vec![0],
                switches: Switches::ON,
            }),
            dtype,
            scheme,
        }
    }

    switch_methods!();

    /// The quantized range.
    pub fn dtype(&self) -> QDType {
        self.dtype
    }

    /// The scheme (and channel axis).
    pub fn scheme(&self) -> QScheme {
        self.scheme
    }

    /// The qparams `forward` fake-quantizes with now.
    pub fn qparams(&self) -> Result<TensorQParams> {
        let g = self.lock()?;
        Ok(TensorQParams {
            dtype: self.dtype,
            scheme: self.scheme,
            scale: g.scale.clone(),
            zero_point: g.zero_point.clone(),
        })
    }

    /// The qparams the observer would choose from what it has seen (PyTorch's
    /// `calculate_qparams`), without storing them.
    pub fn calculate_qparams(&self) -> Result<TensorQParams> {
        self.lock()?.observer.qparams().map_err(Error::wrap)
    }

    /// Observe (if enabled), update the qparams, fake-quantize (if enabled).
    ///
    /// An observer error (NaN / Inf, empty input, bad axis) is returned as is and leaves
    /// both the observer and the qparams unchanged.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut g = self.lock()?;
        if g.switches.observer {
            g.observer.observe(&x.detach()).map_err(Error::wrap)?;
            let q = g.observer.qparams().map_err(Error::wrap)?;
            g.scale = q.scale;
            g.zero_point = q.zero_point;
        }
        if !g.switches.fake_quant {
            return Ok(x.clone());
        }
        let (lo, hi) = self.dtype.range();
        fake_quantize_values(NAME, x, &g.scale, &g.zero_point, self.scheme.axis(), lo, hi)
    }

    /// The state as named tensors (PyTorch's `state_dict` names, relative to the module).
    pub fn state(&self) -> Result<State> {
        let g = self.lock()?;
        let mut st = State::new();
        state::qparams_tensors(&mut st, &g.scale, &g.zero_point)?;
        g.switches.insert_state(&mut st, DType::U8)?;
        for (k, v) in g.observer.state().map_err(Error::wrap)? {
            st.insert(format!("{OBSERVER_PREFIX}{k}"), v);
        }
        Ok(st)
    }

    /// Restore a state from [`FakeQuantize::state`] (or PyTorch's `state_dict`; flags of any
    /// integer dtype). Everything is checked before anything changes.
    pub fn load_state(&self, st: &State) -> Result<()> {
        let own = [
            "scale",
            "zero_point",
            Switches::NAMES[0],
            Switches::NAMES[1],
        ];
        let (lo, hi) = self.dtype.range();
        let (scale, zero_point) = state::read_qparams(NAME, st, lo, hi)?;
        if self.scheme.axis().is_none() && scale.len() != 1 {
            bail!(
                "{NAME}: a per-tensor module needs one scale, the state has {}",
                scale.len()
            )
        }
        let switches = Switches::read(NAME, st)?;
        let obs_state = state::split_observer(NAME, st, &own)?;
        let mut g = self.lock()?;
        g.observer.load_state(&obs_state).map_err(Error::wrap)?;
        g.scale = scale;
        g.zero_point = zero_point;
        g.switches = switches;
        Ok(())
    }
}

impl Module for FakeQuantize {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        FakeQuantize::forward(self, xs)
    }
}
