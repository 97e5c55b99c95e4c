//! [`Graph`]: nodes in topological order with inferred shapes, and the builder API.
//!
//! ```
//! use qat_graph::{BnCfg, Conv2dCfg, Graph, LinearCfg};
//! # fn main() -> qat_graph::Result<()> {
//! let mut g = Graph::new();
//! let x = g.input("x", [1, 28, 28])?;
//! let x = g.conv2d("features.0.0", x, Conv2dCfg::new(1, 8, 3).padding(1).bias(false))?;
//! let x = g.batch_norm2d("features.0.1", x, BnCfg::new(8))?;
//! let x = g.relu6("features.0.2", x)?;
//! let x = g.global_avg_pool("pool", x)?;
//! let x = g.flatten("flatten", x)?;
//! let y = g.linear("classifier", x, LinearCfg { in_features: 8, out_features: 10, bias: true })?;
//! assert_eq!(g.shape(y), &[10]);
//! assert!(g.conv2d("bad", y, Conv2dCfg::new(3, 8, 3)).is_err()); // names the node
//! # Ok(()) }
//! ```

use std::collections::HashMap;

use crate::error::{GraphError, Result};
use crate::ir::{BnCfg, Conv2dCfg, LinearCfg, Node, NodeId, Op, PoolCfg};
use crate::shape;

/// A model: named nodes in topological order, each with its per-sample output shape.
///
/// The builder methods append a node after checking its inputs and configuration, so a graph
/// built with them is valid by construction and acyclic (a node can only consume earlier
/// nodes). [`Graph::from_nodes`] validates and orders an arbitrary node list (what passes use).
#[derive(Debug, Clone, Default)]
pub struct Graph {
    nodes: Vec<Node>,
    shapes: Vec<Vec<usize>>,
    by_name: HashMap<String, NodeId>,
    outputs: Vec<NodeId>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Build a graph from nodes whose `inputs` index into `nodes`, in any order: checks
    /// dangling inputs, duplicate names, cycles and every node's shapes, and sorts the nodes
    /// topologically (stable: already-ordered nodes keep their order). `outputs` index into
    /// `nodes` too; empty means "the last node after sorting".
    pub fn from_nodes(nodes: Vec<Node>, outputs: Vec<NodeId>) -> Result<Graph> {
        let n = nodes.len();
        for node in &nodes {
            if let Some(bad) = node.inputs.iter().find(|i| i.0 >= n) {
                return Err(GraphError::node(
                    &node.name,
                    format!("dangling input #{} (graph has {n} nodes)", bad.0),
                ));
            }
        }
        if let Some(bad) = outputs.iter().find(|o| o.0 >= n) {
            return Err(GraphError::Graph(format!(
                "output #{} does not exist (graph has {n} nodes)",
                bad.0
            )));
        }
        let order = topo_order(&nodes)?;
        let mut new_id = vec![NodeId(0); n];
        for (pos, &old) in order.iter().enumerate() {
            new_id[old] = NodeId(pos);
        }
        let mut g = Graph::new();
        let mut nodes: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
        for &old in &order {
            let node = nodes[old].take().expect("each node is visited once");
            let inputs = node.inputs.iter().map(|i| new_id[i.0]).collect();
            g.add_node(node.name, node.op, inputs)?;
        }
        g.outputs = outputs.iter().map(|o| new_id[o.0]).collect();
        Ok(g)
    }

