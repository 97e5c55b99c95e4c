//! MobileNetV2 (Sandler et al. 2018) built with the `qat-graph` builder, with parameter names
//! identical to torchvision's `state_dict` (`features.N.conv.M...`, `classifier.1`), so a
//! torchvision checkpoint converted to safetensors loads directly.
//!
//! Two configurations: torchvision's ImageNet 224 model ([`MobileNetV2Config::imagenet`]) and
//! a small-image model ([`MobileNetV2Config::small`]: 1 or 3 input channels, stem stride 1 and
//! a CIFAR-style inverted-residual setting). The width multiplier rounds channel counts with
//! torchvision's `_make_divisible`. Activation is ReLU6 by default, or ReLU (what PyTorch's
//! quantizable variant uses).
//!
//! ```
//! use mobilenet_v2::{build, MobileNetV2Config};
//! # fn main() -> qat_graph::Result<()> {
//! let cfg = MobileNetV2Config::small(1, 28, 0.5, 10);
//! let g = build(&cfg)?;
//! assert_eq!(g.shape(g.outputs()[0]), &[10]);
//! assert!(g.find("features.1.conv.0.0").is_some());
//! # Ok(()) }
//! ```

pub mod pipeline;

use qat_graph::{BnCfg, Conv2dCfg, Graph, LinearCfg, NodeId, Result};

/// The activation after each expansion / depthwise conv.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    #[default]
    ReLU6,
    ReLU,
}

/// The architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct MobileNetV2Config {
    /// Input channels (1 or 3 for images).
    pub in_channels: usize,
    /// Input height and width.
    pub input_size: usize,
    pub width_mult: f64,
    pub num_classes: usize,
    /// Stride of the first 3×3 conv (2 for ImageNet, 1 for small images).
    pub stem_stride: usize,
    /// Rows `[t, c, n, s]`: expansion, output channels (before the width multiplier), repeats,
    /// stride of the first repeat.
    pub inverted_residual_setting: Vec<[usize; 4]>,
    /// Channel counts are rounded to multiples of this.
    pub round_nearest: usize,
    pub activation: Activation,
    /// Dropout before the classifier.
    pub dropout: f64,
}

/// torchvision's setting for ImageNet.
pub const IMAGENET_SETTING: [[usize; 4]; 7] = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
];

/// The small-image (28×28, 32×32) setting: no downsampling in the second stage.
pub const SMALL_SETTING: [[usize; 4]; 7] = [
    [1, 16, 1, 1],
    [6, 24, 2, 1],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
];

impl MobileNetV2Config {
    /// torchvision's `mobilenet_v2(width_mult=..., num_classes=...)` on 3×224×224.
    pub fn imagenet(width_mult: f64, num_classes: usize) -> Self {
        MobileNetV2Config {
            in_channels: 3,
            input_size: 224,
            width_mult,
            num_classes,
            stem_stride: 2,
            inverted_residual_setting: IMAGENET_SETTING.to_vec(),
            round_nearest: 8,
            activation: Activation::ReLU6,
            dropout: 0.2,
        }
    }

    /// The small-image model: `in_channels`×`input_size`², stem stride 1, [`SMALL_SETTING`].
    pub fn small(
        in_channels: usize,
        input_size: usize,
        width_mult: f64,
        num_classes: usize,
    ) -> Self {
        MobileNetV2Config {
            in_channels,
            input_size,
            stem_stride: 1,
            inverted_residual_setting: SMALL_SETTING.to_vec(),
            ..Self::imagenet(width_mult, num_classes)
        }
    }

    /// The same configuration with another activation.
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }
}

/// torchvision's `_make_divisible`: round `v` to the nearest multiple of `divisor` (at least
/// `divisor`), never going more than 10% below `v`.
///
/// ```
/// assert_eq!(mobilenet_v2::make_divisible(32.0 * 0.5, 8), 16);
/// assert_eq!(mobilenet_v2::make_divisible(24.0 * 0.75, 8), 24);
/// assert_eq!(mobilenet_v2::make_divisible(96.0 * 0.35, 8), 32);
/// ```
pub fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let rounded = ((v + d / 2.0) as usize / divisor * divisor).max(divisor);
    if (rounded as f64) < 0.9 * v {
        rounded + divisor
    } else {
        rounded
    }
}

