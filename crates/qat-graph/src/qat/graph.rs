//! [`QatGraph`]: a fused [`GraphModule`] plus, per node, its resolved qconfig and fake-quant
//! modules. The graph and its parameters stay untouched (QAT state lives next to them), so
//! the same `VarMap` trains in float or in QAT.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Tensor, Var};
use qat_fakequant::RangeFeed;

use crate::error::{GraphError, Result};
use crate::exec::GraphModule;
use crate::graph::Graph;
use crate::ir::{Act, NodeId, Op};
use crate::params::ParamKind;
use crate::prims::{self, OpsPath};
use crate::qat::fold::{folded_bn_forward, folded_conv_bn_act_forward, BnStats, BnVars};
use crate::qat::fq::FqModule;
use crate::qconfig::{NodeQConfig, QConfig};

/// The QAT state of one node.
#[derive(Debug)]
pub struct QatNode {
    /// The resolved config; `None`: the node runs in float.
    pub config: Option<NodeQConfig>,
    /// `<node>.weight_fake_quant` of a quantized conv / linear (fused or not).
    pub weight_fq: Option<FqModule>,
    /// `<node>.activation_post_process`: the output fake-quant of a quantized node, or the
    /// quant stub of a float node whose output feeds quantized nodes (then it applies to the
    /// edges into quantized consumers only; float consumers read the float value).
    pub output_fq: Option<FqModule>,
    /// Whether `output_fq` is a quant stub at a float-island boundary.
    pub is_quant_stub: bool,
    weight: Option<Var>,
    bias: Option<Var>,
    bn: Option<BnVars>,
}

/// A float / quantized boundary of a prepared graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boundary {
    /// A float value enters the quantized part (after node `node`: a quant stub).
    Quant { node: String },
    /// A quantized value leaves for float (`consumer` is `None` for a graph output).
    DeQuant {
        producer: String,
        consumer: Option<String>,
    },
}

/// A fused graph prepared for quantization-aware training (or, with observe-only specs,
/// post-training calibration). See [`prepare_qat`](crate::prepare_qat).
pub struct QatGraph {
    module: GraphModule,
    nodes: Vec<QatNode>,
    bn_frozen: AtomicBool,
    int8_bias: AtomicBool,
    fused_output_fq: AtomicBool,
    last_use: Vec<usize>,
}

/// Ops whose output carries new qparams (an activation fake-quant follows a quantized one).
fn observes_output(op: &Op) -> bool {
    !matches!(
        op,
        Op::ReLU
            | Op::ReLU6
            | Op::GlobalAvgPool
            | Op::AvgPool2d(_)
            | Op::MaxPool2d(_)
            | Op::Flatten
            | Op::Dropout { .. }
            | Op::Identity
    )
}

/// `(out_channels, has_bias)` of the weighted op inside a node.
fn weighted(op: &Op) -> Option<(usize, bool)> {
    match op {
        Op::Conv2d(c) | Op::ConvAct { conv: c, .. } | Op::ConvBn { conv: c, .. } => {
            Some((c.out_channels, c.bias))
        }
        Op::Linear(l) | Op::LinearAct { linear: l, .. } | Op::LinearBn { linear: l, .. } => {
            Some((l.out_features, l.bias))
        }
        _ => None,
    }
}

fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.matmul(&w.t()?)?;
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

fn act(x: Tensor, a: Option<Act>, path: OpsPath) -> Result<Tensor> {
    Ok(match a {
        Some(Act::ReLU) => prims::relu(&x, path)?,
        Some(Act::ReLU6) => prims::relu6(&x, path)?,
        None => x,
    })
}

