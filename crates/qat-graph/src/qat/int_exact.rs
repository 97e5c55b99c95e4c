//! Integer-exact evaluation: the int8 model's arithmetic, evaluated in NCHW on candle tensors
//! and `qat_core`'s scalar formulas, so that a QAT graph can be evaluated exactly as its
//! converted model runs — bit for bit, at every value.
//!
//! The fake-quant forward of a QAT graph differs from the int8 model in small ways: it
//! convolves fake-quantized floats (f32 rounding in every sum), divides by and re-multiplies
//! the folded BN factors, keeps the bias in float, and rounds once per fake-quant where the
//! kernels requantize an integer accumulator. [`IntExactPlan`] removes every difference: it
//! evaluates the plan that [`convert`](crate::convert()) lowers the graph to (folded i8 weights,
//! i32 biases, output qparams, fused clamps) with
//!
//! * integer accumulation: `Σ (x − zp_x) · w` on integer-valued tensors. An f32 sum of
//!   integers is exact while every partial sum stays below 2^24 in magnitude; each conv /
//!   linear proves `max |x − zp_x| · max_oc Σ |w_oc| < 2^24` for the data at hand and
//!   computes in f32 (this crate's fast ops) when it holds, in f64 (exact up to 2^53)
//!   otherwise;
//! * the bias added in i64 and checked to fit the kernels' i32 accumulator;
//! * [`qat_core::requantize`] with [`qat_core::requant_multiplier`] per output channel and
//!   the ReLU / ReLU6 clamp of [`Activation::bounds`];
//! * [`qat_core::quantized_add`] and [`qat_core::global_avg_pool`] for adds and pools;
//! * float islands in f32 with the runtime's summation order (`i = 0..k`, bias last).
//!
//! It shares no code with the SIMD kernels (NCHW, candle convolutions, no packing), so
//! agreement between the two is a real check of both. Eval only: nothing here records
//! gradients.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use qat_core::{QDType, QParams};
use qat_runtime::{
    Activation, Bias, Conv2dParams, InputSpec, Isa, LinearParams, ModelOptions, Node, Op,
    QuantizedModel, ValueType,
};

use crate::error::{GraphError, Result};
use crate::ir::Conv2dCfg;
use crate::prims::{self, OpsPath};
use crate::qat::QatGraph;

/// Largest magnitude below which every integer (and so every partial sum of integers) is
/// exact in f32.
const F32_EXACT: f64 = 16_777_216.0;

/// The data of a value: u8 with its qparams, or f32 (float islands, dequantized outputs).
#[derive(Debug, Clone, PartialEq)]
pub enum IntData {
    U8 { data: Vec<u8>, qparams: QParams },
    F32(Vec<f32>),
}

/// One value of an integer-exact run, NCHW `[n, c, h, w]` (a linear layer's `[n, c, 1, 1]`).
#[derive(Debug, Clone, PartialEq)]
pub struct IntValue {
    pub dims: [usize; 4],
    pub data: IntData,
}

impl IntValue {
    /// Elements.
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }
    /// Whether the value holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The values as f32 (u8 dequantized with [`qat_core::dequantize`]), NCHW.
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            IntData::U8 { data, qparams } => data
                .iter()
                .map(|&q| qat_core::dequantize(q as i32, *qparams))
                .collect(),
            IntData::F32(v) => v.clone(),
        }
    }
    /// [`IntValue::to_f32`] as a `[n, c, h, w]` tensor.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            self.to_f32(),
            self.dims.as_slice(),
            device,
        )?)
    }
    fn u8(&self, op: &str) -> Result<(&[u8], QParams)> {
        match &self.data {
            IntData::U8 { data, qparams } => Ok((data, *qparams)),
            IntData::F32(_) => Err(GraphError::node(op, "expects a u8 input, got an f32 value")),
        }
    }
    fn f32(&self, op: &str) -> Result<&[f32]> {
        match &self.data {
            IntData::F32(v) => Ok(v),
            IntData::U8 { .. } => Err(GraphError::node(op, "expects an f32 input, got a u8 value")),
        }
    }
}

