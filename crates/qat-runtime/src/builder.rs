//! [`ModelBuilder`]: assemble a [`QuantizedModel`] op by op from canonical (unpacked) weights.
//!
//! Every call validates the new op against what is already there (value names, element types,
//! shapes, channel counts, weight lengths, qparams ranges) and returns an `Err` naming the op;
//! nothing is packed until [`ModelBuilder::build`], which packs every op for one ISA.

use crate::error::{op_err, RuntimeError};
use crate::model::{ModelOptions, ModelSpec, QuantizedModel};
use crate::op::{Bias, Conv2dParams, LinearParams, Node, Op, Shape, ValueType};
use crate::Result;
use qat_core::QParams;
use qat_kernels::conv::Conv2dGeometry;
use qat_kernels::Activation;
use std::collections::HashMap;

/// Largest value (elements per sample) a model may hold: keeps every size computation far
/// from overflow and refuses absurd shapes from a tampered file before anything is allocated.
pub const MAX_VALUE_ELEMS: usize = 1 << 28;

/// The model's input: an f32 NCHW tensor quantized on entry (or u8 NHWC given directly).
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub shape: Shape,
    pub qparams: QParams,
}

/// Builds a [`QuantizedModel`].
///
/// ```
/// use qat_core::QParams;
/// use qat_kernels::Activation;
/// use qat_runtime::{Bias, LinearParams, ModelBuilder, Shape};
/// let q = QParams { scale: 0.1, zero_point: 0 };
/// let mut b = ModelBuilder::new();
/// b.input("x", Shape::new(2, 1, 1), q).unwrap();
/// b.linear("fc", "x", LinearParams {
///     out_features: 1, weight: vec![1, 1], weight_scales: vec![1.0], bias: Bias::None,
///     output: q, activation: Activation::None,
/// }).unwrap();
/// b.dequantize("y", "fc").unwrap();
/// let model = b.build("y").unwrap();
/// // x = [0.3, 0.4] → q = [3, 4]; acc = 7 → 7 · 0.1 · 1 / 0.1 = 7 → 0.7
/// let y = model.run(&[0.3, 0.4], 1).unwrap();
/// assert!((y[0] - 0.7).abs() < 1e-6);
/// ```
#[derive(Debug, Default, Clone)]
pub struct ModelBuilder {
    input: Option<InputSpec>,
    nodes: Vec<Node>,
    values: HashMap<String, (Shape, ValueType)>,
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:/-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(op_err(
            name,
            "a name must be 1 to 256 characters from [A-Za-z0-9_.:/-]",
        ))
    }
}

/// `Err` unless `q` is a valid u8 activation mapping.
pub(crate) fn check_qparams(op: &str, what: &str, q: QParams) -> Result<()> {
    if !(q.scale.is_finite() && q.scale > 0.0) {
        return Err(op_err(
            op,
            format!("{what} scale {} must be finite and > 0", q.scale),
        ));
    }
    if !(0..=255).contains(&q.zero_point) {
        return Err(op_err(
            op,
            format!("{what} zero point {} is outside [0, 255]", q.zero_point),
        ));
    }
    Ok(())
}

/// `Err` for an explicit clamp whose bounds are reversed.
fn check_activation(op: &str, a: Activation) -> Result<()> {
    match a {
        Activation::Clamp { qmin, qmax } if qmin > qmax => Err(op_err(
            op,
            format!("activation clamp [{qmin}, {qmax}] has qmin > qmax"),
        )),
        _ => Ok(()),
    }
}

fn check_weight_scales(op: &str, scales: &[f32], n: usize) -> Result<()> {
    if scales.len() != n {
        return Err(op_err(
            op,
            format!("{} weight scales for {n} output channels", scales.len()),
        ));
    }
    if let Some((i, s)) = scales
        .iter()
        .enumerate()
        .find(|(_, s)| !(s.is_finite() && **s > 0.0))
    {
        return Err(op_err(
            op,
            format!("weight scale [{i}] = {s} must be finite and > 0"),
        ));
    }
    Ok(())
}