impl QatGraph {
    /// Resolve `qconfig` on every node of `module`'s graph (which should be fused) and
    /// create the fake-quant modules.
    pub(crate) fn new(module: GraphModule, qconfig: &QConfig) -> Result<Self> {
        let graph = module.graph();
        let configs: Vec<Option<NodeQConfig>> = graph
            .nodes()
            .iter()
            .map(|n| qconfig.for_node(&n.name, &n.op).copied())
            .collect();
        let consumers = graph.consumers();
        let vars = module
            .varmap()
            .data()
            .lock()
            .expect("VarMap lock poisoned")
            .clone();
        let get = |name: String| -> Result<Var> {
            vars.get(&name)
                .cloned()
                .ok_or_else(|| GraphError::node(&name, "parameter missing from the VarMap"))
        };
        let mut nodes = Vec::with_capacity(graph.len());
        for (i, n) in graph.nodes().iter().enumerate() {
            let mut config = configs[i];
            let quantized_consumer = consumers[i].iter().find_map(|c| configs[c.0]);
            if matches!(n.op, Op::Input { .. }) && quantized_consumer.is_none() {
                config = None;
            }
            let mut node = QatNode {
                config,
                weight_fq: None,
                output_fq: None,
                is_quant_stub: false,
                weight: None,
                bias: None,
                bn: None,
            };
            let out_channels = graph.shape(NodeId(i)).first().copied().unwrap_or(1);
            match (&config, quantized_consumer) {
                (Some(cfg), _) => {
                    if let Some((oc, has_bias)) = weighted(&n.op) {
                        node.weight = Some(get(format!("{}.weight", n.name))?);
                        if has_bias {
                            node.bias = Some(get(format!("{}.bias", n.name))?);
                        }
                        node.weight_fq = Some(FqModule::new(
                            format!("{}.weight_fake_quant", n.name),
                            &cfg.weight,
                            oc,
                        )?);
                    }
                    if let Op::ConvBn { bn, .. } | Op::LinearBn { bn, .. } = &n.op {
                        let g = |s: &str| get(format!("{}.{s}", bn.name));
                        node.bn = Some(BnVars {
                            name: bn.name.clone(),
                            cfg: bn.cfg,
                            weight: g("weight")?,
                            bias: g("bias")?,
                            running_mean: g("running_mean")?,
                            running_var: g("running_var")?,
                            num_batches_tracked: g("num_batches_tracked")?,
                        });
                    }
                    if observes_output(&n.op) {
                        node.output_fq = Some(FqModule::new(
                            format!("{}.activation_post_process", n.name),
                            &cfg.activation,
                            out_channels,
                        )?);
                    }
                }
                (None, Some(consumer_cfg)) => {
                    node.output_fq = Some(FqModule::new(
                        format!("{}.activation_post_process", n.name),
                        &consumer_cfg.activation,
                        out_channels,
                    )?);
                    node.is_quant_stub = true;
                }
                (None, None) => {}
            }
            nodes.push(node);
        }
        let mut last_use: Vec<usize> = (0..graph.len()).collect();
        for (i, n) in graph.nodes().iter().enumerate() {
            for inp in &n.inputs {
                last_use[inp.0] = i;
            }
        }
        for o in graph.outputs() {
            last_use[o.0] = usize::MAX;
        }
        Ok(QatGraph {
            module,
            nodes,
            bn_frozen: AtomicBool::new(false),
            int8_bias: AtomicBool::new(true),
            fused_output_fq: AtomicBool::new(true),
            last_use,
        })
    }

    /// The fused graph.
    pub fn graph(&self) -> &Graph {
        self.module.graph()
    }
    /// The float module (parameters in its `VarMap`, PyTorch names).
    pub fn module(&self) -> &GraphModule {
        &self.module
    }
    /// The QAT state of every node, in graph order.
    pub fn nodes(&self) -> &[QatNode] {
        &self.nodes
    }
    /// The QAT state of the node called `name`.
    pub fn node(&self, name: &str) -> Option<&QatNode> {
        self.graph().find(name).map(|id| &self.nodes[id.0])
    }

