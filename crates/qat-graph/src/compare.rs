//! Fake-quant ⇄ int8 parity: run a QAT graph and its converted [`QuantizedModel`] side by side
//! on the same batch and report, per layer, how often they agree exactly (in quantization
//! steps) and how far apart they get, plus top-1 agreement of the output logits.
//!
//! ```text
//! let report = compare(&qat, &int8, &images)?;        // fake-quant forward vs int8
//! println!("{report}");                                // a per-layer table
//! assert!(report.all_within(0.99, 1));
//! let exact = compare_integer_exact(&qat, &int8, &images)?;  // integer-exact mode vs int8
//! assert!(exact.all_within(1.0, 0));
//! ```
//!
//! A layer is every graph node (and quant stub, `<node>.quant`) that has a value in the model,
//! in graph order: the lowering [`convert`](crate::convert()) uses says which model value
//! holds what [`QatGraph::forward_traced`] reports for the node (usually the value named like
//! the node). For a u8 value the reference (the fake-quant output, which lies on the
//! quantization grid) is turned into steps with [`qat_core::quantize`] and the model value's
//! qparams (`clamp(round_half_even(v · (1/scale)) + zero_point, 0, 255)`: a grid value maps
//! back to its own step exactly) and compared with the u8; an f32 value (float islands) is
//! compared float to float.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;

use candle_core::{DType, Tensor};
use qat_core::{QDType, QParams};
use qat_runtime::{QuantizedModel, TracedValue, ValueData};
use serde::{Deserialize, Serialize};

use crate::error::{GraphError, Result};
use crate::ir::Op;
use crate::qat::{IntData, IntExactPlan, QatGraph};

/// Step difference recorded for a non-finite reference value (more than any u8 difference).
pub const NON_FINITE_STEPS: u32 = 256;

/// What the int8 model was compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reference {
    /// The QAT graph's eval fake-quant forward (float simulation).
    FakeQuant,
    /// The QAT graph's integer-exact evaluation mode ([`IntExactPlan`]).
    IntegerExact,
}

/// How closely one value agrees, accumulated over every compared sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Elements compared.
    pub elements: u64,
    /// Elements exactly equal (same u8 step; for f32 values, the same float).
    pub equal: u64,
    /// Elements exactly one step apart (u8 values only).
    pub off_by_one: u64,
    /// `equal / elements` (1 for an empty value).
    pub equal_fraction: f64,
    /// Largest |step difference| (u8 values; 0 for f32 values);
    /// [`NON_FINITE_STEPS`] if the reference held a NaN / ±Inf.
    pub max_step_diff: u32,
    /// Largest |difference| in real units (the u8 side dequantized).
    pub max_abs_diff: f32,
}

impl Agreement {
    fn merge(&mut self, o: &Agreement) {
        self.elements += o.elements;
        self.equal += o.equal;
        self.off_by_one += o.off_by_one;
        self.max_step_diff = self.max_step_diff.max(o.max_step_diff);
        self.max_abs_diff = max_nan(self.max_abs_diff, o.max_abs_diff);
        self.equal_fraction = fraction(self.equal, self.elements);
    }

    fn within(&self, quantized: bool, min_equal_fraction: f64, max_steps: u32) -> bool {
        self.equal_fraction >= min_equal_fraction && (!quantized || self.max_step_diff <= max_steps)
    }
}

/// Agreement on one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerCompare {
    /// The graph node name (`<node>.quant` for a quant stub's value).
    pub name: String,
    /// The model value compared with it (usually the same name).
    pub value: String,
    /// The model op producing the value (`conv2d`, `add`, ...; `input` for the input).
    pub op: String,
    /// Whether the model value is u8 (quantized) rather than f32 (a float island).
    pub quantized: bool,
    /// Both sides run end to end from the same f32 input: differences of earlier layers
    /// propagate into this one.
    pub end_to_end: Agreement,
    /// The reference's node run on the model's own values of its inputs: this layer's own
    /// difference, nothing inherited (fake-quant reference only; `None` for the
    /// integer-exact one and for the input).
    pub local: Option<Agreement>,
}

