//! [`QConfig`]: how each node of a fused graph is quantized — activation and weight
//! fake-quant specs, presets, and per-node overrides (mixed precision).
//!
//! Resolution order for a node (first match wins): exact node name (a fused node also answers
//! to the names of its parts, e.g. its folded BN), the longest matching name prefix, the exact
//! op type ([`Op::type_name`], e.g. `"ConvBnReLU62d"`), the base op type (`"Conv2d"` also
//! selects `ConvBn*` / `ConvReLU*`, `"Linear"` selects `Linear*`, `"BatchNorm2d"` selects
//! `BN*`, `"Add"` selects `AddReLU*`), then the global config. A `None` anywhere in that chain
//! keeps the node in float.
//!
//! ```
//! use qat_graph::qconfig::QConfig;
//! let q = QConfig::default_qat()
//!     .with_prefix("classifier", None) // keep the classifier in float
//!     .with_op_type("Add", Some(QConfig::lsq(4).unwrap().global().unwrap().clone()));
//! assert!(q.resolve(&["classifier.1"], "Linear").is_none());
//! assert!(q.resolve(&["features.0.0"], "ConvBnReLU62d").is_some());
//! ```

use qat_core::{QDType, QScheme, Signedness, DEFAULT_EPS};
use qat_observer::{
    HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver, Observer, ObserverConfig, PerChannelMinMaxObserver,
    PercentileObserver,
};

use crate::error::{GraphError, Result};
use crate::ir::Op;

/// The statistic an observer keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ObserverKind {
    /// Running min / max (`MinMaxObserver`, `PerChannelMinMaxObserver`).
    MinMax,
    /// Exponential moving average of the batch min / max (`MovingAverage*MinMaxObserver`).
    MovingAverageMinMax { averaging_constant: f32 },
    /// `HistogramObserver` (L2-error range search); per-tensor only.
    Histogram { bins: usize },
    /// Our percentile clipping observer; per-tensor only.
    Percentile { lower: f64, upper: f64 },
}

/// What wraps the observer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeQuantKind {
    /// `FusedMovingAvgObsFakeQuantize` (needs [`ObserverKind::MovingAverageMinMax`]).
    FusedMovingAverage,
    /// `FakeQuantize` around any observer.
    FakeQuantize,
    /// `_LearnableFakeQuantize` (LSQ): scale / zero point learned after a static estimate.
    Learnable { use_grad_scaling: bool },
    /// An observer alone (post-training calibration): never fake-quantizes.
    ObserveOnly,
}

/// One fake-quant (or observer) spec: what PyTorch writes as `X.with_args(...)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FqSpec {
    pub kind: FakeQuantKind,
    pub observer: ObserverKind,
    pub dtype: QDType,
    /// For weights the channel axis is the output-channel axis 0 (conv and linear alike).
    pub scheme: QScheme,
    pub eps: f32,
}

/// A fake-quant module built from an [`FqSpec`].
#[derive(Debug)]
pub enum FqModuleKind {
    Fused(qat_fakequant::FusedMovingAvgObsFakeQuantize),
    Plain(qat_fakequant::FakeQuantize),
    Learnable(qat_fakequant::LearnableFakeQuantize),
}

impl FqSpec {
    fn observer_config(&self) -> ObserverConfig {
        ObserverConfig::new(self.dtype, self.scheme).with_eps(self.eps)
    }

    /// A fresh observer for this spec.
    pub fn build_observer(&self) -> Result<Box<dyn Observer>> {
        let cfg = self.observer_config();
        let per_channel = self.scheme.is_per_channel();
        let err = |e: qat_observer::ObserverError| GraphError::Graph(format!("qconfig: {e}"));
        let obs: Box<dyn Observer> = match (self.observer, per_channel) {
            (ObserverKind::MinMax, false) => Box::new(MinMaxObserver::new(cfg).map_err(err)?),
            (ObserverKind::MinMax, true) => {
                Box::new(PerChannelMinMaxObserver::new(cfg).map_err(err)?)
            }
            (ObserverKind::MovingAverageMinMax { averaging_constant }, false) => {
                Box::new(MovingAverageMinMaxObserver::new(cfg, averaging_constant).map_err(err)?)
            }
            (ObserverKind::MovingAverageMinMax { averaging_constant }, true) => Box::new(
                MovingAveragePerChannelMinMaxObserver::new(cfg, averaging_constant).map_err(err)?,
            ),
            (ObserverKind::Histogram { bins }, false) => {
                Box::new(HistogramObserver::new(cfg, bins).map_err(err)?)
            }
            (ObserverKind::Percentile { lower, upper }, false) => {
                Box::new(PercentileObserver::new(cfg, lower, upper).map_err(err)?)
            }
            (o, true) => {
                return Err(GraphError::Graph(format!(
                    "qconfig: observer {o:?} has no per-channel form"
                )))
            }
        };
        Ok(obs)
    }