    /// Every fake-quant module, in graph order (a node's weight fake-quant before its output
    /// fake-quant).
    pub fn fake_quants(&self) -> impl Iterator<Item = &FqModule> {
        self.nodes
            .iter()
            .flat_map(|n| n.weight_fq.iter().chain(n.output_fq.iter()))
    }
    /// Their names (`<node>.weight_fake_quant`, `<node>.activation_post_process`).
    pub fn fake_quant_names(&self) -> Vec<String> {
        self.fake_quants().map(|f| f.name().to_string()).collect()
    }
    /// The fake-quant module with this full name.
    pub fn fake_quant(&self, name: &str) -> Option<&FqModule> {
        self.fake_quants().find(|f| f.name() == name)
    }

    /// The float / quantized boundaries (quant stubs, dequants), in graph order.
    pub fn boundaries(&self) -> Vec<Boundary> {
        let g = self.graph();
        let mut out = Vec::new();
        for (i, n) in g.nodes().iter().enumerate() {
            if self.nodes[i].is_quant_stub {
                out.push(Boundary::Quant {
                    node: n.name.clone(),
                });
            }
            if self.nodes[i].config.is_none() {
                for p in &n.inputs {
                    if self.nodes[p.0].config.is_some() {
                        out.push(Boundary::DeQuant {
                            producer: g.node(*p).name.clone(),
                            consumer: Some(n.name.clone()),
                        });
                    }
                }
            }
        }
        for o in g.outputs() {
            if self.nodes[o.0].config.is_some() {
                out.push(Boundary::DeQuant {
                    producer: g.node(o).name.clone(),
                    consumer: None,
                });
            }
        }
        out
    }

    /// BatchNorms folded into QAT Conv+BN / Linear+BN stop updating their running statistics
    /// and normalise with them in train mode too (PyTorch's `freeze_bn_stats`).
    pub fn freeze_bn_stats(&self) {
        self.bn_frozen.store(true, Ordering::Relaxed);
    }
    /// Undo [`QatGraph::freeze_bn_stats`] (PyTorch's `update_bn_stats`).
    pub fn update_bn_stats(&self) {
        self.bn_frozen.store(false, Ordering::Relaxed);
    }
    /// Whether the folded BNs are frozen.
    pub fn bn_frozen(&self) -> bool {
        self.bn_frozen.load(Ordering::Relaxed)
    }

    /// Whether eval adds the int8 model's bias rounding to each quantized conv / linear
    /// (on by default; see [`QatGraph::forward_t`]). Off, eval is PyTorch's QAT forward,
    /// which keeps the folded bias in float: for parity with PyTorch's fake-quant outputs.
    pub fn simulate_int8_bias(&self, on: bool) {
        self.int8_bias.store(on, Ordering::Relaxed);
    }
    /// Whether eval adds the int8 model's bias rounding.
    pub fn int8_bias_simulated(&self) -> bool {
        self.int8_bias.load(Ordering::Relaxed)
    }

    /// Whether a quantized Conv+BN training with batch statistics on the fast CPU path
    /// observes and fake-quantizes its output inside its fused op, when its activation
    /// fake-quant is the default per-tensor moving-average one (on by default). The values,
    /// gradients and observer state are those of the separate module bit for bit; the fused op
    /// saves the module's passes over the tensor, its output and its autograd node. Off: the
    /// module runs on its own (for comparison).
    pub fn fuse_output_fake_quant(&self, on: bool) {
        self.fused_output_fq.store(on, Ordering::Relaxed);
    }
    /// Whether [`QatGraph::fuse_output_fake_quant`] is on.
    pub fn output_fake_quant_fused(&self) -> bool {
        self.fused_output_fq.load(Ordering::Relaxed)
    }

