//! `FusedMovingAvgObsFakeQuantize`: the moving-average min / max observer and fake
//! quantization in one module (PyTorch's fused variant for the default QAT qconfig).

use std::sync::{Arc, Mutex};

use candle_core::{bail, DType, Device, Error, Module, Result, Tensor};
use qat_core::{choose_qparams, choose_qparams_per_channel, QDType, QScheme, TensorQParams};
use qat_observer::ObserverConfig;

use crate::check::split_at_axis;
use crate::fake_quant::fake_quantize_values;
use crate::kernels::{self, Isa};
use crate::op::f32_slice;
use crate::state::{self, State, OBSERVER_PREFIX};
use crate::switches::{switch_methods, Switches};

const NAME: &str = "FusedMovingAvgObsFakeQuantize";

#[derive(Debug)]
struct Inner {
    /// Per-tensor: one value, `(+inf, -inf)` until observed. Per-channel: empty until observed.
    min: Vec<f32>,
    max: Vec<f32>,
    scale: Vec<f32>,
    zero_point: Vec<i32>,
    switches: Switches,
}

/// A moving-average min / max observer fused with fake quantization, per-tensor or
/// per-channel: one pass over the batch finds its min / max (and counts NaN / Inf), the
/// running range moves by `averaging_constant` towards it (the first batch sets it), the
/// qparams come from `qat_core::choose_qparams`, then the fake-quant pass runs.
///
/// Results and state names equal [`crate::FakeQuantize`] around a
/// `MovingAverageMinMaxObserver` / `MovingAveragePerChannelMinMaxObserver` with the same
/// config (the tests check it); the flags are i64, as PyTorch's fused module stores them.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use qat_fakequant::FusedMovingAvgObsFakeQuantize;
/// use qat_observer::ObserverConfig;
/// let fq = FusedMovingAvgObsFakeQuantize::new(ObserverConfig::default(), 0.01).unwrap();
/// let x = Tensor::new(&[-1.0f32, 0.0, 3.0], &Device::Cpu).unwrap();
/// let _y = fq.forward(&x).unwrap();
/// assert_eq!(fq.qparams().unwrap().zero_point, vec![64]);
/// let bad = Tensor::new(&[f32::NAN, 1.0], &Device::Cpu).unwrap();
/// assert!(fq.forward(&bad).is_err()); // and the state is untouched
/// assert_eq!(fq.qparams().unwrap().zero_point, vec![64]);
/// ```
#[derive(Debug)]
pub struct FusedMovingAvgObsFakeQuantize {
    /// Shared with the [`RangeFeed`]s handed out.
    inner: Arc<Mutex<Inner>>,
    config: ObserverConfig,
    averaging_constant: f32,
}

