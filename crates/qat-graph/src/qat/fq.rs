//! [`FqModule`]: one fake-quant module of a prepared graph, whatever its kind.

use candle_core::{Tensor, Var};
use qat_fakequant::{RangeFeed, State};

use crate::error::{GraphError, Result};
use crate::qconfig::{FakeQuantKind, FqModuleKind, FqSpec};

/// A named fake-quant (or observe-only) module: `<node>.weight_fake_quant` or
/// `<node>.activation_post_process`.
#[derive(Debug)]
pub struct FqModule {
    name: String,
    spec: FqSpec,
    inner: FqModuleKind,
}

impl FqModule {
    /// Build from a spec; `channels` is the per-channel axis length (ignored per-tensor).
    pub fn new(name: String, spec: &FqSpec, channels: usize) -> Result<Self> {
        let inner = spec.build(channels).map_err(|e| match e {
            GraphError::Graph(m) => GraphError::node(&name, m),
            e => e,
        })?;
        Ok(FqModule {
            name,
            spec: *spec,
            inner,
        })
    }

    /// The state-dict prefix, e.g. `features.0.0.weight_fake_quant`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The spec it was built from.
    pub fn spec(&self) -> &FqSpec {
        &self.spec
    }

    /// The wrapped module.
    pub fn inner(&self) -> &FqModuleKind {
        &self.inner
    }

    /// Observe (if on) and fake-quantize (if on); errors name the module.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let r = match &self.inner {
            FqModuleKind::Fused(m) => m.forward(x),
            FqModuleKind::Plain(m) => m.forward(x),
            FqModuleKind::Learnable(m) => m.forward(x),
        };
        r.map_err(|e| GraphError::node(&self.name, e.to_string()))
    }

    /// The observer feed of a per-tensor fused moving-average module (the default activation
    /// fake-quant), for an op that observes and fake-quantizes its own output in place (see
    /// [`qat_fakequant::RangeFeed`]); `None` for other kinds.
    pub fn range_feed(&self) -> Option<RangeFeed> {
        match &self.inner {
            FqModuleKind::Fused(m) => m.range_feed(),
            _ => None,
        }
    }

    /// Fake-quantize `x` with the module's current qparams, observing nothing: for a value
    /// that keeps its producer's qparams but is recomputed (an average pool's mean), which
    /// the int8 model rounds back onto that grid. The identity while fake quantization is
    /// off. Per-tensor modules only (activations).
    pub fn fake_quantize_frozen(&self, x: &Tensor) -> Result<Tensor> {
        if !self.fake_quant_enabled()? {
            return Ok(x.clone());
        }
        let (scale, zp) = self.qparams()?;
        let (lo, hi) = self.spec.dtype.range();
        match (scale.as_slice(), zp.as_slice()) {
            ([s], [z]) => qat_fakequant::fake_quantize_per_tensor(x, *s, *z, lo, hi)
                .map_err(|e| GraphError::node(&self.name, e.to_string())),
            _ => Err(GraphError::node(
                &self.name,
                "a per-channel fake-quant cannot round a pooled value",
            )),
        }
    }

    /// Switch the observer (a learnable module: static estimation) on or off.
    pub fn enable_observer(&self, on: bool) {
        match &self.inner {
            FqModuleKind::Fused(m) => m.enable_observer(on),
            FqModuleKind::Plain(m) => m.enable_observer(on),
            FqModuleKind::Learnable(m) => {
                if on {
                    m.enable_static_estimate()
                } else {
                    m.enable_param_learning()
                }
            }
        }
    }

    /// Switch fake quantization on or off. Observe-only modules (PTQ) never fake-quantize.
    pub fn enable_fake_quant(&self, on: bool) {
        let on = on && self.spec.kind != FakeQuantKind::ObserveOnly;
        match &self.inner {
            FqModuleKind::Fused(m) => m.enable_fake_quant(on),
            FqModuleKind::Plain(m) => m.enable_fake_quant(on),
            FqModuleKind::Learnable(m) => m.enable_fake_quant(on),
        }
    }

    /// Whether the observer is on (learnable: static estimation is on).
    pub fn observer_enabled(&self) -> Result<bool> {
        Ok(match &self.inner {
            FqModuleKind::Fused(m) => m.observer_enabled(),
            FqModuleKind::Plain(m) => m.observer_enabled(),
            FqModuleKind::Learnable(_) => {
                flag(&self.state()?, &format!("{}.static_enabled", self.name))?
            }
        })
    }

    /// Whether fake quantization is on.
    pub fn fake_quant_enabled(&self) -> Result<bool> {
        Ok(match &self.inner {
            FqModuleKind::Fused(m) => m.fake_quant_enabled(),
            FqModuleKind::Plain(m) => m.fake_quant_enabled(),
            FqModuleKind::Learnable(_) => {
                flag(&self.state()?, &format!("{}.fake_quant_enabled", self.name))?
            }
        })
    }

    /// The current `(scale, zero_point)` per channel (one pair per-tensor).
    pub fn qparams(&self) -> Result<(Vec<f32>, Vec<i32>)> {
        let e = |e: candle_core::Error| GraphError::node(&self.name, e.to_string());
        Ok(match &self.inner {
            FqModuleKind::Fused(m) => {
                let q = m.qparams().map_err(e)?;
                (q.scale, q.zero_point)
            }
            FqModuleKind::Plain(m) => {
                let q = m.qparams().map_err(e)?;
                (q.scale, q.zero_point)
            }
            FqModuleKind::Learnable(m) => {
                let (s, z) = m.qparams().map_err(e)?;
                (s, z.iter().map(|&v| v.round() as i32).collect())
            }
        })
    }

    /// Trainable variables (LSQ scale and zero point; none otherwise).
    pub fn vars(&self) -> Vec<Var> {
        match &self.inner {
            FqModuleKind::Learnable(m) => m.vars(),
            _ => vec![],
        }
    }

    /// The state with full names (`<name>.scale`, `<name>.activation_post_process.min_val`, ...).
    pub fn state(&self) -> Result<State> {
        let st = match &self.inner {
            FqModuleKind::Fused(m) => m.state(),
            FqModuleKind::Plain(m) => m.state(),
            FqModuleKind::Learnable(m) => m.state(),
        }
        .map_err(|e| GraphError::node(&self.name, e.to_string()))?;
        Ok(st
            .into_iter()
            .map(|(k, v)| (format!("{}.{k}", self.name), v))
            .collect())
    }

    /// Load the entries of `all` under `<name>.` (PyTorch names); checked before anything
    /// changes.
    pub fn load_state(&self, all: &State) -> Result<()> {
        let prefix = format!("{}.", self.name);
        let st: State = all
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_string(), v.clone())))
            .collect();
        if st.is_empty() {
            return Err(GraphError::node(&self.name, "no state entries to load"));
        }
        let r = match &self.inner {
            FqModuleKind::Fused(m) => m.load_state(&st),
            FqModuleKind::Plain(m) => m.load_state(&st),
            FqModuleKind::Learnable(m) => m.load_state(&st),
        };
        r.map_err(|e| GraphError::node(&self.name, e.to_string()))
    }
}

fn flag(st: &State, key: &str) -> Result<bool> {
    let t = st
        .get(key)
        .ok_or_else(|| GraphError::Graph(format!("missing state entry {key}")))?;
    let v = t
        .flatten_all()
        .and_then(|t| t.to_dtype(candle_core::DType::F32))
        .and_then(|t| t.to_vec1::<f32>())?;
    Ok(v.first().copied().unwrap_or(0.0) != 0.0)
}