    /// Switch every observer on or off.
    pub fn enable_observers(&self, on: bool) {
        self.fake_quants().for_each(|f| f.enable_observer(on));
    }
    /// Switch the weight observers (`<node>.weight_fake_quant`) on or off, leaving the
    /// activation observers as they are. Weights keep moving after activation ranges are
    /// frozen; a weight range frozen with them lets the weights drift into clipping, where
    /// the straight-through gradient is zero and nothing pulls them back.
    pub fn enable_weight_observers(&self, on: bool) {
        self.nodes
            .iter()
            .filter_map(|n| n.weight_fq.as_ref())
            .for_each(|f| f.enable_observer(on));
    }
    /// Switch the activation observers (`<node>.activation_post_process`, quant stubs
    /// included) on or off, leaving the weight observers as they are.
    pub fn enable_activation_observers(&self, on: bool) {
        self.nodes
            .iter()
            .filter_map(|n| n.output_fq.as_ref())
            .for_each(|f| f.enable_observer(on));
    }
    /// Switch every fake quantization on or off.
    pub fn enable_fake_quant(&self, on: bool) {
        self.fake_quants().for_each(|f| f.enable_fake_quant(on));
    }
    /// Switch the observers of one node (weight and output) on or off.
    pub fn enable_observers_for(&self, node: &str, on: bool) -> Result<()> {
        self.node_fqs(node)?.for_each(|f| f.enable_observer(on));
        Ok(())
    }
    /// Switch the fake quantization of one node (weight and output) on or off.
    pub fn enable_fake_quant_for(&self, node: &str, on: bool) -> Result<()> {
        self.node_fqs(node)?.for_each(|f| f.enable_fake_quant(on));
        Ok(())
    }
    fn node_fqs(&self, node: &str) -> Result<impl Iterator<Item = &FqModule>> {
        let n = self
            .node(node)
            .ok_or_else(|| GraphError::node(node, "no such node"))?;
        if n.weight_fq.is_none() && n.output_fq.is_none() {
            return Err(GraphError::node(node, "the node has no fake-quant module"));
        }
        Ok(n.weight_fq.iter().chain(n.output_fq.iter()))
    }

    /// The trainable parameters of the float module plus the learnable fake-quant variables
    /// (LSQ scale / zero point, as [`ParamKind::Bias`]: no weight decay).
    pub fn trainable(&self) -> Vec<(String, Var, ParamKind)> {
        let mut v = self.module.trainable();
        for f in self.fake_quants() {
            for (var, s) in f.vars().into_iter().zip(["scale", "zero_point"]) {
                v.push((format!("{}.{s}", f.name()), var, ParamKind::Bias));
            }
        }
        v
    }

