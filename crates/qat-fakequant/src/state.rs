//! Module state as named tensors, with PyTorch's buffer names.

use std::collections::HashMap;

use candle_core::{bail, DType, Device, Result, Tensor};

/// Named tensors, as in a PyTorch `state_dict` (names relative to the module).
pub type State = HashMap<String, Tensor>;

/// Prefix of the observer's entries (PyTorch's `activation_post_process` submodule).
pub const OBSERVER_PREFIX: &str = "activation_post_process.";

pub(crate) fn flag(on: bool, dtype: DType) -> Result<Tensor> {
    Tensor::new(&[on as u8], &Device::Cpu)?.to_dtype(dtype)
}

/// A one-element integer (or float) flag tensor as a bool.
pub(crate) fn read_flag(module: &str, st: &State, name: &str) -> Result<bool> {
    let t = get(module, st, name)?;
    if t.elem_count() != 1 {
        bail!(
            "{module}: state `{name}` must hold one value, got shape {:?}",
            t.dims()
        )
    }
    let v = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?[0];
    match v {
        0.0 => Ok(false),
        1.0 => Ok(true),
        _ => bail!("{module}: state `{name}` must be 0 or 1, got {v}"),
    }
}

pub(crate) fn get<'a>(module: &str, st: &'a State, name: &str) -> Result<&'a Tensor> {
    match st.get(name) {
        Some(t) => Ok(t),
        None => bail!("{module}: state is missing `{name}`"),
    }
}

/// The scale / zero-point pair of a state, checked: same length, scales finite and > 0,
/// integer zero points inside `[quant_min, quant_max]`.
pub(crate) fn read_qparams(
    module: &str,
    st: &State,
    quant_min: i32,
    quant_max: i32,
) -> Result<(Vec<f32>, Vec<i32>)> {
    let values = |name: &str| -> Result<Vec<f64>> {
        let t = get(module, st, name)?;
        if t.rank() > 1 {
            bail!(
                "{module}: state `{name}` must be 1-D, got shape {:?}",
                t.dims()
            )
        }
        t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()
    };
    let (s, z) = (values("scale")?, values("zero_point")?);
    if s.len() != z.len() || s.is_empty() {
        bail!(
            "{module}: state `scale` has {} values and `zero_point` {} (need the same, >= 1)",
            s.len(),
            z.len()
        )
    }
    for (i, (&sv, &zv)) in s.iter().zip(&z).enumerate() {
        crate::check::scale(module, &format!("state scale[{i}]"), sv as f32)?;
        if zv.fract() != 0.0 {
            bail!("{module}: state zero_point[{i}] = {zv} is not an integer")
        }
        crate::check::zero_point(
            module,
            &format!("state zero_point[{i}]"),
            zv as i64,
            quant_min,
            quant_max,
        )?;
    }
    Ok((
        s.iter().map(|&v| v as f32).collect(),
        z.iter().map(|&v| v as i32).collect(),
    ))
}

/// The entries under [`OBSERVER_PREFIX`], with the prefix removed; refuses names that are
/// neither the module's own (`own`) nor the observer's.
pub(crate) fn split_observer(module: &str, st: &State, own: &[&str]) -> Result<State> {
    let mut obs = State::new();
    for (k, v) in st {
        if let Some(rest) = k.strip_prefix(OBSERVER_PREFIX) {
            obs.insert(rest.to_string(), v.clone());
        } else if !own.contains(&k.as_str()) {
            bail!("{module}: unexpected state entry `{k}`")
        }
    }
    Ok(obs)
}

/// `scale` (f32) and `zero_point` (i32) tensors.
pub(crate) fn qparams_tensors(st: &mut State, scale: &[f32], zero_point: &[i32]) -> Result<()> {
    let dev = Device::Cpu;
    st.insert(
        "scale".into(),
        Tensor::from_slice(scale, scale.len(), &dev)?,
    );
    st.insert(
        "zero_point".into(),
        Tensor::from_slice(zero_point, zero_point.len(), &dev)?,
    );
    Ok(())
}
