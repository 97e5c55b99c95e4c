//! The ops of a [`crate::QuantizedModel`]'s plan, in their canonical (unpacked) form: what the
//! builder receives, what the file stores, and what [`crate::QuantizedModel::ops`] shows.
//!
//! Every op produces one value named like the op. Quantized values are u8 NHWC with one
//! [`QParams`] pair; float values (float islands) are f32 NHWC.

use qat_core::QParams;
use qat_kernels::Activation;

/// Per-sample shape of a value: channels, height, width (stored NHWC: `[h][w][c]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Shape {
    /// `[c, h, w]` (PyTorch's per-sample NCHW order).
    pub const fn new(c: usize, h: usize, w: usize) -> Self {
        Shape { c, h, w }
    }

    /// Elements per sample (`c · h · w`), `None` on overflow.
    pub fn numel(&self) -> Option<usize> {
        self.c.checked_mul(self.h)?.checked_mul(self.w)
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {}, {}]", self.c, self.h, self.w)
    }
}

/// The element type of a value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueType {
    /// u8 affine with these parameters.
    U8(QParams),
    /// f32 (a float island).
    F32,
}

/// A bias as given to the builder: already quantized to i32 (scale `input_scale ·
/// weight_scale[oc]`), or in f32, quantized by the builder as
/// `round_half_even(bias / (input_scale · weight_scale[oc]))` in f64 (`Err` outside i32).
#[derive(Debug, Clone, PartialEq)]
pub enum Bias {
    None,
    I32(Vec<i32>),
    F32(Vec<f32>),
}

/// A quantized 2-D convolution (any kernel, stride, padding, dilation, groups; depthwise when
/// `groups = in_channels = out_channels`).
#[derive(Debug, Clone, PartialEq)]
pub struct Conv2dParams {
    pub out_channels: usize,
    /// `(kh, kw)`.
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    /// Symmetric per axis, as in PyTorch.
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
    /// OIHW `[out_channels][in_channels / groups][kh][kw]`, symmetric per output channel.
    pub weight: Vec<i8>,
    /// One per output channel, finite and > 0.
    pub weight_scales: Vec<f32>,
    pub bias: Bias,
    pub output: QParams,
    pub activation: Activation,
}

/// A quantized linear layer `[in] → [out]` on a `[C, 1, 1]` value (run as one GEMM over the
/// batch).
#[derive(Debug, Clone, PartialEq)]
pub struct LinearParams {
    pub out_features: usize,
    /// `[out_features][in_features]` row-major.
    pub weight: Vec<i8>,
    pub weight_scales: Vec<f32>,
    pub bias: Bias,
    pub output: QParams,
    pub activation: Activation,
}

/// One op of the plan, canonical form. Biases are always i32 here (the builder quantizes f32
/// ones).
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// f32 → u8 with these qparams (PyTorch's rule: NaN → 0, ±Inf → 255 / 0).
    Quantize {
        input: String,
        qparams: QParams,
    },
    /// u8 → f32 with the input's qparams.
    Dequantize {
        input: String,
    },
    Conv2d {
        input: String,
        params: Conv2dParams,
    },
    Linear {
        input: String,
        params: LinearParams,
    },
    /// Quantized add of two values of the same shape (different qparams allowed).
    Add {
        a: String,
        b: String,
        output: QParams,
        activation: Activation,
    },
    /// `[C, H, W] → [C, 1, 1]`, requantized to `output`.
    GlobalAvgPool {
        input: String,
        output: QParams,
    },
    /// `[C, 1, 1] → [C, 1, 1]`: a no-op in NHWC (the value shares its input's buffer).
    Flatten {
        input: String,
    },
    /// f32 `y[o] = bias[o] + Σ_i w[o][i] · x[i]` on a `[C, 1, 1]` value.
    FloatLinear {
        input: String,
        out_features: usize,
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
    },
    /// f32 1×1 convolution (stride 1, no padding): `FloatLinear` at every pixel.
    FloatConv1x1 {
        input: String,
        out_channels: usize,
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
    },
    FloatRelu {
        input: String,
    },
    /// `x · relu6(x + 3) / 6`.
    FloatHardswish {
        input: String,
    },
    FloatAdd {
        a: String,
        b: String,
    },
}

impl Op {
    /// The op's kind as written in the file (`"conv2d"`, `"float_linear"`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Quantize { .. } => "quantize",
            Op::Dequantize { .. } => "dequantize",
            Op::Conv2d { .. } => "conv2d",
            Op::Linear { .. } => "linear",
            Op::Add { .. } => "add",
            Op::GlobalAvgPool { .. } => "global_avg_pool",
            Op::Flatten { .. } => "flatten",
            Op::FloatLinear { .. } => "float_linear",
            Op::FloatConv1x1 { .. } => "float_conv1x1",
            Op::FloatRelu { .. } => "float_relu",
            Op::FloatHardswish { .. } => "float_hardswish",
            Op::FloatAdd { .. } => "float_add",
        }
    }

    /// Names of the values the op reads, in order.
    pub fn inputs(&self) -> Vec<&str> {
        match self {
            Op::Add { a, b, .. } | Op::FloatAdd { a, b } => vec![a, b],
            Op::Quantize { input, .. }
            | Op::Dequantize { input }
            | Op::Conv2d { input, .. }
            | Op::Linear { input, .. }
            | Op::GlobalAvgPool { input, .. }
            | Op::Flatten { input }
            | Op::FloatLinear { input, .. }
            | Op::FloatConv1x1 { input, .. }
            | Op::FloatRelu { input }
            | Op::FloatHardswish { input } => vec![input],
        }
    }

    /// Bytes of parameters (weights, biases, scales) the op holds.
    pub fn param_bytes(&self) -> usize {
        let bias = |b: &Bias| match b {
            Bias::None => 0,
            Bias::I32(v) => 4 * v.len(),
            Bias::F32(v) => 4 * v.len(),
        };
        match self {
            Op::Conv2d { params: p, .. } => {
                p.weight.len() + 4 * p.weight_scales.len() + bias(&p.bias)
            }
            Op::Linear { params: p, .. } => {
                p.weight.len() + 4 * p.weight_scales.len() + bias(&p.bias)
            }
            Op::FloatLinear { weight, bias, .. } | Op::FloatConv1x1 { weight, bias, .. } => {
                4 * (weight.len() + bias.as_ref().map_or(0, Vec::len))
            }
            _ => 0,
        }
    }
}

/// A named op: it produces the value `name`.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub op: Op,
    /// Shape and type of the value it produces (filled in by the builder).
    pub shape: Shape,
    pub ty: ValueType,
}
