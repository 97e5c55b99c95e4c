//! Reading a trained graph's parameters for conversion: the VarMap lookup and the finiteness
//! check both the quantized lowering ([`weighted`](super::weighted)) and the float islands
//! ([`plan`](super::plan)) need, so a NaN weight or BN statistic is refused with the same
//! words on either path.

use candle_core::{DType, Tensor, Var};

use crate::error::{GraphError, Result};
use crate::qat::QatGraph;

/// Parameter `name` (`<node>.<param>`) of `qat`'s VarMap.
pub(super) fn var(qat: &QatGraph, name: &str) -> Result<Var> {
    let vars = qat
        .module()
        .varmap()
        .data()
        .lock()
        .map_err(|_| GraphError::Graph("VarMap lock poisoned".into()))?;
    vars.get(name)
        .cloned()
        .ok_or_else(|| GraphError::node(name, "parameter missing from the VarMap"))
}

/// Every element of `t`, row-major, as f32.
pub(super) fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// `Err` naming `node`, `what` and the first non-finite element of `v`.
pub(super) fn finite(node: &str, what: &str, v: &[f32]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(GraphError::node(
            node,
            format!("{what} [{i}] = {} is not finite", v[i]),
        )),
        None => Ok(()),
    }
}

/// Parameter `<node>.<param>` as f32, every element finite (errors name the node and the
/// parameter).
pub(super) fn read(qat: &QatGraph, node: &str, param: &str) -> Result<Vec<f32>> {
    let v = to_vec(var(qat, &format!("{node}.{param}"))?.as_tensor())?;
    finite(node, param, &v)?;
    Ok(v)
}