    /// Build the module; `channels` is the length of the channel axis for per-channel specs.
    pub fn build(&self, channels: usize) -> Result<FqModuleKind> {
        let cerr = |e: candle_core::Error| GraphError::Graph(format!("qconfig: {e}"));
        Ok(match self.kind {
            FakeQuantKind::FusedMovingAverage => {
                let ObserverKind::MovingAverageMinMax { averaging_constant } = self.observer else {
                    return Err(GraphError::Graph(format!(
                        "qconfig: FusedMovingAverage needs a MovingAverageMinMax observer, got {:?}",
                        self.observer
                    )));
                };
                FqModuleKind::Fused(
                    qat_fakequant::FusedMovingAvgObsFakeQuantize::new(
                        self.observer_config(),
                        averaging_constant,
                    )
                    .map_err(cerr)?,
                )
            }
            FakeQuantKind::FakeQuantize => {
                FqModuleKind::Plain(qat_fakequant::FakeQuantize::new(self.build_observer()?))
            }
            FakeQuantKind::ObserveOnly => {
                let fq = qat_fakequant::FakeQuantize::new(self.build_observer()?);
                fq.enable_fake_quant(false);
                FqModuleKind::Plain(fq)
            }
            FakeQuantKind::Learnable { use_grad_scaling } => {
                let ch = self.scheme.is_per_channel().then_some(channels);
                FqModuleKind::Learnable(
                    qat_fakequant::LearnableFakeQuantize::new(
                        self.build_observer()?,
                        ch,
                        use_grad_scaling,
                    )
                    .map_err(cerr)?,
                )
            }
        })
    }
}

/// The activation and weight specs of one quantized node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeQConfig {
    /// Applied to the node's output (and to the model input / float-island boundaries).
    pub activation: FqSpec,
    /// Applied to conv / linear weights inside the node.
    pub weight: FqSpec,
}

/// A global node config plus overrides; see the module docs for the resolution order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QConfig {
    global: Option<NodeQConfig>,
    by_name: Vec<(String, Option<NodeQConfig>)>,
    by_prefix: Vec<(String, Option<NodeQConfig>)>,
    by_type: Vec<(String, Option<NodeQConfig>)>,
}

const PYTORCH_AVG: f32 = 0.01;

fn moving_avg_act(dtype: QDType) -> FqSpec {
    FqSpec {
        kind: FakeQuantKind::FusedMovingAverage,
        observer: ObserverKind::MovingAverageMinMax {
            averaging_constant: PYTORCH_AVG,
        },
        dtype,
        scheme: QScheme::PerTensorAffine,
        eps: DEFAULT_EPS,
    }
}

fn per_channel_weight(dtype: QDType) -> FqSpec {
    FqSpec {
        kind: FakeQuantKind::FusedMovingAverage,
        observer: ObserverKind::MovingAverageMinMax {
            averaging_constant: PYTORCH_AVG,
        },
        dtype,
        scheme: QScheme::PerChannelSymmetric { axis: 0 },
        eps: DEFAULT_EPS,
    }
}

fn custom(s: Signedness, lo: i32, hi: i32) -> QDType {
    QDType::custom(s, lo, hi).expect("a valid 8-bit range")
}

impl QConfig {
    /// Every node in float (add overrides to quantize some).
    pub fn float() -> Self {
        Self::default()
    }

    /// The same config for every node.
    pub fn uniform(node: NodeQConfig) -> Self {
        QConfig {
            global: Some(node),
            ..Self::default()
        }
    }

    /// Our QAT default: u8 `[0, 255]` per-tensor affine activations with a moving-average
    /// min / max (fused fake-quant, averaging constant 0.01), i8 `[-128, 127]` per-channel
    /// symmetric weights with a moving-average per-channel min / max.
    pub fn default_qat() -> Self {
        Self::uniform(NodeQConfig {
            activation: moving_avg_act(custom(Signedness::Unsigned, 0, 255)),
            weight: per_channel_weight(custom(Signedness::Signed, -128, 127)),
        })
    }

    /// PyTorch's `get_default_qat_qconfig('x86')` (version 1): activations
    /// `FusedMovingAvgObsFakeQuantize(MovingAverageMinMaxObserver, quant_min=0,
    /// quant_max=255, reduce_range=True)` — i.e. `[0, 127]` — and
    /// `default_fused_per_channel_wt_fake_quant` weights (qint8 `[-128, 127]`, per-channel
    /// symmetric).
    pub fn pytorch_x86() -> Self {
        Self::uniform(NodeQConfig {
            activation: moving_avg_act(custom(Signedness::Unsigned, 0, 255).reduce_range()),
            weight: per_channel_weight(custom(Signedness::Signed, -128, 127)),
        })
    }