impl FusedMovingAvgObsFakeQuantize {
    /// A fresh module; `averaging_constant` in `(0, 1]` (PyTorch's default 0.01), `eps`
    /// finite and > 0.
    pub fn new(config: ObserverConfig, averaging_constant: f32) -> Result<Self> {
        if !(averaging_constant > 0.0 && averaging_constant <= 1.0) {
            bail!("{NAME}: averaging_constant must be in (0, 1], got {averaging_constant}")
        }
        if !(config.eps.is_finite() && config.eps > 0.0) {
            bail!("{NAME}: eps must be finite and > 0, got {}", config.eps)
        }
        let per_tensor = !config.scheme.is_per_channel();
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                min: if per_tensor {
                    vec![f32::INFINITY]
                } else {
                    vec![]
                },
                max: if per_tensor {
                    vec![f32::NEG_INFINITY]
                } else {
                    vec![]
                },
                scale: vec![1.0],
                zero_point: vec![0],
                switches: Switches::ON,
            })),
            config,
            averaging_constant,
        })
    }

    switch_methods!();

    /// The quantized range.
    pub fn dtype(&self) -> QDType {
        self.config.dtype
    }

    /// The scheme (and channel axis).
    pub fn scheme(&self) -> QScheme {
        self.config.scheme
    }

    /// The running `(min, max)` per channel (one pair per-tensor).
    pub fn min_max(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let g = self.lock()?;
        Ok((g.min.clone(), g.max.clone()))
    }

    /// The qparams `forward` fake-quantizes with now.
    pub fn qparams(&self) -> Result<TensorQParams> {
        let g = self.lock()?;
        Ok(TensorQParams {
            dtype: self.config.dtype,
            scheme: self.config.scheme,
            scale: g.scale.clone(),
            zero_point: g.zero_point.clone(),
        })
    }

    /// Batch `(min, max)` per channel, refusing NaN / Inf, an empty tensor or a bad axis.
    fn batch_range(&self, x: &Tensor) -> Result<(Vec<f32>, Vec<f32>)> {
        if x.elem_count() == 0 {
            bail!("{NAME}: cannot observe an empty tensor")
        }
        let (c, inner) = match self.config.scheme.axis() {
            None => (1, x.elem_count()),
            Some(axis) => {
                if axis >= x.rank() {
                    bail!(
                        "{NAME}: channel axis {axis} out of range for a tensor of rank {}",
                        x.rank()
                    )
                }
                let (_, c, inner) = split_at_axis(x.dims(), axis);
                (c, inner)
            }
        };
        let xc = x
            .detach()
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        let (mut min, mut max) = (vec![f32::INFINITY; c], vec![f32::NEG_INFINITY; c]);
        let (storage, layout) = xc.storage_and_layout();
        let candle_core::Storage::Cpu(s) = &*storage else {
            bail!("{NAME}: statistics need a CPU copy of the input")
        };
        let data = f32_slice(NAME, s, layout)?;
        let bad = kernels::min_max_blocks(Isa::detect(), data, inner, &mut min, &mut max);
        if bad > 0 {
            bail!("{NAME}: the observed tensor has {bad} non-finite values (NaN or Inf); state left unchanged")
        }
        Ok((min, max))
    }

    /// Observe (if enabled), update the qparams, fake-quantize (if enabled). Errors leave
    /// the state unchanged.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut g = self.lock()?;
        if g.switches.observer {
            let (bmin, bmax) = self.batch_range(x)?;
            observe(&mut g, &self.config, self.averaging_constant, bmin, bmax)?;
        }
        if !g.switches.fake_quant {
            return Ok(x.clone());
        }
        let (lo, hi) = self.config.dtype.range();
        let axis = self.config.scheme.axis();
        fake_quantize_values(NAME, x, &g.scale, &g.zero_point, axis, lo, hi)
    }

    /// A handle through which an op that computes its output's range itself (in a pass it
    /// makes anyway) feeds this module's observer and fake-quantizes with the qparams it
    /// returns: what [`forward`](Self::forward) does, without a pass over the tensor to find
    /// its range and without a separate output. Per-tensor modules only (`None` otherwise).
    pub fn range_feed(&self) -> Option<RangeFeed> {
        (!self.config.scheme.is_per_channel()).then(|| RangeFeed {
            inner: self.inner.clone(),
            config: self.config,
            averaging_constant: self.averaging_constant,
        })
    }

    /// The state as named tensors, with the names of `FakeQuantize` around a moving-average
    /// observer (`activation_post_process.min_val` / `max_val`: 0-dim per-tensor, 1-D
    /// per-channel).
    pub fn state(&self) -> Result<State> {
        let g = self.lock()?;
        let mut st = State::new();
        state::qparams_tensors(&mut st, &g.scale, &g.zero_point)?;
        g.switches.insert_state(&mut st, DType::I64)?;
        let dev = Device::Cpu;
        let (min, max) = if self.config.scheme.is_per_channel() {
            (
                Tensor::from_slice(&g.min, g.min.len(), &dev)?,
                Tensor::from_slice(&g.max, g.max.len(), &dev)?,
            )
        } else {
            (Tensor::new(g.min[0], &dev)?, Tensor::new(g.max[0], &dev)?)
        };
        st.insert(format!("{OBSERVER_PREFIX}min_val"), min);
        st.insert(format!("{OBSERVER_PREFIX}max_val"), max);
        Ok(st)
    }

    /// Restore a state from [`FusedMovingAvgObsFakeQuantize::state`] (or from a
    /// `FakeQuantize` with a moving-average observer, or PyTorch). Checked before anything
    /// changes.
    pub fn load_state(&self, st: &State) -> Result<()> {
        let own = [
            "scale",
            "zero_point",
            Switches::NAMES[0],
            Switches::NAMES[1],
        ];
        let (lo, hi) = self.config.dtype.range();
        let (scale, zero_point) = state::read_qparams(NAME, st, lo, hi)?;
        let switches = Switches::read(NAME, st)?;
        let obs = state::split_observer(NAME, st, &own)?;
        let read = |name: &str| -> Result<Vec<f32>> {
            let t = state::get(NAME, &obs, name).map_err(|_| {
                Error::Msg(format!(
                    "{NAME}: state is missing `{OBSERVER_PREFIX}{name}`"
                ))
            })?;
            t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()
        };
        let (min, max) = (read("min_val")?, read("max_val")?);
        // PyTorch's per-tensor observer also stores `eps`; it is ours by config, so it is
        // accepted and ignored. Anything else is a mistake.
        if let Some(k) = obs
            .keys()
            .find(|k| !["min_val", "max_val", "eps"].contains(&k.as_str()))
        {
            bail!("{NAME}: unexpected state entry `{OBSERVER_PREFIX}{k}`")
        }
        let per_channel = self.config.scheme.is_per_channel();
        if min.len() != max.len() || (!per_channel && min.len() != 1) {
            bail!(
                "{NAME}: state min_val / max_val have {} / {} values",
                min.len(),
                max.len()
            )
        }
        if !per_channel && scale.len() != 1 {
            bail!(
                "{NAME}: a per-tensor module needs one scale, the state has {}",
                scale.len()
            )
        }
        for (&a, &b) in min.iter().zip(&max) {
            let unobserved = a == f32::INFINITY && b == f32::NEG_INFINITY;
            if !(unobserved || (a.is_finite() && b.is_finite() && a <= b)) {
                bail!("{NAME}: state holds an invalid range min_val={a}, max_val={b}")
            }
        }
        let mut g = self.lock()?;
        g.min = min;
        g.max = max;
        g.scale = scale;
        g.zero_point = zero_point;
        g.switches = switches;
        Ok(())
    }
}

