//! [`lower_graph`]: the runtime ops of a whole [`QatGraph`] (see the [`convert`](super)
//! module docs for the naming contract and the choices made).

use std::collections::HashMap;

use qat_core::QParams;
use qat_runtime::{Activation, Bias, Conv2dParams, LinearParams, ModelBuilder, Shape};

use crate::convert::lower::{
    lower_node_with, ActQ, LowerOptions, Lowered, LoweredWeighted, WeightedKind,
};
use crate::convert::params::read;
use crate::error::{GraphError, Result};
use crate::ir::{Act, FusedBn, NodeId, Op};
use crate::qat::QatGraph;

/// A lowered graph: the runtime ops, ready to [`ModelBuilder::build`].
#[derive(Debug, Clone)]
pub struct Conversion {
    /// Every op added and validated; nothing packed yet.
    pub builder: ModelBuilder,
    /// The model's output value (an f32 value: `<output node>.dequant` or a float node).
    pub output: String,
    /// Graph node name → the runtime value holding what
    /// [`QatGraph::forward_traced`] reports for it (`<node>.quant` entries included).
    pub values: HashMap<String, String>,
}

/// The per-sample runtime shape of a graph shape (`[C, H, W]` or `[F]` → `[F, 1, 1]`).
fn rt_shape(node: &str, s: &[usize]) -> Result<Shape> {
    match *s {
        [c, h, w] => Ok(Shape::new(c, h, w)),
        [f] => Ok(Shape::new(f, 1, 1)),
        _ => Err(GraphError::node(
            node,
            format!("shape {s:?} has no runtime form ([C, H, W] or [F])"),
        )),
    }
}

struct Planner<'a> {
    qat: &'a QatGraph,
    b: ModelBuilder,
    /// Runtime name of node i's quantized (u8) value, as its quantized consumers read it.
    qv: Vec<Option<String>>,
    /// Runtime name of node i's f32 value, as its float consumers read it.
    fv: Vec<Option<String>>,
}

/// Wrap a runtime error with the graph node it is about.
fn rt<T>(node: &str, r: qat_runtime::Result<T>) -> Result<T> {
    r.map_err(|e| GraphError::node(node, format!("runtime: {e}")))
}