struct Builder<'a> {
    g: Graph,
    act: Activation,
    _cfg: &'a MobileNetV2Config,
}

impl Builder<'_> {
    /// torchvision's `Conv2dNormActivation`: `<name>.0` conv (no bias), `.1` BN, `.2` act.
    fn conv_bn_act(&mut self, name: &str, x: NodeId, conv: Conv2dCfg) -> Result<NodeId> {
        let out = conv.out_channels;
        let x = self.g.conv2d(&format!("{name}.0"), x, conv.bias(false))?;
        let x = self
            .g
            .batch_norm2d(&format!("{name}.1"), x, BnCfg::new(out))?;
        let act = format!("{name}.2");
        match self.act {
            Activation::ReLU6 => self.g.relu6(&act, x),
            Activation::ReLU => self.g.relu(&act, x),
        }
    }

    fn inverted_residual(
        &mut self,
        name: &str,
        x: NodeId,
        inp: usize,
        oup: usize,
        stride: usize,
        expand: usize,
    ) -> Result<NodeId> {
        let hidden = inp * expand;
        let mut y = x;
        let mut m = 0;
        if expand != 1 {
            y = self.conv_bn_act(
                &format!("{name}.conv.{m}"),
                y,
                Conv2dCfg::new(inp, hidden, 1),
            )?;
            m += 1;
        }
        let dw = Conv2dCfg::new(hidden, hidden, 3)
            .stride(stride)
            .padding(1)
            .groups(hidden);
        y = self.conv_bn_act(&format!("{name}.conv.{m}"), y, dw)?;
        let pw = Conv2dCfg::new(hidden, oup, 1).bias(false);
        y = self.g.conv2d(&format!("{name}.conv.{}", m + 1), y, pw)?;
        y = self
            .g
            .batch_norm2d(&format!("{name}.conv.{}", m + 2), y, BnCfg::new(oup))?;
        if stride == 1 && inp == oup {
            // PyTorch's quantizable model names its residual FloatFunctional `skip_add`.
            y = self.g.add(&format!("{name}.skip_add"), x, y)?;
        }
        Ok(y)
    }
}

/// Build the graph. Nodes: input `x`; `features.0` stem; `features.1..=17` inverted
/// residuals; `features.18` last 1×1 conv; `pool` (global average); `flatten`;
/// `classifier.0` dropout; `classifier.1` linear.
pub fn build(cfg: &MobileNetV2Config) -> Result<Graph> {
    let mut b = Builder {
        g: Graph::new(),
        act: cfg.activation,
        _cfg: cfg,
    };
    let r = cfg.round_nearest;
    let mut inp = make_divisible(32.0 * cfg.width_mult, r);
    let last = make_divisible(1280.0 * cfg.width_mult.max(1.0), r);
    let x =
        b.g.input("x", [cfg.in_channels, cfg.input_size, cfg.input_size])?;
    let stem = Conv2dCfg::new(cfg.in_channels, inp, 3)
        .stride(cfg.stem_stride)
        .padding(1);
    let mut x = b.conv_bn_act("features.0", x, stem)?;
    let mut idx = 1;
    for &[t, c, n, s] in &cfg.inverted_residual_setting {
        let oup = make_divisible(c as f64 * cfg.width_mult, r);
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            x = b.inverted_residual(&format!("features.{idx}"), x, inp, oup, stride, t)?;
            inp = oup;
            idx += 1;
        }
    }
    x = b.conv_bn_act(&format!("features.{idx}"), x, Conv2dCfg::new(inp, last, 1))?;
    x = b.g.global_avg_pool("pool", x)?;
    x = b.g.flatten("flatten", x)?;
    x = b.g.dropout("classifier.0", x, cfg.dropout)?;
    let fc = LinearCfg {
        in_features: last,
        out_features: cfg.num_classes,
        bias: true,
    };
    b.g.linear("classifier.1", x, fc)?;
    Ok(b.g)
}

/// Multiply-accumulates per image (convolutions and the classifier).
pub fn macs(cfg: &MobileNetV2Config) -> Result<u64> {
    Ok(build(cfg)?.macs())
}