/// The moving-average update with a batch range `(bmin, bmax)` (per channel; the first batch
/// sets the range) and the qparams chosen from the new range. Errors leave `g` unchanged.
fn observe(
    g: &mut Inner,
    config: &ObserverConfig,
    averaging_constant: f32,
    bmin: Vec<f32>,
    bmax: Vec<f32>,
) -> Result<()> {
    let observed = match config.scheme.axis() {
        None => !(g.min[0] == f32::INFINITY && g.max[0] == f32::NEG_INFINITY),
        Some(_) => !g.min.is_empty(),
    };
    let (min, max) = if !observed {
        (bmin, bmax)
    } else {
        if g.min.len() != bmin.len() {
            bail!(
                "{NAME}: channel count changed: observed {} channels before, got {}",
                g.min.len(),
                bmin.len()
            )
        }
        let c = averaging_constant;
        let avg = |run: &[f32], cur: &[f32]| -> Vec<f32> {
            run.iter()
                .zip(cur)
                .map(|(&m, &v)| m + c * (v - m))
                .collect()
        };
        (avg(&g.min, &bmin), avg(&g.max, &bmax))
    };
    let q = choose(config, &min, &max)?;
    g.min = min;
    g.max = max;
    g.scale = q.scale;
    g.zero_point = q.zero_point;
    Ok(())
}

