//! `prepare_qat` / `prepare`: turn a float graph into a [`QatGraph`] — no model surgery.
//!
//! The graph is fused first (fusing a fused graph changes nothing). Then, for each node:
//! a quantized conv / linear gets `<node>.weight_fake_quant`; a quantized node whose op
//! produces new qparams (conv, linear, BN, Add, Concat, Hardswish, the model input, every
//! fused op) gets `<node>.activation_post_process` on its output, while ops that keep their
//! input's qparams (ReLU, pools, Flatten, Dropout, Identity) get none (PyTorch's eager
//! rules: an Add's two inputs are requantized to its one output fake-quant). Unlike
//! PyTorch, a quantized average pool's mean is rounded back onto its input's grid (its
//! input's fake-quant, without observing), because that is what the int8 pool computes. A float node
//! (qconfig `None`) whose output feeds a quantized node gets a quant stub on those edges;
//! a quantized value entering a float node is dequantized (the identity in simulation).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use qat_graph::{prepare_qat, Conv2dCfg, BnCfg, Graph, QConfig};
//! # fn main() -> qat_graph::Result<()> {
//! let mut g = Graph::new();
//! let x = g.input("x", [3, 8, 8])?;
//! let x = g.conv2d("c.0", x, Conv2dCfg::new(3, 4, 3).padding(1).bias(false))?;
//! let x = g.batch_norm2d("c.1", x, BnCfg::new(4))?;
//! g.relu6("c.2", x)?;
//! let q = prepare_qat(&g, &QConfig::default_qat())?;
//! assert_eq!(
//!     q.fake_quant_names(),
//!     ["x.activation_post_process", "c.0.weight_fake_quant", "c.0.activation_post_process"]
//! );
//! let y = q.forward_t(&Tensor::ones((2, 3, 8, 8), candle_core::DType::F32, &Device::Cpu)?, true)?;
//! assert_eq!(y.dims(), &[2, 4, 8, 8]);
//! # Ok(()) }
//! ```

use candle_core::Device;

use crate::error::Result;
use crate::exec::GraphModule;
use crate::graph::Graph;
use crate::qat::QatGraph;
use crate::qconfig::QConfig;

/// Prepare `graph` for QAT with fresh parameters (seed 0, CPU); see the module docs. Use
/// [`prepare_qat_module`] to keep trained float parameters.
pub fn prepare_qat(graph: &Graph, qconfig: &QConfig) -> Result<QatGraph> {
    prepare_qat_module(GraphModule::new(graph.clone(), 0, &Device::Cpu)?, qconfig)
}

/// Prepare a float module for QAT; the result shares its `VarMap` (training one trains both).
pub fn prepare_qat_module(module: GraphModule, qconfig: &QConfig) -> Result<QatGraph> {
    QatGraph::new(module.fused()?, qconfig)
}

/// Prepare a float module for post-training quantization: the same observers and places as
/// [`prepare_qat_module`], with every fake quantization off while calibrating
/// ([`QatGraph::calibrate`]). Specs of kind
/// [`FakeQuantKind::ObserveOnly`](crate::qconfig::FakeQuantKind::ObserveOnly) stay off even if
/// fake quantization is switched on later.
pub fn prepare(module: GraphModule, qconfig: &QConfig) -> Result<QatGraph> {
    let q = prepare_qat_module(module, qconfig)?;
    q.enable_fake_quant(false);
    Ok(q)
}