impl LayerCompare {
    fn merge(&mut self, o: &LayerCompare) {
        self.end_to_end.merge(&o.end_to_end);
        match (&mut self.local, &o.local) {
            (Some(a), Some(b)) => a.merge(b),
            (a, _) => *a = None,
        }
    }
}

/// The per-layer and logit agreement of a QAT graph and its int8 model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareReport {
    pub reference: Reference,
    /// Samples (images) compared.
    pub samples: u64,
    /// Layers in graph order.
    pub layers: Vec<LayerCompare>,
    /// The graph output / model output value names compared as logits.
    pub output: String,
    /// Samples whose top-1 class (first maximum) is the same on both sides.
    pub top1_agree: u64,
    /// `top1_agree / samples`.
    pub top1_agreement: f64,
    /// Largest |Δ| between the two sides' f32 outputs.
    pub max_abs_logit_diff: f32,
}

fn fraction(a: u64, b: u64) -> f64 {
    if b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}

/// `max` that keeps a NaN (a NaN difference must not vanish from the report).
fn max_nan(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

impl CompareReport {
    /// The layer with the lowest end-to-end equal fraction (ties: the larger step
    /// difference, then the earlier layer); `None` without layers.
    pub fn worst_layer(&self) -> Option<&LayerCompare> {
        self.layers.iter().reduce(|w, l| {
            let (a, b) = (&l.end_to_end, &w.end_to_end);
            let worse = a.equal_fraction < b.equal_fraction
                || (a.equal_fraction == b.equal_fraction && a.max_step_diff > b.max_step_diff);
            if worse {
                l
            } else {
                w
            }
        })
    }

    /// Whether every layer, end to end, has at least `min_equal_fraction` of its elements
    /// equal and (u8 values) none more than `max_steps` steps off.
    pub fn all_within(&self, min_equal_fraction: f64, max_steps: u32) -> bool {
        self.layers.iter().all(|l| {
            l.end_to_end
                .within(l.quantized, min_equal_fraction, max_steps)
        })
    }

    /// [`CompareReport::all_within`] on each layer's own (local) difference where the report
    /// has one, end to end otherwise.
    pub fn all_local_within(&self, min_equal_fraction: f64, max_steps: u32) -> bool {
        self.layers.iter().all(|l| {
            l.local.as_ref().unwrap_or(&l.end_to_end).within(
                l.quantized,
                min_equal_fraction,
                max_steps,
            )
        })
    }

    /// Add another report's counts (same model and reference) into this one.
    pub fn merge(&mut self, other: &CompareReport) -> Result<()> {
        let same_layers = self.layers.len() == other.layers.len()
            && self
                .layers
                .iter()
                .zip(&other.layers)
                .all(|(a, b)| a.name == b.name);
        if self.reference != other.reference || !same_layers || self.output != other.output {
            return Err(GraphError::Invalid(
                "merging compare reports of different models or references".into(),
            ));
        }
        for (a, b) in self.layers.iter_mut().zip(&other.layers) {
            a.merge(b);
        }
        self.samples += other.samples;
        self.top1_agree += other.top1_agree;
        self.top1_agreement = fraction(self.top1_agree, self.samples);
        self.max_abs_logit_diff = max_nan(self.max_abs_logit_diff, other.max_abs_logit_diff);
        Ok(())
    }
}

impl fmt::Display for CompareReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reference = match self.reference {
            Reference::FakeQuant => "fake-quant",
            Reference::IntegerExact => "integer-exact",
        };
        let w = self
            .layers
            .iter()
            .map(|l| l.name.len())
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(f, "{reference} vs int8 over {} samples", self.samples)?;
        writeln!(
            f,
            "{:<w$}  {:<15}  {:>11}  {:>9}  {:>9}  {:>9}  {:>10}  {:>9}  {:>9}",
            "layer",
            "op",
            "elements",
            "equal %",
            "off by 1",
            "max steps",
            "max |Δ|",
            "local eq%",
            "local max"
        )?;
        for l in &self.layers {
            let e = &l.end_to_end;
            let steps = |a: &Agreement| {
                if l.quantized {
                    a.max_step_diff.to_string()
                } else {
                    "f32".into()
                }
            };
            let (leq, lmax) = match &l.local {
                Some(a) => (format!("{:.4}", 100.0 * a.equal_fraction), steps(a)),
                None => ("-".into(), "-".into()),
            };
            writeln!(
                f,
                "{:<w$}  {:<15}  {:>11}  {:>9.4}  {:>9}  {:>9}  {:>10.3e}  {:>9}  {:>9}",
                l.name,
                l.op,
                e.elements,
                100.0 * e.equal_fraction,
                e.off_by_one,
                steps(e),
                e.max_abs_diff,
                leq,
                lmax
            )?;
        }
        write!(
            f,
            "output `{}`: top-1 agreement {}/{} ({:.3}%), max |Δlogit| {:.4e}",
            self.output,
            self.top1_agree,
            self.samples,
            100.0 * self.top1_agreement,
            self.max_abs_logit_diff
        )
    }
}