    /// Append a node (the generic form of the builder methods).
    pub fn add_node(
        &mut self,
        name: impl Into<String>,
        op: Op,
        inputs: Vec<NodeId>,
    ) -> Result<NodeId> {
        let name = name.into();
        if name.is_empty() {
            return Err(GraphError::node("<empty>", "node names must be non-empty"));
        }
        let mut names = vec![name.as_str()];
        if let Op::ConvBn { bn, .. } | Op::LinearBn { bn, .. } = &op {
            names.push(bn.name.as_str());
        }
        for nm in &names {
            if self.by_name.contains_key(*nm) || (names.len() > 1 && names[0] == names[1]) {
                return Err(GraphError::node(*nm, "duplicate node name"));
            }
        }
        if let Some(bad) = inputs.iter().find(|i| i.0 >= self.nodes.len()) {
            return Err(GraphError::node(
                &name,
                format!(
                    "dangling input #{} (graph has {} nodes)",
                    bad.0,
                    self.nodes.len()
                ),
            ));
        }
        let ins: Vec<&[usize]> = inputs.iter().map(|i| self.shapes[i.0].as_slice()).collect();
        let shape = shape::infer(&name, &op, &ins)?;
        let id = NodeId(self.nodes.len());
        for nm in names {
            self.by_name.insert(nm.to_string(), id);
        }
        self.nodes.push(Node { name, op, inputs });
        self.shapes.push(shape);
        Ok(id)
    }

    /// A graph input of per-sample `shape` (`[C, H, W]` or `[F]`; the batch axis is implicit).
    pub fn input(&mut self, name: &str, shape: impl AsRef<[usize]>) -> Result<NodeId> {
        let shape = shape.as_ref().to_vec();
        self.add_node(name, Op::Input { shape }, vec![])
    }
    /// `nn.Conv2d`.
    pub fn conv2d(&mut self, name: &str, x: NodeId, cfg: Conv2dCfg) -> Result<NodeId> {
        self.add_node(name, Op::Conv2d(cfg), vec![x])
    }
    /// `nn.BatchNorm2d`.
    pub fn batch_norm2d(&mut self, name: &str, x: NodeId, cfg: BnCfg) -> Result<NodeId> {
        self.add_node(name, Op::BatchNorm2d(cfg), vec![x])
    }
    /// `nn.BatchNorm1d` on `[N, F]`.
    pub fn batch_norm1d(&mut self, name: &str, x: NodeId, cfg: BnCfg) -> Result<NodeId> {
        self.add_node(name, Op::BatchNorm1d(cfg), vec![x])
    }
    /// `nn.Linear`.
    pub fn linear(&mut self, name: &str, x: NodeId, cfg: LinearCfg) -> Result<NodeId> {
        self.add_node(name, Op::Linear(cfg), vec![x])
    }
    /// `nn.ReLU`.
    pub fn relu(&mut self, name: &str, x: NodeId) -> Result<NodeId> {
        self.add_node(name, Op::ReLU, vec![x])
    }
    /// `nn.ReLU6`.
    pub fn relu6(&mut self, name: &str, x: NodeId) -> Result<NodeId> {
        self.add_node(name, Op::ReLU6, vec![x])
    }
    /// `nn.Hardswish`.
    pub fn hardswish(&mut self, name: &str, x: NodeId) -> Result<NodeId> {
        self.add_node(name, Op::Hardswish, vec![x])
    }
    /// Elementwise `a + b`.
    pub fn add(&mut self, name: &str, a: NodeId, b: NodeId) -> Result<NodeId> {
        self.add_node(name, Op::Add, vec![a, b])
    }
    /// `torch.cat(xs, axis)` (`axis` counts the batch axis: 1 is channels).
    pub fn concat(&mut self, name: &str, xs: &[NodeId], axis: usize) -> Result<NodeId> {
        self.add_node(name, Op::Concat { axis }, xs.to_vec())
    }
    /// `adaptive_avg_pool2d(x, 1)`.
    pub fn global_avg_pool(&mut self, name: &str, x: NodeId) -> Result<NodeId> {
        self.add_node(name, Op::GlobalAvgPool, vec![x])
    }
    /// `nn.AvgPool2d`.
    pub fn avg_pool2d(&mut self, name: &str, x: NodeId, cfg: PoolCfg) -> Result<NodeId> {
        self.add_node(name, Op::AvgPool2d(cfg), vec![x])
    }
    /// `nn.MaxPool2d`.
    pub fn max_pool2d(&mut self, name: &str, x: NodeId, cfg: PoolCfg) -> Result<NodeId> {
        self.add_node(name, Op::MaxPool2d(cfg), vec![x])
    }
    /// `torch.flatten(x, 1)`.
    pub fn flatten(&mut self, name: &str, x: NodeId) -> Result<NodeId> {
        self.add_node(name, Op::Flatten, vec![x])
    }
    /// `nn.Dropout(p)`.
    pub fn dropout(&mut self, name: &str, x: NodeId, p: f64) -> Result<NodeId> {
        self.add_node(name, Op::Dropout { p }, vec![x])
    }
    /// `nn.Identity`.
    pub fn identity(&mut self, name: &str, x: NodeId) -> Result<NodeId> {
        self.add_node(name, Op::Identity, vec![x])
    }

