//! Stage 2: post-training quantization — `prepare` the trained fp32 model with the PTQ
//! qconfig ([`ptq_qconfig`]), calibrate on un-augmented training batches, then evaluate the
//! calibrated model in fake-quant simulation and converted to int8.

use std::time::Instant;

use candle_core::{Device, Tensor};
use qat_data::Loader;
use qat_graph::{prepare, GraphModule, QatGraph};
use serde::{Deserialize, Serialize};

use super::config::{ptq_qconfig, PipelineConfig};
use super::error::Result;
use super::eval::{evaluate, EvalResult};
use super::histogram::{activation_histograms, RangeHistogram};
use super::int8::{convert_model, evaluate_int8};

/// PTQ figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PtqMetrics {
    pub calibration_images: usize,
    /// The calibrated model in fake-quant simulation.
    pub fake_quant: EvalResult,
    /// The calibrated model converted to int8.
    pub int8: EvalResult,
    /// Size of the converted model's file (not kept: the QAT model is the one saved).
    pub int8_bytes: u64,
    pub activation_histograms: Vec<RangeHistogram>,
    pub seconds: f64,
}

/// The first `n` batches of `calib` as tensors.
pub(crate) fn batches(calib: &Loader, n: usize) -> Result<Vec<Tensor>> {
    let (rows, cols) = (calib.dataset().rows, calib.dataset().cols);
    calib
        .epoch(0)
        .take(n)
        .map(|b| {
            Ok(Tensor::from_vec(
                b.images,
                (b.labels.len(), 1, rows, cols),
                &Device::Cpu,
            )?)
        })
        .collect()
}

/// Calibrate a PTQ copy of `fp32` (which is left alone) and evaluate it. Returns the
/// calibrated graph (observers off, fake quantization on) and its figures.
pub fn run_ptq(
    cfg: &PipelineConfig,
    fp32: GraphModule,
    calib: &Loader,
    test_loader: &Loader,
) -> Result<(QatGraph, PtqMetrics)> {
    let t0 = Instant::now();
    let q = prepare(fp32, &ptq_qconfig())?;
    let cal = batches(calib, cfg.calibration_batches)?;
    let calibration_images = cal
        .iter()
        .map(|t| t.dim(0))
        .sum::<candle_core::Result<usize>>()?;
    q.calibrate(&cal)?;
    q.enable_observers(false);
    q.enable_fake_quant(true);
    let fake_quant = evaluate(test_loader, |x| Ok(q.forward_t(x, false)?))?;
    let model = convert_model(cfg, &q)?;
    let int8 = evaluate_int8(&model, test_loader)?;
    let int8_bytes = model.to_bytes()?.len() as u64;
    let activation_histograms = activation_histograms(&q, &cal[0], "PTQ")?;
    Ok((
        q,
        PtqMetrics {
            calibration_images,
            fake_quant,
            int8,
            int8_bytes,
            activation_histograms,
            seconds: t0.elapsed().as_secs_f64(),
        },
    ))
}