/// Quantize f32 values to u8 ([`qat_core::quantize`] on quint8: NaN → 0, ±Inf → 255 / 0).
pub fn quantize(x: &[f32], q: QParams) -> Vec<u8> {
    let dt = QDType::quint8();
    x.iter()
        .map(|&v| qat_core::quantize(v, q, dt) as u8)
        .collect()
}

/// Per-channel requantization of exact accumulators `acc` (`[n, c, hw]`, bias not yet added)
/// with `bias[c]`: `Err` when an accumulator does not fit the kernels' i32.
fn requantize_nchw(
    op: &str,
    acc: &[f64],
    (c, hw): (usize, usize),
    bias: Option<&[i32]>,
    multipliers: &[f32],
    out: QParams,
    activation: Activation,
) -> Result<Vec<u8>> {
    let (qmin, qmax) = activation.bounds(out);
    let mut y = Vec::with_capacity(acc.len());
    for (i, &a) in acc.iter().enumerate() {
        let ch = (i / hw) % c;
        if a.fract() != 0.0 || a.abs() > 2f64.powi(52) {
            return Err(GraphError::node(
                op,
                format!("internal: accumulator {a} is not an exact integer"),
            ));
        }
        let v = a as i64 + bias.map_or(0, |b| b[ch] as i64);
        let v = i32::try_from(v).map_err(|_| {
            GraphError::node(
                op,
                format!("accumulator {v} (channel {ch}) overflows the int8 kernels' i32"),
            )
        })?;
        y.push(qat_core::requantize(v, multipliers[ch], out.zero_point, qmin, qmax) as u8);
    }
    Ok(y)
}

fn bias_i32<'a>(op: &str, b: &'a Bias, n: usize) -> Result<Option<&'a [i32]>> {
    match b {
        Bias::None => Ok(None),
        Bias::I32(v) if v.len() == n => Ok(Some(v)),
        Bias::I32(v) => Err(GraphError::node(
            op,
            format!("{} biases for {n} output channels", v.len()),
        )),
        // A built model's ops always carry i32 biases (the builder quantizes f32 ones).
        Bias::F32(_) => Err(GraphError::node(
            op,
            "f32 bias: evaluate the ops of a built QuantizedModel (biases quantized to i32)",
        )),
    }
}

fn multipliers(
    op: &str,
    in_scale: f32,
    w_scales: &[f32],
    out: QParams,
    n: usize,
) -> Result<Vec<f32>> {
    if w_scales.len() != n {
        return Err(GraphError::node(
            op,
            format!("{} weight scales for {n} output channels", w_scales.len()),
        ));
    }
    Ok(w_scales
        .iter()
        .map(|&ws| qat_core::requant_multiplier(in_scale, ws, out.scale))
        .collect())
}

/// The largest `|x − zp|` in `x` times the largest per-output-row `Σ |w|`: a bound on every
/// partial sum of the accumulation.
fn acc_bound(x: &[u8], zp: i32, w: &[i8], rows: usize) -> f64 {
    let dev = x
        .iter()
        .map(|&v| (v as i32 - zp).unsigned_abs())
        .max()
        .unwrap_or(0) as f64;
    let k = w.len() / rows.max(1);
    let wmax = w
        .chunks(k.max(1))
        .map(|r| {
            r.iter()
                .map(|&v| (v as i32).unsigned_abs() as u64)
                .sum::<u64>()
        })
        .max()
        .unwrap_or(0) as f64;
    dev * wmax
}

fn centered(x: &[u8], zp: i32, dims: &[usize], dtype: DType) -> Result<Tensor> {
    let v: Vec<f32> = x.iter().map(|&q| (q as i32 - zp) as f32).collect();
    Ok(Tensor::from_vec(v, dims, &Device::Cpu)?.to_dtype(dtype)?)
}

fn weights(w: &[i8], dims: &[usize], dtype: DType) -> Result<Tensor> {
    let v: Vec<f32> = w.iter().map(|&q| q as f32).collect();
    Ok(Tensor::from_vec(v, dims, &Device::Cpu)?.to_dtype(dtype)?)
}

fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}