/// A reference value, NCHW.
enum RefValue {
    F32(Vec<f32>),
    U8(Vec<u8>, QParams),
}

impl RefValue {
    fn len(&self) -> usize {
        match self {
            RefValue::F32(v) => v.len(),
            RefValue::U8(v, _) => v.len(),
        }
    }
    fn f32_at(&self, i: usize) -> f32 {
        match self {
            RefValue::F32(v) => v[i],
            RefValue::U8(v, q) => qat_core::dequantize(v[i] as i32, *q),
        }
    }
}

/// NCHW index of NHWC element `i` of a value with per-sample shape `(c, h·w)`.
fn nchw_index(i: usize, c: usize, hw: usize) -> usize {
    let (b, r) = (i / (hw * c), i % (hw * c));
    let (p, ch) = (r / c, r % c);
    (b * c + ch) * hw + p
}

/// Compare one layer: `r` (NCHW) against the model's traced value (NHWC).
fn agreement(r: &RefValue, m: &TracedValue) -> Result<Agreement> {
    let s = m.shape;
    let (c, hw) = (s.c, s.h * s.w);
    let n = match &m.data {
        ValueData::U8 { data, .. } => data.len(),
        ValueData::F32(v) => v.len(),
    };
    if n != r.len() {
        return Err(GraphError::node(
            &m.name,
            format!(
                "the graph's value has {} elements, the model's {n} ({s} per sample)",
                r.len()
            ),
        ));
    }
    let mut l = Agreement {
        elements: n as u64,
        equal: 0,
        off_by_one: 0,
        equal_fraction: 1.0,
        max_step_diff: 0,
        max_abs_diff: 0.0,
    };
    match &m.data {
        ValueData::U8 { data, qparams } => {
            for (i, &q) in data.iter().enumerate() {
                let j = nchw_index(i, c, hw);
                let d = match r {
                    RefValue::U8(rv, rq) if rq == qparams => {
                        (rv[j] as i32 - q as i32).unsigned_abs()
                    }
                    _ => {
                        let v = r.f32_at(j);
                        if v.is_finite() {
                            // PyTorch's quantize rule (f32 reciprocal, ties to even, clamp):
                            // a fake-quant value maps back to its own step exactly.
                            let steps = qat_core::quantize(v, *qparams, QDType::quint8());
                            (steps - q as i32).unsigned_abs()
                        } else {
                            NON_FINITE_STEPS
                        }
                    }
                };
                match d {
                    0 => l.equal += 1,
                    1 => l.off_by_one += 1,
                    _ => {}
                }
                l.max_step_diff = l.max_step_diff.max(d);
                let real = (r.f32_at(j) - qat_core::dequantize(q as i32, *qparams)).abs();
                l.max_abs_diff = max_nan(l.max_abs_diff, real);
            }
        }
        ValueData::F32(mv) => {
            for (i, &v) in mv.iter().enumerate() {
                let rv = r.f32_at(nchw_index(i, c, hw));
                if rv == v || (rv.is_nan() && v.is_nan()) {
                    l.equal += 1;
                } else {
                    l.max_abs_diff = max_nan(l.max_abs_diff, (rv - v).abs());
                }
            }
        }
    }
    l.equal_fraction = fraction(l.equal, l.elements);
    Ok(l)
}

