//! `convert`: a trained [`QatGraph`](crate::QatGraph) to a real int8
//! [`QuantizedModel`](qat_runtime::QuantizedModel).
//!
//! [`lower`] computes each node's integer form (BN folded, weights quantized with the weight
//! fake-quant's current qparams, output qparams and clamps from the activation fake-quants).

pub mod lower;

pub use lower::{lower_node, value_q, ActQ, Lowered, LoweredWeighted, WeightedKind};
