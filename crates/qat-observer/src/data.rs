//! Reading an observed tensor as `f32` values, without a copy when it already is a
//! contiguous f32 CPU tensor.

use candle_core::{DType, Storage, Tensor};

use crate::{ObserverError, Result};

/// Runs `f` on the tensor's values in row-major order.
///
/// A contiguous f32 CPU tensor is read in place (under its storage read lock); other float
/// dtypes (f16, bf16, f64, ...) are converted to f32 first, other devices or strided layouts
/// are copied. Integer tensors and empty tensors are refused.
pub(crate) fn with_f32<R>(
    x: &Tensor,
    observer: &'static str,
    f: impl FnOnce(&[f32]) -> Result<R>,
) -> Result<R> {
    if x.elem_count() == 0 {
        return Err(ObserverError::Empty { observer });
    }
    match x.dtype() {
        DType::U8 | DType::U32 | DType::I16 | DType::I32 | DType::I64 => {
            return Err(ObserverError::Invalid {
                observer,
                msg: format!(
                    "cannot observe an integer tensor ({:?}): observers watch floating-point values",
                    x.dtype()
                ),
            });
        }
        DType::F32 => {}
        _ => {
            let y = x.to_dtype(DType::F32)?;
            return with_f32(&y, observer, f);
        }
    }
    {
        let (storage, layout) = x.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            let all = cpu.as_slice::<f32>()?;
            return f(&all[start..end]);
        }
    }
    let v = x.flatten_all()?.to_vec1::<f32>()?;
    f(&v)
}
