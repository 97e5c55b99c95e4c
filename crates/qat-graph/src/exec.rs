//! [`GraphModule`]: a [`Graph`] with its parameters, run as a candle module in train or eval
//! mode.
//!
//! Parameters and buffers live in a [`VarMap`] under PyTorch `state_dict` names (buffers —
//! running statistics, `num_batches_tracked` — too, so a fused graph built on the same
//! `VarMap` shares them). Train mode: BatchNorm normalises with batch statistics and updates
//! the running mean and the *unbiased* running variance with its momentum (PyTorch's rule),
//! `num_batches_tracked` counts the updates, Dropout is active. Eval mode: BatchNorm uses the
//! running statistics, Dropout is the identity.
//!
//! NaN / infinite inputs are not an error: they propagate through the arithmetic as they do in
//! PyTorch (in eval mode only the affected samples' outputs become NaN). Wrong input shapes
//! or dtypes are an error naming the input node.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use qat_graph::{Conv2dCfg, Graph, GraphModule};
//! # fn main() -> qat_graph::Result<()> {
//! let mut g = Graph::new();
//! let x = g.input("x", [3, 8, 8])?;
//! let x = g.conv2d("conv", x, Conv2dCfg::new(3, 4, 3).padding(1))?;
//! g.relu("relu", x)?;
//! let m = GraphModule::new(g, 42, &Device::Cpu)?;
//! let y = m.forward_t(&Tensor::zeros((2, 3, 8, 8), DType::F32, &Device::Cpu)?, false)?;
//! assert_eq!(y.dims(), &[2, 4, 8, 8]);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::error::{GraphError, Result};
use crate::fuse::fuse;
use crate::graph::Graph;
use crate::ir::{Act, BnCfg, Op};
use crate::params::{init_param, node_param_specs, seeded_rng, ParamKind, ParamSpec};
use crate::prims::{self, OpsPath};

/// The variables of one BatchNorm.
struct BnVars {
    name: String,
    cfg: BnCfg,
    weight: Var,
    bias: Var,
    running_mean: Var,
    running_var: Var,
    num_batches_tracked: Var,
}

/// The variables of one node (looked up once, shared with the `VarMap`).
#[derive(Default)]
struct NodeVars {
    weight: Option<Var>,
    bias: Option<Var>,
    bn: Option<BnVars>,
}

/// A graph with its parameters: the trainable / runnable model.
pub struct GraphModule {
    graph: Graph,
    varmap: VarMap,
    specs: Vec<ParamSpec>,
    vars: Vec<NodeVars>,
    ops: OpsPath,
    device: Device,
    rng: Mutex<ChaCha8Rng>,
    /// For each node, the index of its last consumer (outputs: never freed).
    last_use: Vec<usize>,
}

impl GraphModule {
    /// The module with freshly initialised parameters (torchvision's scheme, seeded: the same
    /// seed gives the same weights everywhere). Dropout masks draw from a stream seeded by
    /// `seed` too.
    pub fn new(graph: Graph, seed: u64, device: &Device) -> Result<Self> {
        let varmap = VarMap::new();
        let mut rng = seeded_rng(seed);
        {
            let mut data = varmap.data().lock().expect("VarMap lock poisoned");
            for spec in graph.param_specs() {
                let t = init_param(&spec, &mut rng, device)?;
                data.insert(spec.name.clone(), Var::from_tensor(&t)?);
            }
        }
        Self::with_varmap(graph, varmap, seed.wrapping_add(1), device)
    }

