//! Stage 4: convert the QAT model to a real int8 [`QuantizedModel`], evaluate it, compare it
//! with its own fake-quant model (top-1 agreement on the test images, per-layer agreement on
//! a few batches), time it, and save it.

use std::path::Path;

use candle_core::Tensor;
use qat_data::Loader;
use qat_graph::compare::{compare_batches, CompareReport};
use qat_graph::qat::IntExactPlan;
use qat_graph::{convert_with, QatGraph, RunTensor};
use qat_runtime::{ModelOptions, QuantizedModel};
use serde::{Deserialize, Serialize};

use super::checkpoint::INT8;
use super::config::PipelineConfig;
use super::error::{io, Result};
use super::eval::{agreement, evaluate, EvalResult};
use super::qat::eval_frozen;
use super::report::Latency;

/// Images the per-layer comparison runs on (it traces every layer of both models).
const COMPARE_IMAGES: usize = 200;

/// The int8 stage's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Int8Metrics {
    /// The converted QAT model on the test images.
    pub test: EvalResult,
    /// The QAT fake-quant model on the same images (observers off, BN frozen).
    pub fake_quant: EvalResult,
    /// Share of test images where int8 and fake-quant predict the same class.
    pub top1_agreement: f64,
    /// The QAT graph's integer-exact evaluation (the int8 arithmetic simulated in candle,
    /// independent of the SIMD kernels) on the same images.
    #[serde(default)]
    pub integer_exact: Option<EvalResult>,
    /// Share of test images where int8 and the integer-exact evaluation agree (1.0 unless
    /// the kernels or `convert` are wrong).
    #[serde(default)]
    pub integer_exact_agreement: Option<f64>,
    /// Per-layer fake-quant ⇄ int8 agreement on the first test images.
    pub compare: CompareReport,
    /// `run` latency of the int8 model (the run's threads).
    pub latency: Latency,
    /// Size of `int8.safetensors`.
    pub model_bytes: u64,
    /// The ISA the model was packed for.
    pub isa: String,
}

/// Convert `q` with the run's threads.
pub fn convert_model(cfg: &PipelineConfig, q: &QatGraph) -> Result<QuantizedModel> {
    Ok(convert_with(
        q,
        ModelOptions {
            threads: cfg.threads,
            ..ModelOptions::default()
        },
    )?)
}

/// Evaluate an int8 model on a loader.
pub fn evaluate_int8(model: &QuantizedModel, test: &Loader) -> Result<EvalResult> {
    evaluate(test, |x| Ok(model.run_tensor(x)?))
}

/// Run the stage on a trained QAT graph (BN frozen, observers off); saves `int8.safetensors`
/// into `dir`.
pub fn run_int8(
    cfg: &PipelineConfig,
    q: &QatGraph,
    test: &Loader,
    dir: &Path,
    latency: impl Fn(&dyn Fn(&Tensor) -> Result<()>) -> Result<Latency>,
) -> Result<Int8Metrics> {
    let model = convert_model(cfg, q)?;
    let int8 = evaluate_int8(&model, test)?;
    let fake_quant = eval_frozen(q, test)?;
    let top1_agreement = agreement(&int8, &fake_quant);
    let plan = IntExactPlan::from_model(&model);
    let integer_exact = evaluate(test, |x| Ok(plan.forward_shaped(q, x)?))?;
    let integer_exact_agreement = Some(agreement(&int8, &integer_exact));
    let (rows, cols) = (test.dataset().rows, test.dataset().cols);
    let mut batches = Vec::new();
    let mut n = 0;
    for b in test.epoch(0) {
        if n >= COMPARE_IMAGES {
            break;
        }
        n += b.len();
        batches.push(super::eval::to_tensors(&b, rows, cols)?.0);
    }
    let compare = compare_batches(q, &model, &batches)?;
    let latency = latency(&|x| {
        model.run_tensor(x)?;
        Ok(())
    })?;
    let path = dir.join(INT8);
    model.save(&path)?;
    let model_bytes = std::fs::metadata(&path).map_err(io(&path))?.len();
    Ok(Int8Metrics {
        test: int8,
        fake_quant,
        top1_agreement,
        integer_exact: Some(integer_exact),
        integer_exact_agreement,
        compare,
        latency,
        model_bytes,
        isa: model.isa().to_string(),
    })
}