    /// Declare the graph's outputs (default: the last node).
    pub fn set_outputs(&mut self, outputs: &[NodeId]) -> Result<()> {
        if let Some(bad) = outputs.iter().find(|o| o.0 >= self.nodes.len()) {
            return Err(GraphError::Graph(format!(
                "output #{} does not exist",
                bad.0
            )));
        }
        self.outputs = outputs.to_vec();
        Ok(())
    }

    /// The output nodes.
    pub fn outputs(&self) -> Vec<NodeId> {
        if self.outputs.is_empty() {
            self.nodes
                .len()
                .checked_sub(1)
                .map(NodeId)
                .into_iter()
                .collect()
        } else {
            self.outputs.clone()
        }
    }
    /// The input nodes, in order.
    pub fn inputs(&self) -> Vec<NodeId> {
        self.ids()
            .filter(|&i| matches!(self.nodes[i.0].op, Op::Input { .. }))
            .collect()
    }
    /// All nodes, in topological order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    /// All node ids, in topological order.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> {
        (0..self.nodes.len()).map(NodeId)
    }
    /// A node.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0]
    }
    /// A node's per-sample output shape.
    pub fn shape(&self, id: NodeId) -> &[usize] {
        &self.shapes[id.0]
    }
    /// The node with this name (fused nodes are also found by the names of their parts that
    /// own parameters, e.g. a folded BN).
    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.by_name.get(name).copied()
    }
    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
    /// Whether the graph has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
    /// For each node, the nodes that consume it (a node used twice by one consumer is listed
    /// twice).
    pub fn consumers(&self) -> Vec<Vec<NodeId>> {
        let mut c = vec![Vec::new(); self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for inp in &n.inputs {
                c[inp.0].push(NodeId(i));
            }
        }
        c
    }

    /// Multiply-accumulates of one sample through the convolutions and linear layers.
    pub fn macs(&self) -> u64 {
        self.ids()
            .map(|id| {
                let out: u64 = self.shape(id).iter().product::<usize>() as u64;
                match &self.node(id).op {
                    Op::Conv2d(c) | Op::ConvBn { conv: c, .. } | Op::ConvAct { conv: c, .. } => {
                        out * (c.in_channels / c.groups * c.kernel[0] * c.kernel[1]) as u64
                    }
                    Op::Linear(l)
                    | Op::LinearAct { linear: l, .. }
                    | Op::LinearBn { linear: l, .. } => out * l.in_features as u64,
                    _ => 0,
                }
            })
            .sum()
    }
}

/// Kahn's algorithm, taking the lowest ready index first so ordered input stays ordered.
fn topo_order(nodes: &[Node]) -> Result<Vec<usize>> {
    let n = nodes.len();
    let mut indeg = vec![0usize; n];
    let mut users = vec![Vec::new(); n];
    for (i, node) in nodes.iter().enumerate() {
        for inp in &node.inputs {
            indeg[i] += 1;
            users[inp.0].push(i);
        }
    }
    let mut ready: std::collections::BTreeSet<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &u in &users[i] {
            indeg[u] -= 1;
            if indeg[u] == 0 {
                ready.insert(u);
            }
        }
    }
    if order.len() < n {
        let stuck: Vec<&str> = (0..n)
            .filter(|&i| indeg[i] > 0)
            .map(|i| nodes[i].name.as_str())
            .collect();
        return Err(GraphError::node(
            stuck[0],
            format!(
                "part of a cycle (nodes on or after cycles: {})",
                stuck.join(", ")
            ),
        ));
    }
    Ok(order)
}
