//! [`RunTensor`]: run a [`QuantizedModel`] on a candle [`Tensor`].

use candle_core::{DType, Tensor};
use qat_runtime::QuantizedModel;

use crate::error::{GraphError, Result};

/// Run an int8 model on candle tensors (f32 in, f32 out, int8 inside).
///
/// ```no_run
/// # fn main() -> qat_graph::Result<()> {
/// use qat_graph::RunTensor;
/// let model = qat_runtime::QuantizedModel::load("mnv2.int8.safetensors")
///     .map_err(|e| qat_graph::GraphError::Invalid(e.to_string()))?;
/// let x = candle_core::Tensor::zeros((8, 1, 28, 28), candle_core::DType::F32, &candle_core::Device::Cpu)?;
/// let logits = model.run_tensor(&x)?; // [8, 10]
/// # Ok(()) }
/// ```
pub trait RunTensor {
    /// `x`: f32 on the CPU, `[N, C, H, W]` with `[C, H, W]` the model's input shape (or
    /// `[N, F]` for an input of shape `[F, 1, 1]`), `N > 0`. Returns f32 `[N, C]` when the
    /// output is `[C, 1, 1]` (logits), else `[N, C, H, W]`. Wrong dtype, device, rank or
    /// shape is an `Err` saying what was expected.
    fn run_tensor(&self, x: &Tensor) -> Result<Tensor>;
}

impl RunTensor for QuantizedModel {
    fn run_tensor(&self, x: &Tensor) -> Result<Tensor> {
        let bad = |m: String| GraphError::Invalid(format!("run_tensor: {m}"));
        if !x.device().is_cpu() {
            return Err(bad(format!(
                "the int8 model runs on the CPU; input is on {:?}",
                x.device().location()
            )));
        }
        if x.dtype() != DType::F32 {
            return Err(bad(format!("expects f32 input, got {:?}", x.dtype())));
        }
        let s = self.input().shape;
        let dims = x.dims();
        let ok = match dims {
            [n, c, h, w] => *n > 0 && (*c, *h, *w) == (s.c, s.h, s.w),
            [n, f] => *n > 0 && (*f, 1, 1) == (s.c, s.h, s.w),
            _ => false,
        };
        if !ok {
            return Err(bad(format!(
                "expects input [N>0, {}, {}, {}], got {dims:?}",
                s.c, s.h, s.w
            )));
        }
        let n = dims[0];
        let v = x.flatten_all()?.to_vec1::<f32>()?;
        let out = self.run(&v, n).map_err(|e| bad(format!("runtime: {e}")))?;
        let (o, _) = self.output_shape();
        let t = if o.h == 1 && o.w == 1 {
            Tensor::from_vec(out, (n, o.c), x.device())?
        } else {
            Tensor::from_vec(out, (n, o.c, o.h, o.w), x.device())?
        };
        Ok(t)
    }
}
