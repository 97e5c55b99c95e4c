//! The model IR: [`Op`]s, their configurations, and [`Node`]s.
//!
//! Node names are PyTorch module paths (`features.3.conv.1.0`): a node's parameters are
//! `<name>.weight`, `<name>.bias`, ... exactly as in the PyTorch `state_dict`. Fused nodes
//! keep the names of their parts (see [`FusedBn`]), so a state dict maps onto the fused graph
//! unchanged.

/// Index of a node in its [`Graph`](crate::Graph) (nodes are stored in topological order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub usize);

/// `nn.Conv2d`. Stride, padding and dilation are the same along both axes (candle's conv).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dCfg {
    pub in_channels: usize,
    pub out_channels: usize,
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
    pub bias: bool,
}

impl Conv2dCfg {
    /// A square `k×k` convolution, stride 1, no padding, no groups, with bias (PyTorch's defaults).
    pub fn new(in_channels: usize, out_channels: usize, k: usize) -> Self {
        Conv2dCfg {
            in_channels,
            out_channels,
            kernel: [k, k],
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
            bias: true,
        }
    }
    /// Set the stride.
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = s;
        self
    }
    /// Set the padding.
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = p;
        self
    }
    /// Set the dilation.
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = d;
        self
    }
    /// Set the number of groups.
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
    /// Whether the convolution has a bias.
    pub fn bias(mut self, b: bool) -> Self {
        self.bias = b;
        self
    }
    /// Depthwise: one group per channel.
    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.in_channels && self.in_channels == self.out_channels
    }
    /// The weight shape `[out, in / groups, kh, kw]`.
    pub fn weight_shape(&self) -> Vec<usize> {
        vec![
            self.out_channels,
            self.in_channels / self.groups.max(1),
            self.kernel[0],
            self.kernel[1],
        ]
    }
}

/// `nn.BatchNorm1d` / `nn.BatchNorm2d` (affine, running stats tracked).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BnCfg {
    pub num_features: usize,
    pub eps: f64,
    /// Running-stat update factor: `running = (1 - momentum) * running + momentum * batch`.
    pub momentum: f64,
}

impl BnCfg {
    /// PyTorch's defaults: eps 1e-5, momentum 0.1.
    pub fn new(num_features: usize) -> Self {
        BnCfg {
            num_features,
            eps: 1e-5,
            momentum: 0.1,
        }
    }
}

/// `nn.Linear` on `[N, in_features]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearCfg {
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
}

/// `nn.AvgPool2d` / `nn.MaxPool2d` (square window, no padding, floor mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolCfg {
    pub kernel: usize,
    pub stride: usize,
    /// Only 0 is supported (candle's pools do not pad); anything else is a build error.
    pub padding: usize,
}

/// An activation that fuses into the op before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    ReLU,
    ReLU6,
}

impl Act {
    /// `"ReLU"` / `"ReLU6"`.
    pub fn name(self) -> &'static str {
        match self {
            Act::ReLU => "ReLU",
            Act::ReLU6 => "ReLU6",
        }
    }
}

/// A BatchNorm folded into a fused node: its own node name (its parameters stay
/// `<name>.weight`, `<name>.running_mean`, ...) and configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct FusedBn {
    pub name: String,
    pub cfg: BnCfg,
}

