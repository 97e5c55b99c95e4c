//! Loading and saving parameters as safetensors under PyTorch `state_dict` names, so a
//! torchvision checkpoint converted to safetensors (`save_file(model.state_dict(), ...)`)
//! loads directly.
//!
//! Loading is strict and all-or-nothing: missing, unexpected and shape-mismatched keys are
//! collected and reported together in one [`GraphError::StateDict`], and nothing is written
//! unless every key matches. Float tensors of any float dtype are converted to f32;
//! `num_batches_tracked` is stored as i64 like PyTorch.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Tensor};

use crate::error::{GraphError, Result};
use crate::exec::{var_tensors, GraphModule};

impl GraphModule {
    /// The state dict: every parameter and buffer of the graph, by PyTorch name.
    pub fn state_dict(&self) -> HashMap<String, Tensor> {
        let all = var_tensors(self.varmap());
        self.param_specs()
            .iter()
            .map(|s| (s.name.clone(), all[&s.name].clone()))
            .collect()
    }

    /// Load a state dict (strict: see the module docs).
    pub fn load_state_dict(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let specs = self.param_specs();
        let wanted: BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        let mut missing = Vec::new();
        let mut mismatched = Vec::new();
        for s in specs {
            match tensors.get(&s.name) {
                None => missing.push(s.name.clone()),
                Some(t) if t.dims() != s.shape.as_slice() => mismatched.push(format!(
                    "{}: expected {:?}, found {:?}",
                    s.name,
                    s.shape,
                    t.dims()
                )),
                Some(t) if s.dtype() == DType::F32 && !t.dtype().is_float() => mismatched.push(
                    format!("{}: expected a float tensor, found {:?}", s.name, t.dtype()),
                ),
                Some(_) => {}
            }
        }
        let mut unexpected: Vec<String> = tensors
            .keys()
            .filter(|k| !wanted.contains(k.as_str()))
            .cloned()
            .collect();
        unexpected.sort();
        if !missing.is_empty() || !unexpected.is_empty() || !mismatched.is_empty() {
            return Err(GraphError::StateDict {
                missing,
                unexpected,
                mismatched,
            });
        }
        let data = self.varmap().data().lock().expect("VarMap lock poisoned");
        for s in specs {
            let t = tensors[&s.name]
                .to_device(self.device())?
                .to_dtype(s.dtype())?;
            data[&s.name].set(&t)?;
        }
        Ok(())
    }

    /// Load a safetensors file holding exactly the graph's state dict.
    pub fn load_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        self.load_safetensors_prefixed(path, "")
    }

    /// Load the entries of a safetensors file whose names start with `prefix` (stripped), e.g.
    /// `"fp32/"` for a file that holds several state dicts; other entries are ignored.
    pub fn load_safetensors_prefixed(&self, path: impl AsRef<Path>, prefix: &str) -> Result<()> {
        let path = path.as_ref();
        let all = candle_core::safetensors::load(path, self.device()).map_err(|e| {
            GraphError::Invalid(format!("reading safetensors {}: {e}", path.display()))
        })?;
        let tensors: HashMap<String, Tensor> = all
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v)))
            .collect();
        self.load_state_dict(&tensors)
    }

    /// Save the state dict as safetensors (PyTorch names and dtypes).
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        Ok(candle_core::safetensors::save(&self.state_dict(), path)?)
    }
}