    /// The module over existing variables (e.g. the unfused model's, to share parameters).
    /// Every parameter the graph needs must be in `varmap` with the right shape; extra
    /// entries are ignored.
    pub fn with_varmap(graph: Graph, varmap: VarMap, seed: u64, device: &Device) -> Result<Self> {
        let specs = graph.param_specs();
        let vars = {
            let data = varmap.data().lock().expect("VarMap lock poisoned");
            let mut missing = Vec::new();
            let mut mismatched = Vec::new();
            for s in &specs {
                match data.get(&s.name) {
                    None => missing.push(s.name.clone()),
                    Some(v) if v.dims() != s.shape.as_slice() => mismatched.push(format!(
                        "{}: expected {:?}, found {:?}",
                        s.name,
                        s.shape,
                        v.dims()
                    )),
                    Some(_) => {}
                }
            }
            if !missing.is_empty() || !mismatched.is_empty() {
                return Err(GraphError::StateDict {
                    missing,
                    unexpected: vec![],
                    mismatched,
                });
            }
            let get = |n: String| data[&n].clone();
            let bn_vars = |name: &str, cfg: &BnCfg| BnVars {
                name: name.to_string(),
                cfg: *cfg,
                weight: get(format!("{name}.weight")),
                bias: get(format!("{name}.bias")),
                running_mean: get(format!("{name}.running_mean")),
                running_var: get(format!("{name}.running_var")),
                num_batches_tracked: get(format!("{name}.num_batches_tracked")),
            };
            graph
                .nodes()
                .iter()
                .map(|n| {
                    let mut v = NodeVars::default();
                    let has = |suffix: &str| {
                        node_param_specs(&n.name, &n.op)
                            .iter()
                            .any(|s| s.name == format!("{}.{suffix}", n.name))
                    };
                    match &n.op {
                        Op::BatchNorm2d(b) | Op::BatchNorm1d(b) | Op::BnAct { bn: b, .. } => {
                            v.bn = Some(bn_vars(&n.name, b));
                        }
                        op => {
                            if has("weight") {
                                v.weight = Some(get(format!("{}.weight", n.name)));
                            }
                            if has("bias") {
                                v.bias = Some(get(format!("{}.bias", n.name)));
                            }
                            if let Op::ConvBn { bn, .. } | Op::LinearBn { bn, .. } = op {
                                v.bn = Some(bn_vars(&bn.name, &bn.cfg));
                            }
                        }
                    }
                    v
                })
                .collect()
        };
        let mut last_use: Vec<usize> = (0..graph.len()).collect();
        for (i, n) in graph.nodes().iter().enumerate() {
            for inp in &n.inputs {
                last_use[inp.0] = i;
            }
        }
        for o in graph.outputs() {
            last_use[o.0] = usize::MAX;
        }
        Ok(GraphModule {
            graph,
            varmap,
            specs,
            vars,
            ops: OpsPath::default(),
            device: device.clone(),
            rng: Mutex::new(seeded_rng(seed)),
            last_use,
        })
    }

    /// The fused model ([`fuse`]) over the same variables: training either trains both.
    pub fn fused(&self) -> Result<GraphModule> {
        let mut m = Self::with_varmap(fuse(&self.graph)?, self.varmap.clone(), 0, &self.device)?;
        m.ops = self.ops;
        *m.rng.get_mut().expect("rng lock") = self.rng.lock().expect("rng lock").clone();
        Ok(m)
    }

    /// Choose the primitive implementation (default [`OpsPath::Fast`]).
    pub fn set_ops_path(&mut self, ops: OpsPath) {
        self.ops = ops;
    }
    /// The primitive implementation in use.
    pub fn ops_path(&self) -> OpsPath {
        self.ops
    }
    /// The graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }
    /// The variables (parameters and buffers) by PyTorch name.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }
    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// The graph's state-dict entries.
    pub fn param_specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    /// The trainable parameters (no buffers) with their kind, in graph order — what an
    /// optimizer takes (see [`Sgd::new`](crate::Sgd::new)).
    pub fn trainable(&self) -> Vec<(String, Var, ParamKind)> {
        let data = self.varmap.data().lock().expect("VarMap lock poisoned");
        self.specs
            .iter()
            .filter(|s| s.kind.is_trainable())
            .map(|s| (s.name.clone(), data[&s.name].clone(), s.kind))
            .collect()
    }

