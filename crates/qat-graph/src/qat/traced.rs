//! [`QatGraph::forward_traced`]: the fake-quant forward keeping every node's value, for
//! per-layer comparisons with the converted int8 model (whose values carry the same names,
//! see [`convert`](crate::convert())).

use candle_core::{DType, Tensor};

use crate::error::{GraphError, Result};
use crate::ir::{NodeId, Op};
use crate::qat::QatGraph;

impl QatGraph {
    /// Run like [`QatGraph::forward_all`] and return every node's value, in graph order, as
    /// `(name, value)`: the value its consumers read (after its `activation_post_process`
    /// for a quantized node). A float node with a quant stub also gives `<name>.quant`, the
    /// stub's fake-quantized value that its quantized consumers read.
    ///
    /// Observers that are on update as in any forward; switch them off first
    /// ([`QatGraph::enable_observers`]) to trace without changing qparams.
    pub fn forward_traced(&self, xs: &[&Tensor], train: bool) -> Result<Vec<(String, Tensor)>> {
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
        let mut trace = Vec::with_capacity(g.len() + 2);
        let mut next_input = 0;
        for (i, node) in g.nodes().iter().enumerate() {
            let q = &self.nodes()[i];
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
                let weighted = matches!(
                    node.op,
                    Op::Conv2d(_)
                        | Op::ConvAct { .. }
                        | Op::ConvBn { .. }
                        | Op::Linear(_)
                        | Op::LinearAct { .. }
                        | Op::LinearBn { .. }
                );
                let r = if q.config.is_some() && weighted {
                    self.qat_node(i, &ins, train)
                } else {
                    self.module().eval_node(i, &ins, train)
                };
                r.map_err(|e| match e {
                    GraphError::Candle(e) => GraphError::node(&node.name, e.to_string()),
                    e => e,
                })?
            };
            match &q.output_fq {
                Some(fq) if q.is_quant_stub => {
                    let s = fq.forward(&y)?;
                    trace.push((node.name.clone(), y.clone()));
                    trace.push((format!("{}.quant", node.name), s.clone()));
                    stub_vals[i] = Some(s);
                    vals[i] = Some(y);
                }
                Some(fq) => {
                    let v = fq.forward(&y)?;
                    trace.push((node.name.clone(), v.clone()));
                    vals[i] = Some(v);
                }
                None => {
                    trace.push((node.name.clone(), y.clone()));
                    vals[i] = Some(y);
                }
            }
        }
        Ok(trace)
    }
}