impl<'a> Planner<'a> {
    fn name(&self, id: NodeId) -> &'a str {
        &self.qat.graph().node(id).name
    }

    fn need_q(&self, consumer: &str, p: NodeId) -> Result<String> {
        self.qv[p.0].clone().ok_or_else(|| {
            GraphError::node(
                consumer,
                format!("input `{}` has no quantized value", self.name(p)),
            )
        })
    }

    fn need_f(&mut self, consumer: &str, p: NodeId) -> Result<String> {
        if let Some(v) = &self.fv[p.0] {
            return Ok(v.clone());
        }
        let q = self.need_q(consumer, p)?;
        let name = format!("{}.dequant", self.name(p));
        rt(&name, self.b.dequantize(&name, &q))?;
        self.fv[p.0] = Some(name.clone());
        Ok(name)
    }

    /// An exact clamp of u8 value `input` (node `id`'s shape, qparams `q`) with `act`: an
    /// identity depthwise 1×1 convolution whose requantization multiplier is exactly 1.
    fn clamp(
        &mut self,
        name: &str,
        input: &str,
        id: NodeId,
        q: QParams,
        act: Activation,
    ) -> Result<()> {
        let c = rt_shape(name, self.qat.graph().shape(id))?.c;
        let p = Conv2dParams {
            out_channels: c,
            kernel: (1, 1),
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: c,
            weight: vec![1; c],
            weight_scales: vec![1.0; c],
            bias: Bias::None,
            output: q,
            activation: act,
        };
        rt(name, self.b.conv2d(name, input, p))?;
        Ok(())
    }

    /// A quant stub after float node `id` (whose f32 value is `fv[id]`).
    fn quant_stub(&mut self, id: NodeId, q: ActQ) -> Result<()> {
        let n = self.name(id);
        let f = self.fv[id.0]
            .clone()
            .expect("float value set before its stub");
        let name = format!("{n}.quant");
        if q.range == (0, 255) {
            rt(&name, self.b.quantize(&name, &f, q.qparams))?;
        } else {
            let raw = format!("{n}.quant.raw");
            rt(&raw, self.b.quantize(&raw, &f, q.qparams))?;
            self.clamp(&name, &raw, id, q.qparams, q.activation(None))?;
        }
        self.qv[id.0] = Some(name);
        Ok(())
    }

    fn weighted(&mut self, id: NodeId, l: &LoweredWeighted) -> Result<()> {
        let node = self.qat.graph().node(id);
        let n = node.name.as_str();
        let input = self.need_q(n, node.inputs[0])?;
        let bias = match &l.bias_i32 {
            Some(b) => Bias::I32(b.clone()),
            None => Bias::None,
        };
        let activation = l.output.activation(l.act);
        let r = match l.kind {
            WeightedKind::Conv2d(c) => self.b.conv2d(
                n,
                &input,
                Conv2dParams {
                    out_channels: c.out_channels,
                    kernel: (c.kernel[0], c.kernel[1]),
                    stride: (c.stride, c.stride),
                    padding: (c.padding, c.padding),
                    dilation: (c.dilation, c.dilation),
                    groups: c.groups,
                    weight: l.weight.clone(),
                    weight_scales: l.weight_scales.clone(),
                    bias,
                    output: l.output.qparams,
                    activation,
                },
            ),
            WeightedKind::Linear(lc) => self.b.linear(
                n,
                &input,
                LinearParams {
                    out_features: lc.out_features,
                    weight: l.weight.clone(),
                    weight_scales: l.weight_scales.clone(),
                    bias,
                    output: l.output.qparams,
                    activation,
                },
            ),
        };
        rt(n, r)?;
        self.qv[id.0] = Some(n.to_string());
        Ok(())
    }

    fn quantized(&mut self, id: NodeId, lowered: Lowered) -> Result<()> {
        let node = self.qat.graph().node(id);
        let n = node.name.as_str();
        match lowered {
            Lowered::Input { output } => {
                let shape = rt_shape(n, self.qat.graph().shape(id))?;
                rt(n, self.b.input(n, shape, output.qparams))?;
                if output.range == (0, 255) {
                    self.qv[id.0] = Some(n.to_string());
                } else {
                    let c = format!("{n}.clamp");
                    self.clamp(&c, n, id, output.qparams, output.activation(None))?;
                    self.qv[id.0] = Some(c);
                }
            }
            Lowered::Weighted(l) => self.weighted(id, &l)?,
            Lowered::Add { output, act, .. } => {
                let a = self.need_q(n, node.inputs[0])?;
                let b = self.need_q(n, node.inputs[1])?;
                rt(
                    n,
                    self.b
                        .add(n, &a, &b, output.qparams, output.activation(act)),
                )?;
                self.qv[id.0] = Some(n.to_string());
            }
            Lowered::GlobalAvgPool { .. } => {
                let x = self.need_q(n, node.inputs[0])?;
                rt(n, self.b.global_avg_pool(n, &x, None))?;
                self.qv[id.0] = Some(n.to_string());
            }
            Lowered::Clamp { input, act, .. } => {
                let x = self.need_q(n, node.inputs[0])?;
                self.clamp(n, &x, id, input.qparams, input.activation(Some(act)))?;
                self.qv[id.0] = Some(n.to_string());
            }
            Lowered::PassThrough { .. } => {
                let x = self.need_q(n, node.inputs[0])?;
                if node.op == Op::Flatten {
                    rt(n, self.b.flatten(n, &x))?;
                    self.qv[id.0] = Some(n.to_string());
                } else {
                    self.qv[id.0] = Some(x);
                }
            }
            Lowered::Float { .. } => unreachable!("float nodes are planned by `float`"),
        }
        Ok(())
    }

    fn float(&mut self, id: NodeId, quant_stub: Option<ActQ>) -> Result<()> {
        let node = self.qat.graph().node(id);
        let n = node.name.as_str();
        let unsupported = || {
            GraphError::node(
                n,
                format!(
                    "{} left in float has no float op in the runtime (quantize it, or keep \
                     only Linear, 1×1 Conv, ReLU, Hardswish, Add, Flatten, Dropout, Identity \
                     in float)",
                    node.op.type_name()
                ),
            )
        };
        let relu_after = |a: Option<Act>| -> Result<bool> {
            match a {
                None => Ok(false),
                Some(Act::ReLU) => Ok(true),
                Some(Act::ReLU6) => Err(unsupported()),
            }
        };
        if matches!(node.op, Op::Input { .. }) {
            return Err(GraphError::node(
                n,
                "the model input must be quantized (its first consumers are in float): the \
                 runtime quantizes its input on entry",
            ));
        }
        let (pre, relu) = match &node.op {
            Op::Linear(_) | Op::LinearBn { .. } | Op::LinearAct { .. } => {
                let (lc, bn, act) = match &node.op {
                    Op::Linear(l) => (*l, None, None),
                    Op::LinearBn { linear, bn } => (*linear, Some(bn), None),
                    Op::LinearAct { linear, act } => (*linear, None, Some(*act)),
                    _ => unreachable!(),
                };
                let relu = relu_after(act)?;
                let x = self.need_f(n, node.inputs[0])?;
                let (w, b) = float_params(self.qat, n, lc.out_features, lc.bias, bn)?;
                let pre = pre_name(n, relu);
                rt(&pre, self.b.float_linear(&pre, &x, lc.out_features, w, b))?;
                (pre, relu)
            }
            Op::Conv2d(_) | Op::ConvBn { .. } | Op::ConvAct { .. } => {
                let (c, bn, act) = match &node.op {
                    Op::Conv2d(c) => (*c, None, None),
                    Op::ConvBn { conv, bn, act } => (*conv, Some(bn), *act),
                    Op::ConvAct { conv, act } => (*conv, None, Some(*act)),
                    _ => unreachable!(),
                };
                let pointwise =
                    c.kernel == [1, 1] && c.stride == 1 && c.padding == 0 && c.groups == 1;
                if !pointwise {
                    return Err(GraphError::node(
                        n,
                        format!(
                            "{} left in float: the runtime's float convolution is 1×1, stride \
                             1, unpadded, ungrouped only (got {c:?})",
                            node.op.type_name()
                        ),
                    ));
                }
                let relu = relu_after(act)?;
                let x = self.need_f(n, node.inputs[0])?;
                let (w, b) = float_params(self.qat, n, c.out_channels, c.bias, bn)?;
                let pre = pre_name(n, relu);
                rt(&pre, self.b.float_conv1x1(&pre, &x, c.out_channels, w, b))?;
                (pre, relu)
            }
            Op::ReLU => {
                let x = self.need_f(n, node.inputs[0])?;
                rt(n, self.b.float_relu(n, &x))?;
                (n.to_string(), false)
            }
            Op::Hardswish => {
                let x = self.need_f(n, node.inputs[0])?;
                rt(n, self.b.float_hardswish(n, &x))?;
                (n.to_string(), false)
            }
            Op::Add | Op::AddAct { .. } => {
                let relu = match &node.op {
                    Op::AddAct { act } => relu_after(Some(*act))?,
                    _ => false,
                };
                let a = self.need_f(n, node.inputs[0])?;
                let b = self.need_f(n, node.inputs[1])?;
                let pre = pre_name(n, relu);
                rt(&pre, self.b.float_add(&pre, &a, &b))?;
                (pre, relu)
            }
            Op::Flatten => {
                let x = self.need_f(n, node.inputs[0])?;
                rt(n, self.b.flatten(n, &x))?;
                (n.to_string(), false)
            }
            Op::Dropout { .. } | Op::Identity => {
                let x = self.need_f(n, node.inputs[0])?;
                (x, false)
            }
            _ => return Err(unsupported()),
        };
        let value = if relu {
            rt(n, self.b.float_relu(n, &pre))?;
            n.to_string()
        } else {
            pre
        };
        self.fv[id.0] = Some(value);
        if let Some(q) = quant_stub {
            self.quant_stub(id, q)?;
        }
        Ok(())
    }
}

