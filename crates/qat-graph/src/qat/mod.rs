//! Quantization-aware execution of a fused graph: [`QatGraph`] (built by
//! [`prepare_qat`](crate::prepare_qat)), its fake-quant modules ([`FqModule`]) and the
//! BN-folding forward of QAT Conv+BN / Linear+BN ([`fold`]).

mod bias;
pub mod fold;
pub mod fq;
mod graph;
pub mod int_exact;
mod pool;
mod traced;

pub use fold::{batch_norm, folded_bn_act_forward, folded_bn_forward, BnStats, BnVars};
pub use fq::FqModule;
pub use graph::{Boundary, QatGraph, QatNode};
pub use int_exact::{IntData, IntExactPlan, IntValue};