/// An operation. The fused variants are produced by [`fuse`](crate::fuse()); in eval mode
/// each computes exactly what its parts compute (the BN is applied, not folded, so fusion
/// changes no number), and in train mode the BN uses batch statistics as its parts would.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A graph input; `shape` excludes the batch dimension (`[C, H, W]` or `[F]`).
    Input {
        shape: Vec<usize>,
    },
    Conv2d(Conv2dCfg),
    BatchNorm2d(BnCfg),
    /// BatchNorm over `[N, F]` (follows a Linear).
    BatchNorm1d(BnCfg),
    Linear(LinearCfg),
    ReLU,
    ReLU6,
    Hardswish,
    /// Elementwise sum of two inputs of the same shape.
    Add,
    /// Concatenation along `axis` of the full tensor (`1` = channels); never the batch axis.
    Concat {
        axis: usize,
    },
    /// `adaptive_avg_pool2d(x, 1)`: `[C, H, W]` → `[C, 1, 1]`.
    GlobalAvgPool,
    AvgPool2d(PoolCfg),
    MaxPool2d(PoolCfg),
    /// `flatten(x, 1)`.
    Flatten,
    /// `nn.Dropout(p)`: active in train mode only.
    Dropout {
        p: f64,
    },
    Identity,
    /// Conv2d + BatchNorm2d (+ activation): `ConvBn2d`, `ConvBnReLU2d`, `ConvBnReLU6`.
    ConvBn {
        conv: Conv2dCfg,
        bn: FusedBn,
        act: Option<Act>,
    },
    /// Conv2d + activation: `ConvReLU2d`, `ConvReLU6`.
    ConvAct {
        conv: Conv2dCfg,
        act: Act,
    },
    /// Linear + activation: `LinearReLU`, `LinearReLU6`.
    LinearAct {
        linear: LinearCfg,
        act: Act,
    },
    /// Linear + BatchNorm1d: `LinearBn1d`.
    LinearBn {
        linear: LinearCfg,
        bn: FusedBn,
    },
    /// BatchNorm2d + activation: `BNReLU2d`, `BNReLU6`.
    BnAct {
        bn: BnCfg,
        act: Act,
    },
    /// Add + activation: `AddReLU`, `AddReLU6`.
    AddAct {
        act: Act,
    },
}

impl Op {
    /// The op's type name (PyTorch module names where one exists), used in messages and for
    /// selecting nodes by op type.
    pub fn type_name(&self) -> String {
        match self {
            Op::Input { .. } => "Input".into(),
            Op::Conv2d(_) => "Conv2d".into(),
            Op::BatchNorm2d(_) => "BatchNorm2d".into(),
            Op::BatchNorm1d(_) => "BatchNorm1d".into(),
            Op::Linear(_) => "Linear".into(),
            Op::ReLU => "ReLU".into(),
            Op::ReLU6 => "ReLU6".into(),
            Op::Hardswish => "Hardswish".into(),
            Op::Add => "Add".into(),
            Op::Concat { .. } => "Concat".into(),
            Op::GlobalAvgPool => "GlobalAvgPool".into(),
            Op::AvgPool2d(_) => "AvgPool2d".into(),
            Op::MaxPool2d(_) => "MaxPool2d".into(),
            Op::Flatten => "Flatten".into(),
            Op::Dropout { .. } => "Dropout".into(),
            Op::Identity => "Identity".into(),
            Op::ConvBn { act: None, .. } => "ConvBn2d".into(),
            Op::ConvBn { act: Some(a), .. } => format!("ConvBn{}2d", a.name()),
            Op::ConvAct { act, .. } => format!("Conv{}2d", act.name()),
            Op::LinearAct { act, .. } => format!("Linear{}", act.name()),
            Op::LinearBn { .. } => "LinearBn1d".into(),
            Op::BnAct { act, .. } => format!("BN{}2d", act.name()),
            Op::AddAct { act } => format!("Add{}", act.name()),
        }
    }

    /// How many inputs the op takes (`None`: two or more, for Concat).
    pub fn arity(&self) -> Option<usize> {
        match self {
            Op::Input { .. } => Some(0),
            Op::Add | Op::AddAct { .. } => Some(2),
            Op::Concat { .. } => None,
            _ => Some(1),
        }
    }

    /// Whether the op is one of the fused variants.
    pub fn is_fused(&self) -> bool {
        matches!(
            self,
            Op::ConvBn { .. }
                | Op::ConvAct { .. }
                | Op::LinearAct { .. }
                | Op::LinearBn { .. }
                | Op::BnAct { .. }
                | Op::AddAct { .. }
        )
    }
}

/// A named operation on earlier nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// PyTorch module path; parameter names are `<name>.<param>`.
    pub name: String,
    pub op: Op,
    /// Producers, in argument order.
    pub inputs: Vec<NodeId>,
}