/// The i32 bias (or none) of an op with `n` output channels and these scales.
fn quantize_bias(op: &str, bias: &Bias, n: usize, in_scale: f32, w_scales: &[f32]) -> Result<Bias> {
    let check_len = |len: usize| {
        if len == n {
            Ok(())
        } else {
            Err(op_err(
                op,
                format!("bias has {len} values for {n} output channels"),
            ))
        }
    };
    match bias {
        Bias::None => Ok(Bias::None),
        Bias::I32(v) => {
            check_len(v.len())?;
            Ok(Bias::I32(v.clone()))
        }
        Bias::F32(v) => {
            check_len(v.len())?;
            let mut out = Vec::with_capacity(n);
            for (oc, (&b, &ws)) in v.iter().zip(w_scales).enumerate() {
                let q = (b as f64 / (in_scale as f64 * ws as f64)).round_ties_even();
                if !(q.is_finite() && q >= i32::MIN as f64 && q <= i32::MAX as f64) {
                    return Err(op_err(
                        op,
                        format!(
                            "bias [{oc}] = {b} does not fit i32 at scale in·w = {in_scale}·{ws}"
                        ),
                    ));
                }
                out.push(q as i32);
            }
            Ok(Bias::I32(out))
        }
    }
}

fn check_finite(op: &str, what: &str, v: &[f32]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(op_err(op, format!("{what} [{i}] = {} is not finite", v[i]))),
        None => Ok(()),
    }
}

fn check_float_bias(op: &str, bias: &Option<Vec<f32>>, n: usize) -> Result<()> {
    if let Some(b) = bias {
        if b.len() != n {
            return Err(op_err(
                op,
                format!("bias has {} values for {n} outputs", b.len()),
            ));
        }
        check_finite(op, "bias", b)?;
    }
    Ok(())
}

/// The geometry of a conv's parameters.
pub(crate) fn geometry(p: &Conv2dParams) -> Conv2dGeometry {
    Conv2dGeometry {
        kernel_h: p.kernel.0,
        kernel_w: p.kernel.1,
        stride_h: p.stride.0,
        stride_w: p.stride.1,
        pad_h: p.padding.0,
        pad_w: p.padding.1,
        dilation_h: p.dilation.0,
        dilation_w: p.dilation.1,
    }
}

