//! [`QatGraph::forward_traced`]: the fake-quant forward keeping every node's value, for
//! per-layer comparisons with the converted int8 model (whose values carry the same names,
//! see [`convert`](crate::convert())).

use candle_core::Tensor;

use crate::error::Result;
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
        let mut trace = Vec::with_capacity(self.graph().len() + 2);
        self.forward_core(xs, train, Some(&mut trace))?;
        Ok(trace)
    }
}