/// The model value as f32 NCHW (dequantized if u8).
fn traced_nchw(m: &TracedValue) -> Vec<f32> {
    let (c, hw) = (m.shape.c, m.shape.h * m.shape.w);
    let get = |i: usize| match &m.data {
        ValueData::U8 { data, qparams } => qat_core::dequantize(data[i] as i32, *qparams),
        ValueData::F32(v) => v[i],
    };
    let n = match &m.data {
        ValueData::U8 { data, .. } => data.len(),
        ValueData::F32(v) => v.len(),
    };
    let mut out = vec![0f32; n];
    for i in 0..n {
        out[nchw_index(i, c, hw)] = get(i);
    }
    out
}

/// Index of the first maximum (NaN never wins).
fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] || v[best].is_nan() && !x.is_nan() {
            best = i;
        }
    }
    best
}

/// `Err` unless `x` is an f32 `[N>0, ...]` batch both the graph and the model take.
fn check_input(qat: &QatGraph, model: &QuantizedModel, x: &Tensor) -> Result<usize> {
    let g = qat.graph();
    let inputs = g.inputs();
    let [input] = inputs.as_slice() else {
        return Err(GraphError::Graph(format!(
            "compare runs graphs with one input, this one has {}",
            inputs.len()
        )));
    };
    let want = g.shape(*input);
    let s = model.input().shape;
    if want != [s.c, s.h, s.w] {
        return Err(GraphError::Graph(format!(
            "the graph takes {want:?} per sample, the model {s}: not the graph's model"
        )));
    }
    let d = x.dims();
    if d.len() != 4 || d[1..] != [s.c, s.h, s.w] || d[0] == 0 {
        return Err(GraphError::node(
            &g.node(*input).name,
            format!(
                "compare expects input [N>0, {}, {}, {}], got {d:?}",
                s.c, s.h, s.w
            ),
        ));
    }
    if x.dtype() != DType::F32 {
        return Err(GraphError::node(
            &g.node(*input).name,
            format!("compare expects f32 input, got {:?}", x.dtype()),
        ));
    }
    Ok(d[0])
}

/// `Err` naming the first fake-quant module whose observer is on.
fn check_observers_off(qat: &QatGraph) -> Result<()> {
    for f in qat.fake_quants() {
        if f.observer_enabled()? {
            return Err(GraphError::node(
                f.name(),
                "observer is on: running the graph would change its qparams, so the fake-quant \
                 forward would no longer match the converted model; call \
                 `enable_observers(false)` first",
            ));
        }
    }
    Ok(())
}

/// What one comparison needs beyond the batch: graph node → model value names (from the
/// lowering [`convert`](crate::convert()) uses) and, for the integer-exact reference, the plan.
struct Comparer<'a> {
    qat: &'a QatGraph,
    model: &'a QuantizedModel,
    values: HashMap<String, String>,
    plan: Option<IntExactPlan>,
}

impl<'a> Comparer<'a> {
    fn new(qat: &'a QatGraph, model: &'a QuantizedModel, reference: Reference) -> Result<Self> {
        let values = crate::convert::lower_graph(qat)?.values;
        let plan = match reference {
            Reference::FakeQuant => None,
            Reference::IntegerExact => Some(IntExactPlan::from_model(model)),
        };
        Ok(Comparer {
            qat,
            model,
            values,
            plan,
        })
    }