impl ModelBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declare the model's one input: per-sample shape `[C, H, W]` and the qparams it is
    /// quantized with on entry. The value `name` is u8 NHWC.
    pub fn input(&mut self, name: &str, shape: Shape, qparams: QParams) -> Result<&mut Self> {
        check_name(name)?;
        if self.input.is_some() {
            return Err(op_err(
                name,
                "the model already has an input (one input only)",
            ));
        }
        check_qparams(name, "input", qparams)?;
        self.check_shape(name, shape)?;
        self.values
            .insert(name.to_string(), (shape, ValueType::U8(qparams)));
        self.input = Some(InputSpec {
            name: name.to_string(),
            shape,
            qparams,
        });
        Ok(self)
    }

    fn check_shape(&self, op: &str, s: Shape) -> Result<()> {
        match s.numel() {
            Some(n) if n > 0 && n <= MAX_VALUE_ELEMS => Ok(()),
            _ => Err(op_err(
                op,
                format!("shape {s} must be non-empty with at most {MAX_VALUE_ELEMS} elements"),
            )),
        }
    }

    fn value(&self, op: &str, name: &str) -> Result<(Shape, ValueType)> {
        self.values
            .get(name)
            .copied()
            .ok_or_else(|| op_err(op, format!("input value `{name}` is not defined (yet)")))
    }

    fn u8_value(&self, op: &str, name: &str) -> Result<(Shape, QParams)> {
        match self.value(op, name)? {
            (s, ValueType::U8(q)) => Ok((s, q)),
            (_, ValueType::F32) => Err(op_err(
                op,
                format!("input `{name}` is f32; this op needs a quantized (u8) value"),
            )),
        }
    }

    fn f32_value(&self, op: &str, name: &str) -> Result<Shape> {
        match self.value(op, name)? {
            (s, ValueType::F32) => Ok(s),
            (_, ValueType::U8(_)) => Err(op_err(
                op,
                format!("input `{name}` is quantized (u8); this float op needs an f32 value"),
            )),
        }
    }

    fn push(&mut self, name: &str, op: Op, shape: Shape, ty: ValueType) -> Result<&mut Self> {
        check_name(name)?;
        if self.values.contains_key(name) {
            return Err(op_err(name, "a value with this name already exists"));
        }
        self.check_shape(name, shape)?;
        self.values.insert(name.to_string(), (shape, ty));
        self.nodes.push(Node {
            name: name.to_string(),
            op,
            shape,
            ty,
        });
        Ok(self)
    }

    /// Add any canonical [`Op`] (what the file loader uses); dispatches to the typed methods.
    pub fn op(&mut self, name: &str, op: Op) -> Result<&mut Self> {
        match op {
            Op::Quantize { input, qparams } => self.quantize(name, &input, qparams),
            Op::Dequantize { input } => self.dequantize(name, &input),
            Op::Conv2d { input, params } => self.conv2d(name, &input, params),
            Op::Linear { input, params } => self.linear(name, &input, params),
            Op::Add {
                a,
                b,
                output,
                activation,
            } => self.add(name, &a, &b, output, activation),
            Op::GlobalAvgPool { input, output } => self.global_avg_pool(name, &input, Some(output)),
            Op::Flatten { input } => self.flatten(name, &input),
            Op::FloatLinear {
                input,
                out_features,
                weight,
                bias,
            } => self.float_linear(name, &input, out_features, weight, bias),
            Op::FloatConv1x1 {
                input,
                out_channels,
                weight,
                bias,
            } => self.float_conv1x1(name, &input, out_channels, weight, bias),
            Op::FloatRelu { input } => self.float_relu(name, &input),
            Op::FloatHardswish { input } => self.float_hardswish(name, &input),
            Op::FloatAdd { a, b } => self.float_add(name, &a, &b),
        }
    }

    /// f32 → u8 (entering the quantized world after a float island).
    pub fn quantize(&mut self, name: &str, input: &str, qparams: QParams) -> Result<&mut Self> {
        let s = self.f32_value(name, input)?;
        check_qparams(name, "output", qparams)?;
        let op = Op::Quantize {
            input: input.into(),
            qparams,
        };
        self.push(name, op, s, ValueType::U8(qparams))
    }

    /// u8 → f32 with the input's qparams.
    pub fn dequantize(&mut self, name: &str, input: &str) -> Result<&mut Self> {
        let (s, _) = self.u8_value(name, input)?;
        let op = Op::Dequantize {
            input: input.into(),
        };
        self.push(name, op, s, ValueType::F32)
    }

    /// A quantized convolution (see [`Conv2dParams`]); an f32 bias is quantized here.
    pub fn conv2d(&mut self, name: &str, input: &str, mut p: Conv2dParams) -> Result<&mut Self> {
        let (s, in_q) = self.u8_value(name, input)?;
        let (ci, co, g) = (s.c, p.out_channels, p.groups);
        if co == 0 || g == 0 {
            return Err(op_err(
                name,
                format!("out_channels = {co}, groups = {g} must be ≥ 1"),
            ));
        }
        if ci % g != 0 || co % g != 0 {
            return Err(op_err(
                name,
                format!("groups = {g} must divide in_channels = {ci} and out_channels = {co}"),
            ));
        }
        let geo = geometry(&p);
        let (oh, ow) = geo
            .output_hw(s.h, s.w)
            .map_err(crate::error::kernel_err(name))?;
        let expect = co
            .checked_mul(ci / g)
            .and_then(|v| v.checked_mul(geo.taps()))
            .filter(|&v| v <= MAX_VALUE_ELEMS)
            .ok_or_else(|| op_err(name, "weight size overflows"))?;
        if p.weight.len() != expect {
            return Err(op_err(
                name,
                format!(
                    "weight has {} values, OIHW [{co}, {}, {}, {}] needs {expect}",
                    p.weight.len(),
                    ci / g,
                    p.kernel.0,
                    p.kernel.1
                ),
            ));
        }
        check_weight_scales(name, &p.weight_scales, co)?;
        check_qparams(name, "output", p.output)?;
        check_activation(name, p.activation)?;
        p.bias = quantize_bias(name, &p.bias, co, in_q.scale, &p.weight_scales)?;
        check_multipliers(name, in_q.scale, &p.weight_scales, p.output.scale)?;
        let out = p.output;
        let op = Op::Conv2d {
            input: input.into(),
            params: p,
        };
        self.push(name, op, Shape::new(co, oh, ow), ValueType::U8(out))
    }

    /// A quantized linear layer on a `[C, 1, 1]` value (see [`LinearParams`]).
    pub fn linear(&mut self, name: &str, input: &str, mut p: LinearParams) -> Result<&mut Self> {
        let (s, in_q) = self.u8_value(name, input)?;
        if s.h != 1 || s.w != 1 {
            return Err(op_err(
                name,
                format!("linear needs a [C, 1, 1] input, `{input}` is {s} (pool or flatten first)"),
            ));
        }
        let n = p.out_features;
        if n == 0 {
            return Err(op_err(name, "out_features must be ≥ 1"));
        }
        match n.checked_mul(s.c) {
            Some(len) if len == p.weight.len() => {}
            _ => {
                return Err(op_err(
                    name,
                    format!(
                        "weight has {} values, [{n}, {}] needed",
                        p.weight.len(),
                        s.c
                    ),
                ))
            }
        }
        check_weight_scales(name, &p.weight_scales, n)?;
        check_qparams(name, "output", p.output)?;
        check_activation(name, p.activation)?;
        p.bias = quantize_bias(name, &p.bias, n, in_q.scale, &p.weight_scales)?;
        check_multipliers(name, in_q.scale, &p.weight_scales, p.output.scale)?;
        let out = p.output;
        let op = Op::Linear {
            input: input.into(),
            params: p,
        };
        self.push(name, op, Shape::new(n, 1, 1), ValueType::U8(out))
    }

    /// Quantized `a + b` (same shape, any qparams), optionally followed by ReLU / ReLU6.
    pub fn add(
        &mut self,
        name: &str,
        a: &str,
        b: &str,
        output: QParams,
        activation: Activation,
    ) -> Result<&mut Self> {
        let (sa, qa) = self.u8_value(name, a)?;
        let (sb, qb) = self.u8_value(name, b)?;
        if sa != sb {
            return Err(op_err(
                name,
                format!("add of `{a}` {sa} and `{b}` {sb}: shapes differ"),
            ));
        }
        check_qparams(name, "output", output)?;
        check_activation(name, activation)?;
        qat_kernels::elementwise::QuantizedAdd::new(qa, qb, output, activation)
            .map_err(crate::error::kernel_err(name))?;
        let op = Op::Add {
            a: a.into(),
            b: b.into(),
            output,
            activation,
        };
        self.push(name, op, sa, ValueType::U8(output))
    }

    /// Global average pool `[C, H, W] → [C, 1, 1]`; `output = None` keeps the input's qparams
    /// (PyTorch's quantized `adaptive_avg_pool2d`).
    pub fn global_avg_pool(
        &mut self,
        name: &str,
        input: &str,
        output: Option<QParams>,
    ) -> Result<&mut Self> {
        let (s, in_q) = self.u8_value(name, input)?;
        let output = output.unwrap_or(in_q);
        check_qparams(name, "output", output)?;
        let area = s.h * s.w;
        let m = qat_core::avg_pool_multiplier(in_q.scale, output.scale, area);
        if !(m.is_finite() && m > 0.0) {
            return Err(op_err(
                name,
                format!("pool multiplier {m} must be finite and > 0"),
            ));
        }
        let op = Op::GlobalAvgPool {
            input: input.into(),
            output,
        };
        self.push(name, op, Shape::new(s.c, 1, 1), ValueType::U8(output))
    }

    /// Flatten a `[C, 1, 1]` value (u8 or f32): a no-op in NHWC. `Err` for `H · W > 1`, whose
    /// NCHW flattening order would need a transpose.
    pub fn flatten(&mut self, name: &str, input: &str) -> Result<&mut Self> {
        let (s, ty) = self.value(name, input)?;
        if s.h != 1 || s.w != 1 {
            return Err(op_err(
                name,
                format!("flatten of `{input}` {s}: only [C, 1, 1] is supported (NHWC no-op)"),
            ));
        }
        let op = Op::Flatten {
            input: input.into(),
        };
        self.push(name, op, s, ty)
    }

    /// Float island: `y = W x + b` on an f32 `[C, 1, 1]` value; `weight` is `[out][in]`.
    pub fn float_linear(
        &mut self,
        name: &str,
        input: &str,
        out_features: usize,
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
    ) -> Result<&mut Self> {
        let s = self.f32_value(name, input)?;
        if s.h != 1 || s.w != 1 {
            return Err(op_err(
                name,
                format!("float linear needs [C, 1, 1], got {s}"),
            ));
        }
        self.check_float_matrix(name, out_features, s.c, &weight, &bias)?;
        let op = Op::FloatLinear {
            input: input.into(),
            out_features,
            weight,
            bias,
        };
        self.push(name, op, Shape::new(out_features, 1, 1), ValueType::F32)
    }

    /// Float island: 1×1 convolution (stride 1, no padding); `weight` is `[out][in]`.
    pub fn float_conv1x1(
        &mut self,
        name: &str,
        input: &str,
        out_channels: usize,
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
    ) -> Result<&mut Self> {
        let s = self.f32_value(name, input)?;
        self.check_float_matrix(name, out_channels, s.c, &weight, &bias)?;
        let op = Op::FloatConv1x1 {
            input: input.into(),
            out_channels,
            weight,
            bias,
        };
        self.push(name, op, Shape::new(out_channels, s.h, s.w), ValueType::F32)
    }

    fn check_float_matrix(
        &self,
        name: &str,
        n: usize,
        k: usize,
        weight: &[f32],
        bias: &Option<Vec<f32>>,
    ) -> Result<()> {
        if n == 0 {
            return Err(op_err(name, "output features must be ≥ 1"));
        }
        match n.checked_mul(k) {
            Some(len) if len == weight.len() => {}
            _ => {
                return Err(op_err(
                    name,
                    format!("weight has {} values, [{n}, {k}] needed", weight.len()),
                ))
            }
        }
        check_finite(name, "weight", weight)?;
        check_float_bias(name, bias, n)
    }

    /// Float island: ReLU.
    pub fn float_relu(&mut self, name: &str, input: &str) -> Result<&mut Self> {
        let s = self.f32_value(name, input)?;
        let op = Op::FloatRelu {
            input: input.into(),
        };
        self.push(name, op, s, ValueType::F32)
    }

    /// Float island: Hardswish `x · relu6(x + 3) / 6`.
    pub fn float_hardswish(&mut self, name: &str, input: &str) -> Result<&mut Self> {
        let s = self.f32_value(name, input)?;
        let op = Op::FloatHardswish {
            input: input.into(),
        };
        self.push(name, op, s, ValueType::F32)
    }

    /// Float island: `a + b` (same shape).
    pub fn float_add(&mut self, name: &str, a: &str, b: &str) -> Result<&mut Self> {
        let sa = self.f32_value(name, a)?;
        let sb = self.f32_value(name, b)?;
        if sa != sb {
            return Err(op_err(
                name,
                format!("add of `{a}` {sa} and `{b}` {sb}: shapes differ"),
            ));
        }
        let op = Op::FloatAdd {
            a: a.into(),
            b: b.into(),
        };
        self.push(name, op, sa, ValueType::F32)
    }

    /// Pack every op for the best ISA of this CPU and return the model whose output is the
    /// value `output`.
    pub fn build(self, output: &str) -> Result<QuantizedModel> {
        self.build_with(output, ModelOptions::default())
    }

    /// [`ModelBuilder::build`] with explicit options (forced ISA, threads).
    pub fn build_with(self, output: &str, options: ModelOptions) -> Result<QuantizedModel> {
        let input = self
            .input
            .ok_or_else(|| RuntimeError::Model("no input declared".into()))?;
        if !self.values.contains_key(output) {
            return Err(RuntimeError::Model(format!(
                "output value `{output}` is not defined"
            )));
        }
        QuantizedModel::new(
            ModelSpec {
                input,
                nodes: self.nodes,
                output: output.to_string(),
            },
            options,
        )
    }
}

fn check_multipliers(op: &str, in_scale: f32, w_scales: &[f32], out_scale: f32) -> Result<()> {
    for (oc, &ws) in w_scales.iter().enumerate() {
        let m = qat_core::requant_multiplier(in_scale, ws, out_scale);
        if !(m.is_finite() && m > 0.0) {
            return Err(op_err(
                op,
                format!("requantization multiplier [{oc}] = {m} (in·w/out) must be finite and > 0"),
            ));
        }
    }
    Ok(())
}