    /// Run on one input, returning the first output.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut outs = self.forward_all(&[x], train)?;
        Ok(outs.swap_remove(0))
    }

    /// Run on all inputs (in [`Graph::inputs`] order), returning every output.
    pub fn forward_all(&self, xs: &[&Tensor], train: bool) -> Result<Vec<Tensor>> {
        let inputs = self.graph.inputs();
        if xs.len() != inputs.len() {
            return Err(GraphError::Graph(format!(
                "the graph has {} input(s), {} given",
                inputs.len(),
                xs.len()
            )));
        }
        let mut vals: Vec<Option<Tensor>> = vec![None; self.graph.len()];
        for (&id, x) in inputs.iter().zip(xs) {
            let want = self.graph.shape(id);
            let node = &self.graph.node(id).name;
            if x.rank() != want.len() + 1 || &x.dims()[1..] != want {
                return Err(GraphError::node(
                    node,
                    format!(
                        "expects input [N, {}], got {:?}",
                        want.iter()
                            .map(|d| d.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        x.dims()
                    ),
                ));
            }
            if x.dtype() != DType::F32 {
                return Err(GraphError::node(
                    node,
                    format!("expects f32 input, got {:?}", x.dtype()),
                ));
            }
            if x.dim(0)? == 0 {
                return Err(GraphError::node(node, "empty batch"));
            }
            vals[id.0] = Some((*x).clone());
        }
        for (i, node) in self.graph.nodes().iter().enumerate() {
            if !matches!(node.op, Op::Input { .. }) {
                let ins: Vec<&Tensor> = node
                    .inputs
                    .iter()
                    .map(|j| vals[j.0].as_ref().expect("inputs computed before use"))
                    .collect();
                let y = self.eval_node(i, &ins, train).map_err(|e| match e {
                    GraphError::Candle(e) => GraphError::node(&node.name, e.to_string()),
                    e => e,
                })?;
                vals[i] = Some(y);
            }
            for j in &node.inputs {
                if self.last_use[j.0] == i {
                    vals[j.0] = None;
                }
            }
        }
        Ok(self
            .graph
            .outputs()
            .iter()
            .map(|o| vals[o.0].clone().expect("outputs are kept"))
            .collect())
    }

    pub(crate) fn eval_node(&self, i: usize, ins: &[&Tensor], train: bool) -> Result<Tensor> {
        let node = &self.graph.nodes()[i];
        let v = &self.vars[i];
        let path = self.ops;
        let w = || v.weight.as_ref().expect("weight looked up").as_tensor();
        let b = || v.bias.as_ref().map(|b| b.as_tensor());
        let bn_act = |x: &Tensor, act: Option<Act>| {
            self.batch_norm(v.bn.as_ref().expect("bn looked up"), x, train, act)
        };
        let bn = |x: &Tensor| bn_act(x, None);
        let x = ins[0];
        Ok(match &node.op {
            Op::Input { .. } => unreachable!("inputs are set before the loop"),
            Op::Conv2d(c) => prims::conv2d(x, w(), b(), c, path)?,
            Op::BatchNorm2d(_) | Op::BatchNorm1d(_) => bn(x)?,
            Op::Linear(_) => linear(x, w(), b())?,
            Op::ReLU => prims::relu(x, path)?,
            Op::ReLU6 => prims::relu6(x, path)?,
            Op::Hardswish => prims::hardswish(x)?,
            Op::Add => (x + ins[1])?,
            Op::Concat { axis } => Tensor::cat(ins, *axis)?,
            Op::GlobalAvgPool => x.mean_keepdim((2, 3))?,
            Op::AvgPool2d(p) => x.avg_pool2d_with_stride(p.kernel, p.stride)?,
            Op::MaxPool2d(p) => x.max_pool2d_with_stride(p.kernel, p.stride)?,
            Op::Flatten => x.flatten_from(1)?,
            Op::Dropout { p } => self.dropout(x, *p, train)?,
            Op::Identity => x.clone(),
            Op::ConvBn { conv, act, .. } if train && b().is_none() => {
                let bn = v.bn.as_ref().expect("bn looked up");
                let (gamma, beta) = (bn.weight.as_tensor(), bn.bias.as_tensor());
                let fused =
                    prims::conv_bn_act_train(x, w(), gamma, beta, bn.cfg.eps, conv, *act, path)?;
                match fused {
                    Some((y, mean, var)) => {
                        let per_channel = y.elem_count() / y.dim(1)?;
                        self.update_running_stats(bn, per_channel, &mean, &var)?;
                        y
                    }
                    None => bn_act(&prims::conv2d(x, w(), None, conv, path)?, *act)?,
                }
            }
            Op::ConvBn { conv, act, .. } => bn_act(&prims::conv2d(x, w(), b(), conv, path)?, *act)?,
            Op::ConvAct { conv, act } => {
                act_fn(&prims::conv2d(x, w(), b(), conv, path)?, *act, path)?
            }
            Op::LinearAct { act, .. } => act_fn(&linear(x, w(), b())?, *act, path)?,
            Op::LinearBn { .. } => bn(&linear(x, w(), b())?)?,
            Op::BnAct { act, .. } => bn_act(x, Some(*act))?,
            Op::AddAct { act } => act_fn(&(x + ins[1])?, *act, path)?,
        })
    }

    /// BatchNorm then the optional activation (fused into one op on the fast path in train
    /// mode: no activation tensor, one autograd node).
    fn batch_norm(&self, bn: &BnVars, x: &Tensor, train: bool, act: Option<Act>) -> Result<Tensor> {
        let eps = bn.cfg.eps;
        if !train {
            // PyTorch's CPU eval kernel form: y = x * (γ / √(var + ε)) + (β − mean · that).
            let scale = (bn.weight.as_tensor() / (bn.running_var.as_tensor() + eps)?.sqrt()?)?;
            let shift = (bn.bias.as_tensor() - (bn.running_mean.as_tensor() * &scale)?)?;
            let y = prims::channel_affine_on(x, &scale, &shift, self.ops)?;
            return act_opt(&y, act, self.ops);
        }
        let per_channel = x.elem_count() / x.dim(1)?;
        if per_channel < 2 {
            return Err(GraphError::node(
                &bn.name,
                format!(
                    "train-mode BatchNorm needs more than 1 value per channel, got input {:?}",
                    x.dims()
                ),
            ));
        }
        let (y, mean, var) = prims::batch_norm_act_train(
            x,
            bn.weight.as_tensor(),
            bn.bias.as_tensor(),
            eps,
            act,
            self.ops,
        )?;
        self.update_running_stats(bn, per_channel, &mean, &var)?;
        Ok(y)
    }

    /// PyTorch's running-statistics update after a train-mode BatchNorm whose batch statistics
    /// `mean` / biased `var` were taken over `per_channel` values per channel.
    fn update_running_stats(
        &self,
        bn: &BnVars,
        per_channel: usize,
        mean: &Tensor,
        var: &Tensor,
    ) -> Result<()> {
        let m = bn.cfg.momentum;
        let unbias = per_channel as f64 / (per_channel - 1) as f64;
        let rm = ((bn.running_mean.as_tensor() * (1.0 - m))? + (mean.detach() * m)?)?;
        let rv = ((bn.running_var.as_tensor() * (1.0 - m))? + (var.detach() * (m * unbias))?)?;
        bn.running_mean.set(&rm.detach())?;
        bn.running_var.set(&rv.detach())?;
        let count = bn.num_batches_tracked.as_tensor().to_scalar::<i64>()?;
        bn.num_batches_tracked
            .set(&Tensor::new(count + 1, &self.device)?)?;
        Ok(())
    }

    fn dropout(&self, x: &Tensor, p: f64, train: bool) -> Result<Tensor> {
        if !train || p == 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - p;
        let scale = (1.0 / keep) as f32;
        let mask: Vec<f32> = {
            let mut rng = self.rng.lock().expect("rng lock poisoned");
            (0..x.elem_count())
                .map(|_| if rng.gen::<f64>() < keep { scale } else { 0.0 })
                .collect()
        };
        let mask = Tensor::from_vec(mask, x.dims(), x.device())?;
        Ok((x * mask)?)
    }
}

fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.matmul(&w.t()?)?;
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

fn act_fn(x: &Tensor, act: Act, path: OpsPath) -> Result<Tensor> {
    Ok(match act {
        Act::ReLU => prims::relu(x, path)?,
        Act::ReLU6 => prims::relu6(x, path)?,
    })
}

fn act_opt(x: &Tensor, act: Option<Act>, path: OpsPath) -> Result<Tensor> {
    match act {
        Some(a) => act_fn(x, a, path),
        None => Ok(x.clone()),
    }
}

/// candle's train-aware module trait: first input to first output. (Not `Module` as well:
/// candle derives `ModuleT` for every `Module`, ignoring the mode.)
impl candle_nn::ModuleT for GraphModule {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        GraphModule::forward_t(self, xs, train).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}

/// The variables as a name → tensor map (buffers included).
pub(crate) fn var_tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    let data = varmap.data().lock().expect("VarMap lock poisoned");
    data.iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}
