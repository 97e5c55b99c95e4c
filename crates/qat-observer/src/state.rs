//! Observer state as named tensors (PyTorch's buffer names), and its validation on load.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use crate::{ObserverError, Result};

pub(crate) type State = HashMap<String, Tensor>;

fn invalid(observer: &'static str, msg: String) -> ObserverError {
    ObserverError::Invalid { observer, msg }
}

/// A 0-dim f32 tensor (PyTorch's per-tensor buffers are 0-dim).
pub(crate) fn scalar(v: f32) -> Result<Tensor> {
    Ok(Tensor::new(v, &Device::Cpu)?)
}

/// A 1-dim f32 tensor.
pub(crate) fn vector(v: &[f32]) -> Result<Tensor> {
    Ok(Tensor::from_slice(v, v.len(), &Device::Cpu)?)
}

/// Refuses a state whose names are not exactly `names`.
pub(crate) fn check_names(observer: &'static str, state: &State, names: &[&str]) -> Result<()> {
    for n in names {
        if !state.contains_key(*n) {
            return Err(invalid(observer, format!("state is missing `{n}`")));
        }
    }
    let mut extra: Vec<&str> = state
        .keys()
        .map(String::as_str)
        .filter(|k| !names.contains(k))
        .collect();
    if !extra.is_empty() {
        extra.sort_unstable();
        return Err(invalid(
            observer,
            format!("unexpected state entries {extra:?} (expected {names:?})"),
        ));
    }
    Ok(())
}

/// The values of a floating-point state tensor.
pub(crate) fn values(observer: &'static str, state: &State, name: &str) -> Result<Vec<f32>> {
    let t = &state[name];
    if !t.dtype().is_float() {
        return Err(invalid(
            observer,
            format!("state `{name}` must be floating point, got {:?}", t.dtype()),
        ));
    }
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// One value from a 0-dim (or one-element) state tensor.
pub(crate) fn one_value(observer: &'static str, state: &State, name: &str) -> Result<f32> {
    let t = &state[name];
    if t.rank() > 1 || t.elem_count() != 1 {
        return Err(invalid(
            observer,
            format!(
                "state `{name}` must hold one value, got shape {:?}",
                t.dims()
            ),
        ));
    }
    Ok(values(observer, state, name)?[0])
}

/// Checks a loaded `(min, max)` pair: both finite with `min <= max`, or the unobserved
/// `(+inf, -inf)`.
pub(crate) fn check_range(observer: &'static str, min: f32, max: f32) -> Result<()> {
    let unobserved = min == f32::INFINITY && max == f32::NEG_INFINITY;
    if unobserved || (min.is_finite() && max.is_finite() && min <= max) {
        Ok(())
    } else {
        Err(invalid(
            observer,
            format!("state holds an invalid range min_val={min}, max_val={max}"),
        ))
    }
}