fn choose(cfg: &ObserverConfig, min: &[f32], max: &[f32]) -> Result<TensorQParams> {
    let q = if cfg.scheme.is_per_channel() {
        choose_qparams_per_channel(min, max, cfg.dtype, cfg.scheme, cfg.eps)
    } else {
        choose_qparams(
            min[0],
            max[0],
            cfg.dtype,
            cfg.scheme.is_symmetric(),
            cfg.eps,
        )
        .map(|q| TensorQParams::per_tensor(cfg.dtype, cfg.scheme, q))
    };
    q.map_err(|e| Error::Msg(format!("{NAME}: {e}")))
}

/// A handle on a per-tensor [`FusedMovingAvgObsFakeQuantize`]'s state (from
/// [`FusedMovingAvgObsFakeQuantize::range_feed`]) for an op that finds its output's range
/// itself and fake-quantizes that output in place: [`RangeFeed::observe`] makes the module's
/// observer step exactly as [`FusedMovingAvgObsFakeQuantize::forward`] would on a tensor with
/// that range, and returns the qparams `forward` would fake-quantize with. Cloning shares the
/// state, which lives as long as the module or any handle.
///
/// ```
/// use qat_fakequant::FusedMovingAvgObsFakeQuantize;
/// use qat_observer::ObserverConfig;
/// let fq = FusedMovingAvgObsFakeQuantize::new(ObserverConfig::default(), 0.01).unwrap();
/// let feed = fq.range_feed().unwrap();
/// // A batch spanning [-1, 3]: the first one sets the range.
/// let (scale, zp) = feed.observe(-1.0, 3.0, 0).unwrap().unwrap();
/// assert_eq!((scale, zp), (4.0 / 255.0, 64));
/// assert_eq!(fq.min_max().unwrap(), (vec![-1.0], vec![3.0]));
/// assert!(feed.observe(0.0, 1.0, 2).is_err()); // NaN / Inf seen: refused, state kept
/// assert_eq!(fq.min_max().unwrap(), (vec![-1.0], vec![3.0]));
/// ```
#[derive(Debug, Clone)]
pub struct RangeFeed {
    inner: Arc<Mutex<Inner>>,
    config: ObserverConfig,
    averaging_constant: f32,
}

impl RangeFeed {
    /// `(quant_min, quant_max)`.
    pub fn quant_range(&self) -> (i32, i32) {
        self.config.dtype.range()
    }

    /// Observe a batch whose finite values span `[min, max]` and which holds `non_finite`
    /// NaN / Inf values (if the observer is on), then return the `(scale, zero_point)` to
    /// fake-quantize the batch with, or `None` when fake quantization is off. Errors, leaving
    /// the state unchanged, where `forward` would: non-finite values or an empty batch
    /// (`min > max`) while the observer is on.
    pub fn observe(&self, min: f32, max: f32, non_finite: usize) -> Result<Option<(f32, i32)>> {
        let mut g = self
            .inner
            .lock()
            .map_err(|_| Error::Msg(format!("{NAME}: state poisoned by a panic")))?;
        if g.switches.observer {
            if non_finite > 0 {
                bail!("{NAME}: the observed tensor has {non_finite} non-finite values (NaN or Inf); state left unchanged")
            }
            if min.is_nan() || max.is_nan() || min > max {
                bail!("{NAME}: cannot observe an empty tensor (range [{min}, {max}])")
            }
            let (cfg, c) = (&self.config, self.averaging_constant);
            observe(&mut g, cfg, c, vec![min], vec![max])?;
        }
        if !g.switches.fake_quant {
            return Ok(None);
        }
        let (lo, hi) = self.quant_range();
        crate::fake_quant::check_per_tensor(NAME, g.scale[0], g.zero_point[0], lo, hi)?;
        Ok(Some((g.scale[0], g.zero_point[0])))
    }
}

impl Module for FusedMovingAvgObsFakeQuantize {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        FusedMovingAvgObsFakeQuantize::forward(self, xs)
    }
}