    /// LSQ with `bits` (2–8) for activations (unsigned, per-tensor affine) and weights
    /// (signed, per-channel symmetric); scales initialised by a min / max observer and learned
    /// with LSQ's gradient scaling.
    pub fn lsq(bits: u32) -> Result<Self> {
        if !(2..=8).contains(&bits) {
            return Err(GraphError::Graph(format!(
                "qconfig: LSQ needs 2 to 8 bits, got {bits}"
            )));
        }
        let err = |e: qat_core::QuantError| GraphError::Graph(format!("qconfig: {e}"));
        let spec = |dtype, scheme| FqSpec {
            kind: FakeQuantKind::Learnable {
                use_grad_scaling: true,
            },
            observer: ObserverKind::MinMax,
            dtype,
            scheme,
            eps: DEFAULT_EPS,
        };
        Ok(Self::uniform(NodeQConfig {
            activation: spec(
                QDType::unsigned(bits).map_err(err)?,
                QScheme::PerTensorAffine,
            ),
            weight: spec(
                QDType::signed(bits).map_err(err)?,
                QScheme::PerChannelSymmetric { axis: 0 },
            ),
        }))
    }

    /// Post-training quantization: histogram observers (2048 bins) on u8 activations and
    /// per-channel min / max on i8 symmetric weights; observers only, no fake quantization.
    pub fn ptq() -> Self {
        Self::uniform(NodeQConfig {
            activation: FqSpec {
                kind: FakeQuantKind::ObserveOnly,
                observer: ObserverKind::Histogram { bins: 2048 },
                dtype: QDType::quint8(),
                scheme: QScheme::PerTensorAffine,
                eps: DEFAULT_EPS,
            },
            weight: FqSpec {
                kind: FakeQuantKind::ObserveOnly,
                observer: ObserverKind::MinMax,
                dtype: custom(Signedness::Signed, -128, 127),
                scheme: QScheme::PerChannelSymmetric { axis: 0 },
                eps: DEFAULT_EPS,
            },
        })
    }

    /// The global node config.
    pub fn global(&self) -> Option<&NodeQConfig> {
        self.global.as_ref()
    }

    /// Override one node by exact name (`None`: keep it in float).
    pub fn with_name(mut self, name: &str, cfg: Option<NodeQConfig>) -> Self {
        self.by_name.retain(|(n, _)| n != name);
        self.by_name.push((name.to_string(), cfg));
        self
    }

    /// Override every node whose name starts with `prefix` at a `.` boundary (or equals it).
    pub fn with_prefix(mut self, prefix: &str, cfg: Option<NodeQConfig>) -> Self {
        self.by_prefix.retain(|(n, _)| n != prefix);
        self.by_prefix.push((prefix.to_string(), cfg));
        self
    }

    /// Override every node of an op type (exact fused type or base type, see module docs).
    pub fn with_op_type(mut self, op_type: &str, cfg: Option<NodeQConfig>) -> Self {
        self.by_type.retain(|(n, _)| n != op_type);
        self.by_type.push((op_type.to_string(), cfg));
        self
    }

    /// The config for a node known by `names` (its name first, then its parts' names) and
    /// its op type name.
    pub fn resolve(&self, names: &[&str], op_type: &str) -> Option<&NodeQConfig> {
        if let Some((_, c)) = self
            .by_name
            .iter()
            .find(|(n, _)| names.iter().any(|x| x == n))
        {
            return c.as_ref();
        }
        let prefix_len = |p: &str| {
            names
                .iter()
                .filter(|n| {
                    n.starts_with(p)
                        && (n.len() == p.len() || p.ends_with('.') || n.as_bytes()[p.len()] == b'.')
                })
                .map(|_| p.len())
                .max()
        };
        if let Some((_, c)) = self
            .by_prefix
            .iter()
            .filter_map(|(p, c)| prefix_len(p).map(|l| (l, c)))
            .max_by_key(|(l, _)| *l)
        {
            return c.as_ref();
        }
        if let Some((_, c)) = self.by_type.iter().find(|(t, _)| t == op_type) {
            return c.as_ref();
        }
        let base = base_type(op_type);
        if let Some((_, c)) = self.by_type.iter().find(|(t, _)| Some(t.as_str()) == base) {
            return c.as_ref();
        }
        self.global.as_ref()
    }

    /// [`QConfig::resolve`] for a node of a graph.
    pub fn for_node(&self, name: &str, op: &Op) -> Option<&NodeQConfig> {
        let mut names = vec![name];
        if let Op::ConvBn { bn, .. } | Op::LinearBn { bn, .. } = op {
            names.push(bn.name.as_str());
        }
        self.resolve(&names, &op.type_name())
    }
}

/// The unfused op type a fused type name starts from.
fn base_type(op_type: &str) -> Option<&'static str> {
    if op_type.starts_with("Conv") {
        Some("Conv2d")
    } else if op_type.starts_with("Linear") {
        Some("Linear")
    } else if op_type.starts_with("BN") {
        Some("BatchNorm2d")
    } else if op_type.starts_with("Add") {
        Some("Add")
    } else {
        None
    }
}
