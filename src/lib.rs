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
//!
//! # The flow
//!
//! Build a float graph, fuse and prepare it for QAT (no manual surgery), train with fake
//! quantization, freeze, convert to int8, run. `examples/qat_flow.rs` is the same flow with a
//! learnable toy task; the MobileNetV2 main job is `-p mobilenet-v2 --example
//! qat_fashion_mnist`.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_qat::graph::{BnCfg, Conv2dCfg};
//! use candle_qat::prelude::*;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut g = Graph::new();
//! let x = g.input("x", [1, 8, 8])?;
//! let x = g.conv2d("conv", x, Conv2dCfg::new(1, 4, 3).padding(1).bias(false))?;
//! let x = g.batch_norm2d("bn", x, BnCfg::new(4))?;
//! g.relu6("act", x)?;
//!
//! let qat = prepare_qat(&fuse(&g)?, &QConfig::default_qat())?;
//! let mut opt = Sgd::new(qat.trainable(), SgdConfig { lr: 0.01, ..SgdConfig::default() })?;
//! let images = Tensor::randn(0f32, 1.0, (8, 1, 8, 8), &Device::Cpu)?;
//! for _ in 0..3 {
//!     let loss = qat.forward_t(&images, true)?.sqr()?.mean_all()?; // your loss here
//!     opt.backward_step(&loss)?;
//! }
//! qat.freeze_bn_stats();
//! qat.enable_observers(false);
//!
//! let int8 = convert(&qat)?; // BN folded, weights quantized and packed for this CPU
//! let y = int8.run_tensor(&images)?; // f32 in, f32 out, int8 inside
//! assert_eq!(y.dims(), &[8, 4, 8, 8]);
//! assert_eq!(y.dtype(), DType::F32);
//! # Ok(()) }
//! ```

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
    pub use qat_graph::{convert, convert_with, RunTensor};
    pub use qat_graph::{
        fuse, prepare, prepare_qat, prepare_qat_module, CosineWarmup, Graph, GraphModule, QConfig,
        QatGraph, Sgd, SgdConfig,
    };
    pub use qat_runtime::{ModelBuilder, QuantizedModel};
}
