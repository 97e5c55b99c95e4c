//! Checkpoints of a run folder: the fp32 `state_dict` (PyTorch names), the QAT state
//! (parameters, BN buffers and every fake-quant's qparams / observer state) and, when
//! converted, the int8 model file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use qat_graph::{prepare_qat_module, GraphModule, QatGraph};

use super::config::PipelineConfig;
use super::error::{PipelineError, Result};

/// `fp32.safetensors`: the trained float model.
pub const FP32: &str = "fp32.safetensors";
/// `qat.safetensors`: the fine-tuned QAT model's state.
pub const QAT: &str = "qat.safetensors";
/// `int8.safetensors`: the converted model ([`qat_runtime::QuantizedModel::save`]).
pub const INT8: &str = "int8.safetensors";

/// A fresh float model of the run's architecture (seeded initialisation).
pub fn new_module(cfg: &PipelineConfig) -> Result<GraphModule> {
    Ok(GraphModule::new(
        crate::build(&cfg.model())?,
        cfg.seed,
        &Device::Cpu,
    )?)
}

/// An independent copy of `m` (its own variables: training the copy leaves `m` alone).
pub fn copy_module(cfg: &PipelineConfig, m: &GraphModule) -> Result<GraphModule> {
    let c = new_module(cfg)?;
    c.load_state_dict(&m.state_dict())?;
    Ok(c)
}

/// Save the float model.
pub fn save_fp32(m: &GraphModule, dir: &Path) -> Result<PathBuf> {
    let p = dir.join(FP32);
    m.save_safetensors(&p)?;
    Ok(p)
}

/// Load the float model saved by [`save_fp32`].
pub fn load_fp32(cfg: &PipelineConfig, dir: &Path) -> Result<GraphModule> {
    let m = new_module(cfg)?;
    m.load_safetensors(dir.join(FP32))?;
    Ok(m)
}

/// Save the QAT state.
pub fn save_qat(q: &QatGraph, dir: &Path) -> Result<PathBuf> {
    let p = dir.join(QAT);
    candle_core::safetensors::save(&q.state()?, &p)?;
    Ok(p)
}

/// Rebuild the QAT model saved by [`save_qat`]: prepare a fresh float model with the run's
/// qconfig, then load every variable and fake-quant state (strict: a missing entry is an
/// `Err`). BN statistics are frozen and observers off, as at the end of QAT.
pub fn load_qat(cfg: &PipelineConfig, dir: &Path) -> Result<QatGraph> {
    let p = dir.join(QAT);
    let st: HashMap<String, Tensor> = candle_core::safetensors::load(&p, &Device::Cpu)
        .map_err(|e| PipelineError::Invalid(format!("reading {}: {e}", p.display())))?;
    let q = prepare_qat_module(new_module(cfg)?, &cfg.qconfig.qconfig()?)?;
    {
        let vars = q
            .module()
            .varmap()
            .data()
            .lock()
            .expect("VarMap lock poisoned");
        let missing: Vec<&String> = vars.keys().filter(|k| !st.contains_key(*k)).collect();
        if !missing.is_empty() {
            return Err(PipelineError::Invalid(format!(
                "{}: missing {} variables, e.g. {}",
                p.display(),
                missing.len(),
                missing[0]
            )));
        }
        for (k, v) in vars.iter() {
            v.set(&st[k].to_dtype(v.dtype())?)?;
        }
    }
    q.load_fake_quant_state(&st)?;
    q.freeze_bn_stats();
    q.enable_observers(false);
    Ok(q)
}
