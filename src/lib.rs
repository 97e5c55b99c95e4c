//! # candle-qat
//!
//! Quantization-aware training on [candle](https://github.com/huggingface/candle), and int8
//! inference on our own SIMD CPU kernels. This crate re-exports the workspace's crates:
//!
//! * [`core`] (`qat-core`): the numeric spec — dtypes, schemes, qparams, (fake-)quantize,
//!   requantize.
//! * [`observer`] (`qat-observer`): observers that pick qparams from data.
//! * [`fakequant`] (`qat-fakequant`): fake-quant candle ops with straight-through gradients and
//!   the `FakeQuantize` module.
//! * [`graph`] (`qat-graph`): the model IR, fast training ops, `fuse`, `QConfig`,
//!   `prepare_qat` / `prepare`, SGD and schedules.
//! * [`kernels`] (`qat-kernels`): int8 SIMD CPU kernels with runtime ISA dispatch.
//! * [`runtime`] (`qat-runtime`): the int8 `QuantizedModel`, its execution and file format.
//! * [`data`] (`qat-data`): MNIST / Fashion-MNIST loading with checksums.
//!
//! Most users want the [`prelude`].

pub use qat_core as core;
pub use qat_data as data;
pub use qat_fakequant as fakequant;
pub use qat_graph as graph;
pub use qat_kernels as kernels;
pub use qat_observer as observer;
pub use qat_runtime as runtime;

/// The names a typical program uses.
pub mod prelude {
    pub use qat_core::{
        choose_qparams, dequantize, quantize, QDType, QParams, QScheme, TensorQParams,
    };
    pub use qat_graph::{
        fuse, prepare, prepare_qat, prepare_qat_module, CosineWarmup, Graph, GraphModule, QConfig,
        QatGraph, Sgd, SgdConfig,
    };
    pub use qat_graph::{convert, convert_with, RunTensor};
    pub use qat_runtime::{ModelBuilder, QuantizedModel};
}