    fn run(&self, x: &Tensor) -> Result<CompareReport> {
        let batch = check_input(self.qat, self.model, x)?;
        // Reference values keyed by model value name, and the reference output.
        let mut refs: HashMap<String, RefValue> = HashMap::new();
        let (reference, ref_out) = match &self.plan {
            None => {
                check_observers_off(self.qat)?;
                let g = self.qat.graph();
                let out_node = &g.node(g.outputs()[0]).name;
                let mut out = None;
                for (name, t) in self.qat.forward_traced(&[x], false)? {
                    let v = t.flatten_all()?.to_vec1::<f32>()?;
                    if &name == out_node {
                        out = Some(v.clone());
                    }
                    if let Some(rv) = self.values.get(&name) {
                        refs.insert(rv.clone(), RefValue::F32(v));
                    }
                }
                let out = out
                    .ok_or_else(|| GraphError::node(out_node, "the graph output was not traced"))?;
                (Reference::FakeQuant, out)
            }
            Some(plan) => {
                let out_name = self.model.output_name();
                let mut out = None;
                for (name, v) in plan.run_traced(x)? {
                    if name == out_name {
                        out = Some(v.to_f32());
                    }
                    let r = match v.data {
                        IntData::U8 { data, qparams } => RefValue::U8(data, qparams),
                        IntData::F32(d) => RefValue::F32(d),
                    };
                    refs.insert(name, r);
                }
                let out = out.ok_or_else(|| {
                    GraphError::Graph(format!("output `{out_name}` not evaluated"))
                })?;
                (Reference::IntegerExact, out)
            }
        };
        let xv = x.flatten_all()?.to_vec1::<f32>()?;
        let traced = self
            .model
            .run_traced(&xv, batch)
            .map_err(|e| GraphError::Graph(format!("int8 model: {e}")))?;
        let local = match reference {
            Reference::FakeQuant => self.local_refs(&traced, batch)?,
            Reference::IntegerExact => HashMap::new(),
        };
        self.report(reference, &refs, &local, &ref_out, &traced, batch)
    }

    /// Each QAT node run (eval, observers off) on the model's values of its inputs, keyed by
    /// model value name. Nodes whose inputs have no model value are left out.
    fn local_refs(
        &self,
        traced: &[TracedValue],
        batch: usize,
    ) -> Result<HashMap<String, RefValue>> {
        let by_name: HashMap<&str, &TracedValue> =
            traced.iter().map(|t| (t.name.as_str(), t)).collect();
        let g = self.qat.graph();
        let dev = candle_core::Device::Cpu;
        let mut out = HashMap::new();
        'nodes: for (i, node) in g.nodes().iter().enumerate() {
            if matches!(node.op, Op::Input { .. }) {
                continue;
            }
            let q = &self.qat.nodes()[i];
            let mut ins = Vec::with_capacity(node.inputs.len());
            for p in &node.inputs {
                let pn = &g.node(*p).name;
                // A quantized consumer of a quant-stubbed float node reads the stub's value.
                let key = if q.config.is_some() && self.qat.nodes()[p.0].is_quant_stub {
                    format!("{pn}.quant")
                } else {
                    pn.clone()
                };
                let Some(mv) = self.values.get(&key).and_then(|v| by_name.get(v.as_str())) else {
                    continue 'nodes;
                };
                let mut dims = vec![batch];
                dims.extend_from_slice(g.shape(*p));
                ins.push(Tensor::from_vec(traced_nchw(mv), dims, &dev)?);
            }
            let ins: Vec<&Tensor> = ins.iter().collect();
            let y = self.qat.node_value(i, &ins, false)?;
            let mut put = |name: String, t: &Tensor| -> Result<()> {
                if let Some(v) = self.values.get(&name) {
                    out.insert(v.clone(), RefValue::F32(t.flatten_all()?.to_vec1::<f32>()?));
                }
                Ok(())
            };
            match &q.output_fq {
                Some(fq) if q.is_quant_stub => {
                    put(node.name.clone(), &y)?;
                    put(format!("{}.quant", node.name), &fq.forward(&y)?)?;
                }
                Some(fq) => put(node.name.clone(), &fq.forward(&y)?)?,
                None => put(node.name.clone(), &y)?,
            }
        }
        Ok(out)
    }

    fn report(
        &self,
        reference: Reference,
        refs: &HashMap<String, RefValue>,
        local: &HashMap<String, RefValue>,
        ref_out: &[f32],
        traced: &[TracedValue],
        batch: usize,
    ) -> Result<CompareReport> {
        let by_name: HashMap<&str, &TracedValue> =
            traced.iter().map(|t| (t.name.as_str(), t)).collect();
        let op_of: HashMap<&str, &str> = self
            .model
            .ops()
            .iter()
            .map(|n| (n.name.as_str(), n.op.kind()))
            .collect();
        let mut layers = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for node in self.qat.graph().nodes() {
            for name in [node.name.clone(), format!("{}.quant", node.name)] {
                let Some(value) = self.values.get(&name) else {
                    continue;
                };
                // Dropout / Identity name their input's value: report it once.
                if !seen.insert(value.clone()) {
                    continue;
                }
                if let (Some(r), Some(m)) = (refs.get(value), by_name.get(value.as_str())) {
                    let op = op_of.get(value.as_str()).copied().unwrap_or("input");
                    let local = match local.get(value.as_str()) {
                        Some(lr) => Some(agreement(lr, m)?),
                        None => None,
                    };
                    layers.push(LayerCompare {
                        name,
                        value: value.clone(),
                        op: op.to_string(),
                        quantized: matches!(m.data, ValueData::U8 { .. }),
                        end_to_end: agreement(r, m)?,
                        local,
                    });
                }
            }
        }
        let out_name = self.model.output_name();
        let m_out =
            traced_nchw(by_name.get(out_name).ok_or_else(|| {
                GraphError::Graph(format!("model output `{out_name}` not traced"))
            })?);
        if m_out.len() != ref_out.len() {
            return Err(GraphError::Graph(format!(
                "the graph outputs {} values, the model {}",
                ref_out.len(),
                m_out.len()
            )));
        }
        let per = m_out.len() / batch;
        let mut top1_agree = 0u64;
        let mut max_d = 0f32;
        for (a, b) in ref_out.chunks(per).zip(m_out.chunks(per)) {
            if argmax(a) == argmax(b) {
                top1_agree += 1;
            }
            for (x, y) in a.iter().zip(b) {
                max_d = max_nan(max_d, (x - y).abs());
            }
        }
        Ok(CompareReport {
            reference,
            samples: batch as u64,
            layers,
            output: out_name.to_string(),
            top1_agree,
            top1_agreement: fraction(top1_agree, batch as u64),
            max_abs_logit_diff: max_d,
        })
    }
}