fn pre_name(n: &str, relu: bool) -> String {
    if relu {
        format!("{n}.pre_act")
    } else {
        n.to_string()
    }
}

/// The f32 weight `[out][in]` and bias of a float Linear / 1×1 Conv, a BN folded in (eval,
/// running statistics, f32).
fn float_params(
    qat: &QatGraph,
    n: &str,
    out: usize,
    has_bias: bool,
    bn: Option<&FusedBn>,
) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    let mut w = read(qat, n, "weight")?;
    let b = if has_bias {
        Some(read(qat, n, "bias")?)
    } else {
        None
    };
    let Some(bn) = bn else { return Ok((w, b)) };
    let get = |s: &str| read(qat, &bn.name, s);
    let (gamma, beta) = (get("weight")?, get("bias")?);
    let (mean, var) = (get("running_mean")?, get("running_var")?);
    let k = w.len() / out;
    let mut bias = vec![0f32; out];
    for c in 0..out {
        let sf = gamma[c] / (var[c] + bn.cfg.eps as f32).sqrt();
        w[c * k..(c + 1) * k].iter_mut().for_each(|v| *v *= sf);
        bias[c] = beta[c] - mean[c] * sf + b.as_ref().map_or(0.0, |b| b[c] * sf);
    }
    Ok((w, Some(bias)))
}