    /// Parameters, buffers and every fake-quant module's state under PyTorch-like names.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut st = crate::exec::var_tensors(self.module.varmap());
        for f in self.fake_quants() {
            st.extend(f.state()?);
        }
        Ok(st)
    }

    /// Load the fake-quant state of every module from `st` (names as [`QatGraph::state`]);
    /// parameters are loaded through the module's `VarMap`.
    pub fn load_fake_quant_state(&self, st: &HashMap<String, Tensor>) -> Result<()> {
        for f in self.fake_quants() {
            f.load_state(st)?;
        }
        Ok(())
    }

    /// Our state name for a PyTorch eager-mode QAT `state_dict` name (after
    /// `fuse_modules_qat` + `prepare_qat`): `quant.*` (the input `QuantStub`) is the single
    /// input node's, and `<conv>.bn.*` of a fused Conv+BN is the folded BN node's.
    fn our_name_for_pytorch(&self, key: &str) -> String {
        let g = self.graph();
        if let Some(rest) = key.strip_prefix("quant.") {
            if let [input] = g.inputs().as_slice() {
                return format!("{}.{rest}", g.node(*input).name);
            }
        }
        for n in g.nodes() {
            if let Op::ConvBn { bn, .. } | Op::LinearBn { bn, .. } = &n.op {
                if let Some(rest) = key.strip_prefix(&format!("{}.bn.", n.name)) {
                    return format!("{}.{rest}", bn.name);
                }
            }
        }
        key.to_string()
    }

    /// Load a PyTorch eager-mode QAT `state_dict` (parameters, BN buffers, every fake-quant's
    /// `scale` / `zero_point` / flags / observer `min_val` / `max_val`), mapping its fused
    /// names onto this graph (see `our_name_for_pytorch`). Every parameter and every fake-quant
    /// module must be covered, else an `Err` lists what is missing; returns the keys that
    /// map to nothing here (e.g. the unused `skip_add` of blocks without a residual).
    pub fn load_pytorch_qat_state(&self, sd: &HashMap<String, Tensor>) -> Result<Vec<String>> {
        let mapped: HashMap<String, Tensor> = sd
            .iter()
            .map(|(k, v)| (self.our_name_for_pytorch(k), v.clone()))
            .collect();
        let fq_names: Vec<String> = self.fake_quant_names();
        let owned_by_fq = |k: &str| fq_names.iter().any(|f| k.starts_with(&format!("{f}.")));
        let vars = self
            .module
            .varmap()
            .data()
            .lock()
            .expect("VarMap lock poisoned")
            .clone();
        let mut missing: Vec<String> = vars
            .keys()
            .filter(|k| !mapped.contains_key(*k))
            .cloned()
            .collect();
        missing.extend(
            fq_names
                .iter()
                .filter(|f| !mapped.keys().any(|k| k.starts_with(&format!("{f}."))))
                .cloned(),
        );
        if !missing.is_empty() {
            missing.sort();
            return Err(GraphError::StateDict {
                missing,
                unexpected: vec![],
                mismatched: vec![],
            });
        }
        let mismatched: Vec<String> = vars
            .iter()
            .filter(|(k, v)| mapped[*k].elem_count() != v.elem_count())
            .map(|(k, v)| format!("{k}: expected {:?}, found {:?}", v.dims(), mapped[k].dims()))
            .collect();
        if !mismatched.is_empty() {
            return Err(GraphError::StateDict {
                missing: vec![],
                unexpected: vec![],
                mismatched,
            });
        }
        for f in self.fake_quants() {
            f.load_state(&mapped)?;
        }
        for (k, v) in &vars {
            let t = mapped[k].to_dtype(v.dtype())?.reshape(v.dims())?;
            v.set(&t)?;
        }
        let mut ignored: Vec<String> = sd
            .keys()
            .filter(|k| {
                let m = self.our_name_for_pytorch(k);
                !vars.contains_key(&m) && !owned_by_fq(&m)
            })
            .cloned()
            .collect();
        ignored.sort();
        Ok(ignored)
    }

    /// Run batches in eval mode with every observer on (post-training calibration).
    pub fn calibrate(&self, batches: &[Tensor]) -> Result<()> {
        self.enable_observers(true);
        for b in batches {
            self.forward_t(b, false)?;
        }
        Ok(())
    }

    /// Run on one input, returning the first output.
    ///
    /// The fake-quant forward is PyTorch's, with two changes that make it compute what the
    /// converted int8 model computes: a quantized global average pool's mean is rounded on
    /// the integer grid as the int8 pool rounds it (train and eval), and in eval each
    /// quantized conv / linear adds its folded bias's rounding to i32
    /// ([`QatGraph::simulate_int8_bias`]; off gives PyTorch's eval outputs).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut outs = self.forward_all(&[x], train)?;
        Ok(outs.swap_remove(0))
    }

    /// Run on all inputs (in [`Graph::inputs`] order), returning every output. Observers
    /// that are on update in train and eval mode alike (PyTorch's behaviour; switch them off
    /// with [`QatGraph::enable_observers`] to evaluate without changing qparams).
    pub fn forward_all(&self, xs: &[&Tensor], train: bool) -> Result<Vec<Tensor>> {
        self.forward_core(xs, train, None)
    }

    /// The forward behind [`QatGraph::forward_all`] and
    /// [`QatGraph::forward_traced`]: with `trace`, every node's value is recorded there
    /// (`(name, value)`, plus `<name>.quant` for a quant stub's fake-quantized value).
    pub(crate) fn forward_core(
        &self,
        xs: &[&Tensor],
        train: bool,
        mut trace: Option<&mut Vec<(String, Tensor)>>,
    ) -> Result<Vec<Tensor>> {
        let g = self.graph();
        let inputs = g.inputs();
        if xs.len() != inputs.len() {
            return Err(GraphError::Graph(format!(
                "the graph has {} input(s), {} given",
                inputs.len(),
                xs.len()
            )));
        }
        let mut vals: Vec<Option<Tensor>> = vec![None; g.len()];
        let mut stub_vals: Vec<Option<Tensor>> = vec![None; g.len()];
        let mut next_input = 0;
        for (i, node) in g.nodes().iter().enumerate() {
            let q = &self.nodes[i];
            let mut fq_applied = false;
            let y = if matches!(node.op, Op::Input { .. }) {
                let x = xs[next_input];
                next_input += 1;
                let want = g.shape(NodeId(i));
                if x.rank() != want.len() + 1 || &x.dims()[1..] != want || x.dim(0)? == 0 {
                    return Err(GraphError::node(
                        &node.name,
                        format!("expects input [N>0, {want:?}], got {:?}", x.dims()),
                    ));
                }
                if x.dtype() != DType::F32 {
                    return Err(GraphError::node(
                        &node.name,
                        format!("expects f32 input, got {:?}", x.dtype()),
                    ));
                }
                (*x).clone()
            } else {
                let ins: Vec<&Tensor> = node
                    .inputs
                    .iter()
                    .map(|p| {
                        let stub = stub_vals[p.0].as_ref().filter(|_| q.config.is_some());
                        stub.or(vals[p.0].as_ref())
                            .expect("inputs computed before use")
                    })
                    .collect();
                // A quantized Conv+BN may apply its output fake-quant itself.
                let feed = q
                    .output_fq
                    .as_ref()
                    .filter(|_| train && !q.is_quant_stub && self.output_fake_quant_fused())
                    .and_then(|f| f.range_feed());
                let (y, done) = self
                    .node_value_fq(i, &ins, train, feed.as_ref())
                    .map_err(|e| match e {
                        GraphError::Candle(e) => GraphError::node(&node.name, e.to_string()),
                        e => e,
                    })?;
                if done {
                    fq_applied = true;
                }
                y
            };
            let (v, stub) = match &q.output_fq {
                _ if fq_applied => (y, None),
                Some(fq) if q.is_quant_stub => {
                    let s = fq.forward(&y)?;
                    (y, Some(s))
                }
                Some(fq) => (fq.forward(&y)?, None),
                None => (y, None),
            };
            if let Some(t) = trace.as_deref_mut() {
                t.push((node.name.clone(), v.clone()));
                if let Some(s) = &stub {
                    t.push((format!("{}.quant", node.name), s.clone()));
                }
            }
            vals[i] = Some(v);
            stub_vals[i] = stub;
            for j in &node.inputs {
                if self.last_use[j.0] == i {
                    vals[j.0] = None;
                    stub_vals[j.0] = None;
                }
            }
        }
        Ok(g.outputs()
            .iter()
            .map(|o| vals[o.0].clone().expect("outputs are kept"))
            .collect())
    }

    /// Node `i`'s value (before its output fake-quant) from its inputs' values: a quantized
    /// weighted node through [`Self::qat_node`] (in eval with the int8 model's bias
    /// rounding, see [`super::bias`]), a quantized pool rounded onto its input's
    /// grid as the int8 pool rounds it (PyTorch's QAT graph leaves the mean unrounded, and
    /// its int8 model then disagrees with it on every half-step tie and more), anything
    /// else as the float module runs it.
    pub(crate) fn node_value(&self, i: usize, ins: &[&Tensor], train: bool) -> Result<Tensor> {
        Ok(self.node_value_fq(i, ins, train, None)?.0)
    }

    /// [`Self::node_value`], where a quantized Conv+BN may also observe and fake-quantize its
    /// output through `out_fq` (see [`folded_conv_bn_act_forward`]): the second value says
    /// whether it did.
    fn node_value_fq(
        &self,
        i: usize,
        ins: &[&Tensor],
        train: bool,
        out_fq: Option<&RangeFeed>,
    ) -> Result<(Tensor, bool)> {
        let node = &self.graph().nodes()[i];
        let q = &self.nodes[i];
        if q.config.is_some() && q.weight.is_some() {
            let (y, done) = self.qat_node(i, ins, train, out_fq)?;
            return if train || !self.int8_bias_simulated() {
                Ok((y, done))
            } else {
                Ok((super::bias::with_int8_bias(self, NodeId(i), y)?, done))
            };
        }
        let y = self.module.eval_node(i, ins, train)?;
        if q.config.is_none() {
            return Ok((y, false));
        }
        let fq = match node.op {
            Op::GlobalAvgPool | Op::AvgPool2d(_) => self.value_fq(node.inputs[0]),
            _ => None,
        };
        let y = match fq {
            Some(fq) if node.op == Op::GlobalAvgPool => {
                super::pool::integer_global_pool(fq, ins[0], &y)?
            }
            Some(fq) => fq.fake_quantize_frozen(&y)?,
            None => y,
        };
        Ok((y, false))
    }

    /// The fake-quant that sets the qparams of node `id`'s value: its own output
    /// fake-quant, or (ops that keep their input's qparams) its input's.
    pub(crate) fn value_fq(&self, id: NodeId) -> Option<&FqModule> {
        let g = self.graph();
        let mut cur = id;
        loop {
            let q = &self.nodes[cur.0];
            if let Some(fq) = &q.output_fq {
                return Some(fq);
            }
            let node = g.node(cur);
            if observes_output(&node.op) || node.inputs.is_empty() {
                return None;
            }
            cur = node.inputs[0];
        }
    }

    /// A quantized conv / linear node: weight fake-quant inside, BN folded PyTorch's way; a
    /// Conv+BN also applies its output fake-quant through `out_fq` where its fused op can (the
    /// second value says whether it did).
    fn qat_node(
        &self,
        i: usize,
        ins: &[&Tensor],
        train: bool,
        out_fq: Option<&RangeFeed>,
    ) -> Result<(Tensor, bool)> {
        let node = &self.graph().nodes()[i];
        let q = &self.nodes[i];
        let path = self.module.ops_path();
        let x = ins[0];
        let w = q.weight.as_ref().expect("weighted node").as_tensor();
        let b = q.bias.as_ref().map(|b| b.as_tensor());
        let fq_w = || -> Result<Tensor> {
            match &q.weight_fq {
                Some(f) => f.forward(w),
                None => Ok(w.clone()),
            }
        };
        let stats = if train && !self.bn_frozen() {
            BnStats::Batch
        } else {
            BnStats::Running
        };
        let bn = || q.bn.as_ref().expect("fused BN looked up");
        let plain = |y: Result<Tensor>| y.map(|y| (y, false));
        match &node.op {
            Op::Conv2d(c) => plain(Ok(prims::conv2d(x, &fq_w()?, b, c, path)?)),
            Op::ConvAct { conv, act: a } => plain(act(
                prims::conv2d(x, &fq_w()?, b, conv, path)?,
                Some(*a),
                path,
            )),
            Op::Linear(_) => plain(linear(x, &fq_w()?, b)),
            Op::LinearAct { act: a, .. } => plain(act(linear(x, &fq_w()?, b)?, Some(*a), path)),
            Op::ConvBn { conv, act: a, .. } => {
                let fq = q.weight_fq.as_ref();
                folded_conv_bn_act_forward(x, w, b, bn(), stats, fq, *a, path, conv, out_fq)
            }
            Op::LinearBn { .. } => plain(folded_bn_forward(
                x,
                w,
                b,
                bn(),
                stats,
                q.weight_fq.as_ref(),
                |x, w| linear(x, w, None),
            )),
            op => Err(GraphError::node(
                &node.name,
                format!("{} has no QAT form with weights", op.type_name()),
            )),
        }
    }
}
