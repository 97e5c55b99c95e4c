//! The parameters and buffers a graph owns, under PyTorch `state_dict` names, and their
//! seeded initialisation (torchvision MobileNetV2's scheme).

use candle_core::{DType, Device, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::error::Result;
use crate::graph::Graph;
use crate::ir::{BnCfg, Conv2dCfg, LinearCfg, Op};

/// What a state-dict entry is; decides initialisation, training and weight decay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// Conv weight `[O, I/g, kh, kw]`: kaiming normal, fan_out (torchvision).
    ConvWeight,
    /// Linear weight `[O, I]`: normal(0, 0.01) (torchvision MobileNetV2).
    LinearWeight,
    /// Conv / linear bias: zeros.
    Bias,
    /// BN γ: ones.
    BnWeight,
    /// BN β: zeros.
    BnBias,
    /// BN running mean buffer: zeros.
    RunningMean,
    /// BN running (unbiased) variance buffer: ones.
    RunningVar,
    /// BN `num_batches_tracked` buffer: an i64 scalar, 0.
    NumBatchesTracked,
}

impl ParamKind {
    /// Learned by gradient descent (not a buffer).
    pub fn is_trainable(self) -> bool {
        matches!(
            self,
            ParamKind::ConvWeight
                | ParamKind::LinearWeight
                | ParamKind::Bias
                | ParamKind::BnWeight
                | ParamKind::BnBias
        )
    }
    /// Gets weight decay: conv and linear weights only (never BN parameters or biases).
    pub fn decays(self) -> bool {
        matches!(self, ParamKind::ConvWeight | ParamKind::LinearWeight)
    }
}

/// One state-dict entry of a graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    /// Full PyTorch name, e.g. `features.0.1.running_var`.
    pub name: String,
    /// Shape (`[]` for `num_batches_tracked`).
    pub shape: Vec<usize>,
    pub kind: ParamKind,
}

impl ParamSpec {
    /// The dtype PyTorch stores it in (i64 for `num_batches_tracked`, else f32).
    pub fn dtype(&self) -> DType {
        match self.kind {
            ParamKind::NumBatchesTracked => DType::I64,
            _ => DType::F32,
        }
    }
}

fn spec(name: &str, suffix: &str, shape: Vec<usize>, kind: ParamKind) -> ParamSpec {
    ParamSpec {
        name: format!("{name}.{suffix}"),
        shape,
        kind,
    }
}

fn conv_specs(name: &str, c: &Conv2dCfg, out: &mut Vec<ParamSpec>) {
    out.push(spec(
        name,
        "weight",
        c.weight_shape(),
        ParamKind::ConvWeight,
    ));
    if c.bias {
        out.push(spec(name, "bias", vec![c.out_channels], ParamKind::Bias));
    }
}

fn linear_specs(name: &str, l: &LinearCfg, out: &mut Vec<ParamSpec>) {
    let shape = vec![l.out_features, l.in_features];
    out.push(spec(name, "weight", shape, ParamKind::LinearWeight));
    if l.bias {
        out.push(spec(name, "bias", vec![l.out_features], ParamKind::Bias));
    }
}

fn bn_specs(name: &str, b: &BnCfg, out: &mut Vec<ParamSpec>) {
    let c = vec![b.num_features];
    out.push(spec(name, "weight", c.clone(), ParamKind::BnWeight));
    out.push(spec(name, "bias", c.clone(), ParamKind::BnBias));
    out.push(spec(
        name,
        "running_mean",
        c.clone(),
        ParamKind::RunningMean,
    ));
    out.push(spec(name, "running_var", c, ParamKind::RunningVar));
    out.push(spec(
        name,
        "num_batches_tracked",
        vec![],
        ParamKind::NumBatchesTracked,
    ));
}

/// The state-dict entries of one node (fused nodes list their parts' entries under the
/// parts' names).
pub fn node_param_specs(name: &str, op: &Op) -> Vec<ParamSpec> {
    let mut v = Vec::new();
    match op {
        Op::Conv2d(c) | Op::ConvAct { conv: c, .. } => conv_specs(name, c, &mut v),
        Op::ConvBn { conv, bn, .. } => {
            conv_specs(name, conv, &mut v);
            bn_specs(&bn.name, &bn.cfg, &mut v);
        }
        Op::Linear(l) | Op::LinearAct { linear: l, .. } => linear_specs(name, l, &mut v),
        Op::LinearBn { linear, bn } => {
            linear_specs(name, linear, &mut v);
            bn_specs(&bn.name, &bn.cfg, &mut v);
        }
        Op::BatchNorm2d(b) | Op::BatchNorm1d(b) | Op::BnAct { bn: b, .. } => {
            bn_specs(name, b, &mut v)
        }
        _ => {}
    }
    v
}

impl Graph {
    /// Every state-dict entry of the graph, in node order.
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        self.nodes()
            .iter()
            .flat_map(|n| node_param_specs(&n.name, &n.op))
            .collect()
    }
}

/// A seeded, portable RNG (ChaCha8) for initialisation, dropout and shuffling: the same seed
/// gives the same numbers on every platform.
pub fn seeded_rng(seed: u64) -> ChaCha8Rng {
    use rand::SeedableRng;
    ChaCha8Rng::seed_from_u64(seed)
}

/// `n` samples of N(mean, std²) by Box–Muller in f64 (rand 0.8 has no normal distribution
/// without rand_distr).
pub fn normal_vec(rng: &mut impl Rng, n: usize, mean: f64, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // 1 - u keeps the log argument in (0, 1].
        let u1: f64 = 1.0 - rng.gen::<f64>();
        let u2: f64 = rng.gen::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((mean + std * r * t.cos()) as f32);
        out.push((mean + std * r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// The initial value of a parameter (torchvision MobileNetV2's `__init__` scheme).
pub fn init_param(spec: &ParamSpec, rng: &mut impl Rng, dev: &Device) -> Result<Tensor> {
    let n: usize = spec.shape.iter().product();
    let shape = spec.shape.as_slice();
    let t = match spec.kind {
        ParamKind::ConvWeight => {
            // kaiming_normal_(mode="fan_out", nonlinearity="relu"): PyTorch's fan_out is
            // out_channels * receptive field, not divided by groups.
            let fan_out = spec.shape[0] * spec.shape[2] * spec.shape[3];
            let std = (2.0 / fan_out as f64).sqrt();
            Tensor::from_vec(normal_vec(rng, n, 0.0, std), shape, dev)?
        }
        ParamKind::LinearWeight => Tensor::from_vec(normal_vec(rng, n, 0.0, 0.01), shape, dev)?,
        ParamKind::Bias | ParamKind::BnBias | ParamKind::RunningMean => {
            Tensor::zeros(shape, DType::F32, dev)?
        }
        ParamKind::BnWeight | ParamKind::RunningVar => Tensor::ones(shape, DType::F32, dev)?,
        ParamKind::NumBatchesTracked => Tensor::new(0i64, dev)?,
    };
    Ok(t)
}