/// Lower every node of `qat` to runtime ops (see the [`convert`](super) module docs).
pub fn lower_graph(qat: &QatGraph) -> Result<Conversion> {
    lower_graph_with(qat, &LowerOptions::default())
}

/// [`lower_graph`] with explicit lowering options.
pub fn lower_graph_with(qat: &QatGraph, opts: &LowerOptions) -> Result<Conversion> {
    let g = qat.graph();
    if g.inputs().len() != 1 || g.outputs().len() != 1 {
        return Err(GraphError::Graph(format!(
            "convert needs one input and one output, the graph has {} and {}",
            g.inputs().len(),
            g.outputs().len()
        )));
    }
    let input = g.inputs()[0];
    let consumers = g.consumers();
    if let Some(c) = consumers[input.0]
        .iter()
        .find(|c| qat.nodes()[c.0].config.is_none())
    {
        return Err(GraphError::node(
            &g.node(*c).name,
            format!(
                "reads the model input `{}` in float: the runtime quantizes its input on \
                 entry, so the first layers must be quantized",
                g.node(input).name
            ),
        ));
    }
    let mut p = Planner {
        qat,
        b: ModelBuilder::new(),
        qv: vec![None; g.len()],
        fv: vec![None; g.len()],
    };
    for i in 0..g.len() {
        let id = NodeId(i);
        match lower_node_with(qat, id, opts)? {
            // A float input whose consumers are all quantized: its quant stub is the entry.
            Lowered::Float {
                quant_stub: Some(output),
            } if id == input => p.quantized(id, Lowered::Input { output })?,
            Lowered::Float { quant_stub } => p.float(id, quant_stub)?,
            l => p.quantized(id, l)?,
        }
    }
    let out = g.outputs()[0];
    let output = match (&p.fv[out.0], qat.nodes()[out.0].config.is_some()) {
        (Some(f), false) => f.clone(),
        _ => {
            let name = format!("{}.dequant", g.node(out).name);
            let q = p.need_q(&g.node(out).name, out)?;
            if p.fv[out.0].is_none() {
                rt(&name, p.b.dequantize(&name, &q))?;
                p.fv[out.0] = Some(name.clone());
            }
            p.fv[out.0].clone().expect("set above")
        }
    };
    let mut values = HashMap::new();
    for (i, node) in g.nodes().iter().enumerate() {
        let float = qat.nodes()[i].config.is_none();
        if float {
            if let Some(v) = &p.fv[i] {
                values.insert(node.name.clone(), v.clone());
            }
            if let Some(v) = &p.qv[i] {
                values.insert(format!("{}.quant", node.name), v.clone());
            }
        } else if let Some(v) = &p.qv[i] {
            values.insert(node.name.clone(), v.clone());
        }
    }
    Ok(Conversion {
        builder: p.b,
        output,
        values,
    })
}
