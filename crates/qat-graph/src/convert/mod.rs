//! [`convert`]: a trained [`QatGraph`] to a real int8 [`QuantizedModel`].
//!
//! [`lower`] computes each node's integer form (BN folded with the running statistics,
//! weights quantized with the weight fake-quant's current qparams, output qparams and clamps
//! from the activation fake-quants); [`plan`] turns the lowered nodes into the runtime's ops.
//!
//! # Naming contract
//!
//! The runtime value produced for graph node `n` is named `n.name` (a fused node's name, e.g.
//! `features.1.conv.0`); the model input is named like the graph input node. Inserted ops:
//! `<node>.quant` (a float node's quant stub), `<node>.dequant` (a quantized value read by a
//! float consumer, and the final output's dequantize), `<node>.pre_act` (a float op before its
//! fused float ReLU), `<input>.clamp` / `<node>.quant.raw` (see below). Dropout / Identity
//! produce no op: they name their input's value. [`Conversion::values`] maps every node to
//! the value holding what [`QatGraph::forward_traced`] reports for it.
//!
//! # Choices
//!
//! * A ReLU / ReLU6 standing alone after a quantized value runs as an exact clamp: an
//!   identity depthwise 1×1 convolution (weight 1, weight scale 1, output qparams = input
//!   qparams, so the requantization multiplier is exactly 1) with the ReLU's bounds. No
//!   folding into the producer, so it is right whatever else reads the producer.
//! * The same identity clamp follows the model input (`<input>.clamp`) and a quant stub
//!   (`<node>.quant`, after `<node>.quant.raw`) when the fake-quant range is narrower than
//!   `[0, 255]` (`reduce_range`), since quantizing clamps to `[0, 255]` only.
//! * Float islands use the runtime's float ops: Linear / LinearBn (+ReLU), 1×1 stride-1
//!   unpadded Conv / ConvBn (+ReLU) with BN folded in float, ReLU, Hardswish, Add (+ReLU),
//!   Flatten, Dropout, Identity. Anything else left in float is an `Err` naming the node.
//! * Weight integers `q - zp` that do not fit i8 (a weight fake-quant with a nonzero zero
//!   point; PyTorch's fused per-channel symmetric observer gives one to every channel whose
//!   weights share a sign) are refit at twice the scale by default, half a step from the
//!   fake-quant weight on odd integers ([`AsymmetricWeights`]); `Refuse` makes them an `Err`.
//! * One graph input and one graph output (the runtime's model shape); the input must be
//!   quantized and read by quantized consumers only.
//!
//! ```no_run
//! # fn main() -> qat_graph::Result<()> {
//! # let graph = qat_graph::Graph::new();
//! # let x = candle_core::Tensor::zeros((1, 1, 1, 1), candle_core::DType::F32, &candle_core::Device::Cpu)?;
//! use qat_graph::{convert, prepare_qat, QConfig, RunTensor};
//! let qat = prepare_qat(&graph, &QConfig::default_qat())?;
//! // ... train, then:
//! qat.freeze_bn_stats();
//! qat.enable_observers(false);
//! let int8 = convert(&qat)?;
//! let logits = int8.run_tensor(&x)?;
//! # Ok(()) }
//! ```

pub mod lower;
mod params;
pub mod plan;
mod tensor;
pub(crate) mod weighted;

pub use lower::{
    lower_node, lower_node_with, value_q, ActQ, AsymmetricWeights, LowerOptions, Lowered,
    LoweredWeighted, WeightedKind,
};
pub use plan::{lower_graph, lower_graph_with, Conversion};
pub use tensor::RunTensor;

use qat_runtime::{ModelOptions, QuantizedModel};

use crate::error::{GraphError, Result};
use crate::qat::QatGraph;

/// Convert a trained QAT graph to an int8 model packed for this CPU (see the module docs).
/// Freeze the BN statistics and switch the observers off first so the QAT eval forward is the
/// reference the int8 model reproduces; `Err` for a graph whose observers never saw data.
pub fn convert(qat: &QatGraph) -> Result<QuantizedModel> {
    convert_with(qat, ModelOptions::default())
}

/// [`convert`] with explicit runtime options (forced ISA, threads).
pub fn convert_with(qat: &QatGraph, options: ModelOptions) -> Result<QuantizedModel> {
    convert_with_options(qat, options, LowerOptions::default())
}

/// [`convert`] with explicit runtime and lowering options (e.g. refuse, rather than refit,
/// weights whose zero point is not 0: [`AsymmetricWeights`]).
pub fn convert_with_options(
    qat: &QatGraph,
    options: ModelOptions,
    lower: LowerOptions,
) -> Result<QuantizedModel> {
    let c = lower_graph_with(qat, &lower)?;
    let output = c.output.clone();
    c.builder
        .build_with(&output, options)
        .map_err(|e| GraphError::node(&output, e.to_string()))
}