/// Compare the QAT graph's eval fake-quant forward with the int8 model on one f32 NCHW batch.
///
/// `Err` if any observer is on (the forward would move the qparams away from the model's),
/// if `x` is not an f32 `[N>0, C, H, W]` batch of the graph's and the model's input shape, if
/// the graph does not lower (see [`convert`](crate::convert())), or if a layer's element count
/// differs between the two.
pub fn compare(qat: &QatGraph, model: &QuantizedModel, x: &Tensor) -> Result<CompareReport> {
    Comparer::new(qat, model, Reference::FakeQuant)?.run(x)
}

/// Compare the QAT graph's integer-exact evaluation (the plan of `model`, see
/// [`IntExactPlan`]) with the int8 model on one batch: every value should be identical.
pub fn compare_integer_exact(
    qat: &QatGraph,
    model: &QuantizedModel,
    x: &Tensor,
) -> Result<CompareReport> {
    Comparer::new(qat, model, Reference::IntegerExact)?.run(x)
}

/// [`compare`] over many batches, accumulated into one report (e.g. a whole test set).
/// `Err` on the first failing batch or when `batches` is empty.
pub fn compare_batches<I>(
    qat: &QatGraph,
    model: &QuantizedModel,
    batches: I,
) -> Result<CompareReport>
where
    I: IntoIterator,
    I::Item: Borrow<Tensor>,
{
    accumulate(Comparer::new(qat, model, Reference::FakeQuant)?, batches)
}

/// [`compare_integer_exact`] over many batches, accumulated into one report.
pub fn compare_integer_exact_batches<I>(
    qat: &QatGraph,
    model: &QuantizedModel,
    batches: I,
) -> Result<CompareReport>
where
    I: IntoIterator,
    I::Item: Borrow<Tensor>,
{
    accumulate(Comparer::new(qat, model, Reference::IntegerExact)?, batches)
}

fn accumulate<I>(c: Comparer<'_>, batches: I) -> Result<CompareReport>
where
    I: IntoIterator,
    I::Item: Borrow<Tensor>,
{
    let mut total: Option<CompareReport> = None;
    for b in batches {
        let r = c.run(b.borrow())?;
        match &mut total {
            Some(t) => t.merge(&r)?,
            None => total = Some(r),
        }
    }
    total.ok_or_else(|| GraphError::Invalid("compare_batches: no batch given".into()))
}
