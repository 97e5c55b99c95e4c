//! The fusion pass: finds Conv+BN(+ReLU/ReLU6), Conv+ReLU(6), Linear+ReLU(6), Linear+BN1d,
//! BN+ReLU(6) and Add+ReLU(6) chains by pattern matching on the graph — no module lists.
//!
//! A chain fuses only when every intermediate result has exactly one consumer and is not a
//! graph output (otherwise the unfused value would still be needed). ReLU6 fuses as ReLU6.
//! The fused node takes the name of the chain's first node, and keeps its parts' parameter
//! names (a folded BN keeps `<bn name>.weight`, `.running_mean`, ...), so state dicts load
//! unchanged; eval-mode results are identical to the unfused graph's.
//!
//! ```
//! use qat_graph::{fuse, BnCfg, Conv2dCfg, Graph, Op};
//! # fn main() -> qat_graph::Result<()> {
//! let mut g = Graph::new();
//! let x = g.input("x", [3, 8, 8])?;
//! let x = g.conv2d("c.0", x, Conv2dCfg::new(3, 4, 3).bias(false))?;
//! let x = g.batch_norm2d("c.1", x, BnCfg::new(4))?;
//! g.relu6("c.2", x)?;
//! let f = fuse(&g)?;
//! assert_eq!(f.len(), 2);
//! assert_eq!(f.node(f.outputs()[0]).op.type_name(), "ConvBnReLU62d");
//! # Ok(()) }
//! ```

use crate::error::Result;
use crate::graph::Graph;
use crate::ir::{Act, FusedBn, Node, NodeId, Op};

/// The fused copy of `graph` (see the module docs).
pub fn fuse(graph: &Graph) -> Result<Graph> {
    let consumers = graph.consumers();
    let outputs = graph.outputs();
    // The sole consumer of `id`, if it has exactly one and is not an output.
    let sole_next = |id: usize| -> Option<usize> {
        (consumers[id].len() == 1 && !outputs.contains(&NodeId(id))).then(|| consumers[id][0].0)
    };
    let nodes = graph.nodes();
    let act_of = |id: usize| match nodes[id].op {
        Op::ReLU => Some(Act::ReLU),
        Op::ReLU6 => Some(Act::ReLU6),
        _ => None,
    };
    let next_act = |id: usize| sole_next(id).and_then(|j| act_of(j).map(|a| (j, a)));

    let mut new_of = vec![NodeId(usize::MAX); nodes.len()];
    let mut absorbed = vec![false; nodes.len()];
    let mut out: Vec<Node> = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        if absorbed[i] {
            continue;
        }
        let (op, parts) = match &node.op {
            Op::Conv2d(conv) => match sole_next(i).map(|j| (j, &nodes[j].op)) {
                Some((j, Op::BatchNorm2d(cfg))) => {
                    let bn = FusedBn {
                        name: nodes[j].name.clone(),
                        cfg: *cfg,
                    };
                    match next_act(j) {
                        Some((k, act)) => (
                            Op::ConvBn {
                                conv: *conv,
                                bn,
                                act: Some(act),
                            },
                            vec![j, k],
                        ),
                        None => (
                            Op::ConvBn {
                                conv: *conv,
                                bn,
                                act: None,
                            },
                            vec![j],
                        ),
                    }
                }
                _ => match next_act(i) {
                    Some((j, act)) => (Op::ConvAct { conv: *conv, act }, vec![j]),
                    None => (node.op.clone(), vec![]),
                },
            },
            Op::Linear(linear) => match sole_next(i).map(|j| (j, &nodes[j].op)) {
                Some((j, Op::BatchNorm1d(cfg))) => (
                    Op::LinearBn {
                        linear: *linear,
                        bn: FusedBn {
                            name: nodes[j].name.clone(),
                            cfg: *cfg,
                        },
                    },
                    vec![j],
                ),
                _ => match next_act(i) {
                    Some((j, act)) => (
                        Op::LinearAct {
                            linear: *linear,
                            act,
                        },
                        vec![j],
                    ),
                    None => (node.op.clone(), vec![]),
                },
            },
            Op::BatchNorm2d(bn) => match next_act(i) {
                Some((j, act)) => (Op::BnAct { bn: *bn, act }, vec![j]),
                None => (node.op.clone(), vec![]),
            },
            Op::Add => match next_act(i) {
                Some((j, act)) => (Op::AddAct { act }, vec![j]),
                None => (node.op.clone(), vec![]),
            },
            op => (op.clone(), vec![]),
        };
        let id = NodeId(out.len());
        new_of[i] = id;
        for p in parts {
            absorbed[p] = true;
            new_of[p] = id;
        }
        out.push(Node {
            name: node.name.clone(),
            op,
            inputs: node.inputs.iter().map(|j| new_of[j.0]).collect(),
        });
    }
    let outs = outputs.iter().map(|o| new_of[o.0]).collect();
    Graph::from_nodes(out, outs)
}