/// A quantized convolution: exact integer accumulation (see the module docs), i32 bias,
/// per-channel requantization and the fused clamp.
pub fn conv2d(op: &str, x: &IntValue, p: &Conv2dParams) -> Result<IntValue> {
    let (xd, in_q) = x.u8(op)?;
    let [n, ci, _, _] = x.dims;
    let (co, g) = (p.out_channels, p.groups);
    let (kh, kw) = p.kernel;
    if g == 0 || ci % g != 0 || co % g != 0 {
        return Err(GraphError::node(
            op,
            format!("{g} groups do not divide {ci} input / {co} output channels"),
        ));
    }
    if p.weight.len() != co * (ci / g) * kh * kw {
        return Err(GraphError::node(
            op,
            format!(
                "weight has {} values, [{co}, {}, {kh}, {kw}] expected",
                p.weight.len(),
                ci / g
            ),
        ));
    }
    if p.stride.0 != p.stride.1 || p.padding.0 != p.padding.1 || p.dilation.0 != p.dilation.1 {
        return Err(GraphError::node(
            op,
            "integer-exact mode evaluates square stride / padding / dilation only (candle's conv)",
        ));
    }
    let mults = multipliers(op, in_q.scale, &p.weight_scales, p.output, co)?;
    let bias = bias_i32(op, &p.bias, co)?;
    let cfg = Conv2dCfg {
        in_channels: ci,
        out_channels: co,
        kernel: [kh, kw],
        stride: p.stride.0,
        padding: p.padding.0,
        dilation: p.dilation.0,
        groups: g,
        bias: false,
    };
    let wdims = [co, ci / g, kh, kw];
    let y = if acc_bound(xd, in_q.zero_point, &p.weight, co) < F32_EXACT {
        let xt = centered(xd, in_q.zero_point, &x.dims, DType::F32)?;
        prims::conv2d(
            &xt,
            &weights(&p.weight, &wdims, DType::F32)?,
            None,
            &cfg,
            OpsPath::Fast,
        )?
    } else {
        let xt = centered(xd, in_q.zero_point, &x.dims, DType::F64)?;
        xt.conv2d(
            &weights(&p.weight, &wdims, DType::F64)?,
            cfg.padding,
            cfg.stride,
            cfg.dilation,
            g,
        )?
    };
    let (_, _, oh, ow) = y.dims4()?;
    let acc = to_f64(&y)?;
    let data = requantize_nchw(
        op,
        &acc,
        (co, oh * ow),
        bias,
        &mults,
        p.output,
        p.activation,
    )?;
    Ok(IntValue {
        dims: [n, co, oh, ow],
        data: IntData::U8 {
            data,
            qparams: p.output,
        },
    })
}

/// A quantized linear layer on a `[n, c, 1, 1]` value.
pub fn linear(op: &str, x: &IntValue, p: &LinearParams) -> Result<IntValue> {
    let (xd, in_q) = x.u8(op)?;
    let n = x.dims[0];
    let k = x.len() / n.max(1);
    let o = p.out_features;
    if p.weight.len() != o * k {
        return Err(GraphError::node(
            op,
            format!("weight has {} values, [{o}, {k}] expected", p.weight.len()),
        ));
    }
    let mults = multipliers(op, in_q.scale, &p.weight_scales, p.output, o)?;
    let bias = bias_i32(op, &p.bias, o)?;
    let dtype = if acc_bound(xd, in_q.zero_point, &p.weight, o) < F32_EXACT {
        DType::F32
    } else {
        DType::F64
    };
    let xt = centered(xd, in_q.zero_point, &[n, k], dtype)?;
    let wt = weights(&p.weight, &[o, k], dtype)?;
    let acc = to_f64(&xt.matmul(&wt.t()?)?)?;
    let data = requantize_nchw(op, &acc, (o, 1), bias, &mults, p.output, p.activation)?;
    Ok(IntValue {
        dims: [n, o, 1, 1],
        data: IntData::U8 {
            data,
            qparams: p.output,
        },
    })
}

/// A quantized add ([`qat_core::quantized_add`]) of two values of the same shape.
pub fn add(
    op: &str,
    a: &IntValue,
    b: &IntValue,
    out: QParams,
    activation: Activation,
) -> Result<IntValue> {
    let ((ad, aq), (bd, bq)) = (a.u8(op)?, b.u8(op)?);
    if a.dims != b.dims {
        return Err(GraphError::node(
            op,
            format!("add of shapes {:?} and {:?}", a.dims, b.dims),
        ));
    }
    let (ma, mb) = qat_core::add_multipliers(aq.scale, bq.scale, out.scale);
    let (qmin, qmax) = activation.bounds(out);
    let data = ad
        .iter()
        .zip(bd)
        .map(|(&x, &y)| {
            qat_core::quantized_add(
                x as i32,
                aq.zero_point,
                ma,
                y as i32,
                bq.zero_point,
                mb,
                out.zero_point,
                qmin,
                qmax,
            ) as u8
        })
        .collect();
    Ok(IntValue {
        dims: a.dims,
        data: IntData::U8 { data, qparams: out },
    })
}

