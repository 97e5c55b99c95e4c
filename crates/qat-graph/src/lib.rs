//! Model IR, fast CPU training ops, automatic fusion and QAT preparation for candle-qat.

pub mod ops;

pub mod compare;
pub mod convert;
pub mod error;
pub mod exec;
pub mod fuse;
pub mod graph;
pub mod ir;
pub mod optim;
pub mod params;
pub mod prepare;
pub mod prims;
pub mod qat;
pub mod qconfig;
pub mod schedule;
mod shape;
mod state_dict;

pub use convert::{convert, convert_with, RunTensor};
pub use error::{GraphError, Result};
pub use exec::GraphModule;
pub use fuse::fuse;
pub use graph::Graph;
pub use ir::{Act, BnCfg, Conv2dCfg, FusedBn, LinearCfg, Node, NodeId, Op, PoolCfg};
pub use optim::{Sgd, SgdConfig, WeightDecay};
pub use params::{seeded_rng, ParamKind, ParamSpec};
pub use prepare::{prepare, prepare_qat, prepare_qat_module};
pub use prims::OpsPath;
pub use qat::QatGraph;
pub use qconfig::QConfig;
pub use schedule::CosineWarmup;