/// Global average pool ([`qat_core::global_avg_pool`]): `[n, c, h, w]` → `[n, c, 1, 1]`.
pub fn global_avg_pool(op: &str, x: &IntValue, out: QParams) -> Result<IntValue> {
    let (xd, in_q) = x.u8(op)?;
    let [n, c, h, w] = x.dims;
    let area = h * w;
    if area == 0 || area >= 1 << 23 {
        return Err(GraphError::node(
            op,
            format!("pooled area {h}×{w} is empty or too large for an exact i32 sum"),
        ));
    }
    let m = qat_core::avg_pool_multiplier(in_q.scale, out.scale, area);
    let data = xd
        .chunks(area)
        .map(|plane| {
            let sum: i32 = plane.iter().map(|&v| v as i32).sum();
            qat_core::global_avg_pool(sum, area, in_q.zero_point, m, out.zero_point, 0, 255) as u8
        })
        .collect();
    Ok(IntValue {
        dims: [n, c, 1, 1],
        data: IntData::U8 { data, qparams: out },
    })
}

/// `out[r][o] = (Σ_i x[r][i] · w[o][i]) + bias[o]` in f32, summed in order `i = 0..k` (the
/// runtime's float-island order).
fn float_rows(x: &[f32], k: usize, w: &[f32], n: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len() / k.max(1) * n);
    for xr in x.chunks_exact(k) {
        for o in 0..n {
            let mut acc = 0f32;
            for (a, b) in xr.iter().zip(&w[o * k..(o + 1) * k]) {
                acc += a * b;
            }
            out.push(acc + bias.map_or(0.0, |b| b[o]));
        }
    }
    out
}

fn f32_value(dims: [usize; 4], v: Vec<f32>) -> IntValue {
    IntValue {
        dims,
        data: IntData::F32(v),
    }
}

/// Evaluate one op of a plan on its input values.
pub fn eval_op(node: &Node, ins: &[&IntValue]) -> Result<IntValue> {
    let name = node.name.as_str();
    let want = node.op.inputs().len();
    if ins.len() != want {
        return Err(GraphError::node(
            name,
            format!("{} inputs given, {want} expected", ins.len()),
        ));
    }
    let x = ins[0];
    let [n, c, h, w] = x.dims;
    let weights_len = |len: usize, k: usize, o: usize| {
        if len == k * o {
            Ok(())
        } else {
            Err(GraphError::node(
                name,
                format!("{len} float weights, [{o}, {k}] expected"),
            ))
        }
    };
    Ok(match &node.op {
        Op::Quantize { qparams, .. } => IntValue {
            dims: x.dims,
            data: IntData::U8 {
                data: quantize(x.f32(name)?, *qparams),
                qparams: *qparams,
            },
        },
        Op::Dequantize { .. } => {
            x.u8(name)?;
            f32_value(x.dims, x.to_f32())
        }
        Op::Conv2d { params, .. } => conv2d(name, x, params)?,
        Op::Linear { params, .. } => linear(name, x, params)?,
        Op::Add {
            output, activation, ..
        } => add(name, x, ins[1], *output, *activation)?,
        Op::GlobalAvgPool { output, .. } => global_avg_pool(name, x, *output)?,
        Op::Flatten { .. } => IntValue {
            dims: [n, c * h * w, 1, 1],
            data: x.data.clone(),
        },
        Op::FloatLinear {
            out_features,
            weight,
            bias,
            ..
        } => {
            let k = c * h * w;
            weights_len(weight.len(), k, *out_features)?;
            let y = float_rows(x.f32(name)?, k, weight, *out_features, bias.as_deref());
            f32_value([n, *out_features, 1, 1], y)
        }
        Op::FloatConv1x1 {
            out_channels,
            weight,
            bias,
            ..
        } => {
            weights_len(weight.len(), c, *out_channels)?;
            let (hw, oc) = (h * w, *out_channels);
            let xv = x.f32(name)?;
            // NCHW → pixel rows (NHWC), the runtime's rows; back to NCHW after.
            let mut rows = vec![0f32; xv.len()];
            for b in 0..n {
                for ch in 0..c {
                    for p in 0..hw {
                        rows[(b * hw + p) * c + ch] = xv[(b * c + ch) * hw + p];
                    }
                }
            }
            let yr = float_rows(&rows, c, weight, oc, bias.as_deref());
            let mut y = vec![0f32; n * oc * hw];
            for b in 0..n {
                for p in 0..hw {
                    for o in 0..oc {
                        y[(b * oc + o) * hw + p] = yr[(b * hw + p) * oc + o];
                    }
                }
            }
            f32_value([n, oc, h, w], y)
        }
        Op::FloatRelu { .. } => {
            f32_value(x.dims, x.f32(name)?.iter().map(|&v| v.max(0.0)).collect())
        }
        Op::FloatHardswish { .. } => f32_value(
            x.dims,
            x.f32(name)?
                .iter()
                .map(|&v| v * (v + 3.0).clamp(0.0, 6.0) / 6.0)
                .collect(),
        ),
        Op::FloatAdd { .. } => {
            let b = ins[1];
            if b.dims != x.dims {
                return Err(GraphError::node(
                    name,
                    format!("add of shapes {:?} and {:?}", x.dims, b.dims),
                ));
            }
            let y = x
                .f32(name)?
                .iter()
                .zip(b.f32(name)?)
                .map(|(&p, &q)| p + q)
                .collect();
            f32_value(x.dims, y)
        }
    })
}

/// An int8 plan evaluated the integer-exact way: the canonical ops of a [`QuantizedModel`]
/// (what [`convert`](crate::convert()) lowers a QAT graph to; [`QatGraph::integer_exact`]), run in NCHW with candle and
/// `qat_core` (see the module docs). Its values equal the model's, bit for bit.
#[derive(Debug, Clone)]
pub struct IntExactPlan {
    input: InputSpec,
    nodes: Vec<Node>,
    output: String,
}

impl IntExactPlan {
    /// The plan of a built model (its ops carry i32 biases and their output types).
    pub fn from_model(model: &QuantizedModel) -> Self {
        IntExactPlan {
            input: model.input().clone(),
            nodes: model.ops().to_vec(),
            output: model.output_name().to_string(),
        }
    }

    /// The ops, in execution order.
    pub fn ops(&self) -> &[Node] {
        &self.nodes
    }

    /// Run on an f32 NCHW batch `[n, C, H, W]` and return every value (the input's first,
    /// then one per op, in plan order) with its name.
    pub fn run_traced(&self, x: &Tensor) -> Result<Vec<(String, IntValue)>> {
        self.run(x, true)
    }

    /// Run on an f32 NCHW batch and return the output value, dequantized, as `[n, c, h, w]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut vals = self.run(x, false)?;
        let (_, v) = vals.pop().expect("the output is returned");
        v.to_tensor(x.device())
    }

    fn run(&self, x: &Tensor, keep_all: bool) -> Result<Vec<(String, IntValue)>> {
        let s = self.input.shape;
        let name = &self.input.name;
        let dims = x.dims();
        if dims.len() != 4 || dims[1..] != [s.c, s.h, s.w] || dims[0] == 0 {
            return Err(GraphError::node(
                name,
                format!(
                    "expects input [N>0, {}, {}, {}], got {dims:?}",
                    s.c, s.h, s.w
                ),
            ));
        }
        if x.dtype() != DType::F32 {
            return Err(GraphError::node(
                name,
                format!("expects f32 input, got {:?}", x.dtype()),
            ));
        }
        let xv = x.flatten_all()?.to_vec1::<f32>()?;
        let input = IntValue {
            dims: [dims[0], s.c, s.h, s.w],
            data: IntData::U8 {
                data: quantize(&xv, self.input.qparams),
                qparams: self.input.qparams,
            },
        };
        let mut last_use: HashMap<&str, usize> = HashMap::new();
        for (i, nd) in self.nodes.iter().enumerate() {
            for inp in nd.op.inputs() {
                last_use.insert(inp, i);
            }
        }
        let mut vals: HashMap<&str, IntValue> = HashMap::new();
        let mut trace = Vec::new();
        if keep_all {
            trace.push((name.clone(), input.clone()));
        }
        vals.insert(name.as_str(), input);
        for (i, nd) in self.nodes.iter().enumerate() {
            let ins = nd
                .op
                .inputs()
                .into_iter()
                .map(|v| {
                    vals.get(v).ok_or_else(|| {
                        GraphError::node(&nd.name, format!("input `{v}` is not defined"))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let y = eval_op(nd, &ins)?;
            check_type(nd, &y)?;
            if keep_all {
                trace.push((nd.name.clone(), y.clone()));
            }
            for inp in nd.op.inputs() {
                if last_use.get(inp) == Some(&i) && inp != self.output {
                    vals.remove(inp);
                }
            }
            vals.insert(nd.name.as_str(), y);
        }
        if !keep_all {
            let out = vals.remove(self.output.as_str()).ok_or_else(|| {
                GraphError::Graph(format!(
                    "output `{}` is not a value of the plan",
                    self.output
                ))
            })?;
            trace.push((self.output.clone(), out));
        }
        Ok(trace)
    }
}

/// The value must have the shape and type the model's node declares.
fn check_type(nd: &Node, y: &IntValue) -> Result<()> {
    let s = nd.shape;
    let shape_ok = y.dims[1..] == [s.c, s.h, s.w];
    let ty_ok = match (&nd.ty, &y.data) {
        (ValueType::U8(q), IntData::U8 { qparams, .. }) => q == qparams,
        (ValueType::F32, IntData::F32(_)) => true,
        _ => false,
    };
    if shape_ok && ty_ok {
        Ok(())
    } else {
        Err(GraphError::node(
            &nd.name,
            format!(
                "evaluated to {:?} ({}), the plan declares {s} {:?}",
                &y.dims[1..],
                match y.data {
                    IntData::U8 { .. } => "u8",
                    IntData::F32(_) => "f32",
                },
                nd.ty
            ),
        ))
    }
}

impl QatGraph {
    /// The graph's integer-exact evaluation plan: the graph lowered exactly as
    /// [`convert`](crate::convert()) lowers it (current qparams, BN folded with the running
    /// statistics), evaluated by [`IntExactPlan`]. Lower once, evaluate many batches.
    pub fn integer_exact(&self) -> Result<IntExactPlan> {
        let options = ModelOptions {
            isa: Some(Isa::Scalar),
            threads: 1,
        };
        Ok(IntExactPlan::from_model(&crate::convert::convert_with(
            self, options,
        )?))
    }

    /// Eval forward in integer-exact mode: the output equals the converted int8 model's,
    /// bit for bit, shaped like [`QatGraph::forward_t`]'s (`[N, ..graph output shape]`).
    /// Does not run (or update) any observer or BatchNorm statistic.
    pub fn forward_integer_exact(&self, x: &Tensor) -> Result<Tensor> {
        self.integer_exact()?.forward_shaped(self, x)
    }
}

impl IntExactPlan {
    /// [`IntExactPlan::forward`] reshaped to `qat`'s output shape.
    pub fn forward_shaped(&self, qat: &QatGraph, x: &Tensor) -> Result<Tensor> {
        let g = qat.graph();
        let s = self.input.shape;
        let inputs = g.inputs();
        if inputs.len() != 1 || g.shape(inputs[0]) != [s.c, s.h, s.w] {
            return Err(GraphError::Graph(format!(
                "the plan takes {s} per sample, the graph {:?}: not this graph's plan",
                inputs.iter().map(|&i| g.shape(i)).collect::<Vec<_>>()
            )));
        }
        let y = self.forward(x)?;
        let mut dims = vec![y.dim(0)?];
        dims.extend_from_slice(g.shape(g.outputs()[0]));
        if dims.iter().product::<usize>() != y.elem_count() {
            return Err(GraphError::Graph(format!(
                "the plan outputs {:?}, the graph {dims:?}: not this graph's plan",
                y.dims()
            )));
        }
        Ok(y.reshape(dims)?)
    }
}
