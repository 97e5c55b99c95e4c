//! Accuracy and loss of any forward function (fp32, fake-quant or int8) over a loader.

use candle_core::{Device, Tensor};
use qat_data::Loader;
use serde::{Deserialize, Serialize};

use super::error::Result;

/// Test-set figures of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub images: usize,
    /// Top-1 accuracy in [0, 1].
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// The predicted class (first maximum) of every image, in loader order.
    #[serde(skip)]
    pub predictions: Vec<u32>,
}

/// A loader batch as an NCHW tensor and its labels.
pub(crate) fn to_tensors(
    b: &qat_data::Batch,
    rows: usize,
    cols: usize,
) -> Result<(Tensor, Tensor)> {
    let n = b.len();
    let x = Tensor::from_slice(&b.images, (n, 1, rows, cols), &Device::Cpu)?;
    let y = Tensor::from_slice(&b.labels, n, &Device::Cpu)?;
    Ok((x, y))
}

/// Per-row argmax (first maximum) of `[N, C]` logits.
pub(crate) fn argmax(logits: &Tensor) -> Result<Vec<u32>> {
    let rows = logits.to_vec2::<f32>()?;
    Ok(rows
        .iter()
        .map(|r| {
            let mut best = 0;
            for (i, v) in r.iter().enumerate() {
                if *v > r[best] {
                    best = i;
                }
            }
            best as u32
        })
        .collect())
}

/// Run `forward` on every batch of `loader` (epoch 0) and score it.
pub fn evaluate(
    loader: &Loader,
    mut forward: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<EvalResult> {
    let (rows, cols) = (loader.dataset().rows, loader.dataset().cols);
    let mut predictions = Vec::with_capacity(loader.images_per_epoch());
    let (mut correct, mut loss_sum) = (0usize, 0f64);
    for b in loader.epoch(0) {
        let (x, y) = to_tensors(&b, rows, cols)?;
        let logits = forward(&x)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?.to_scalar::<f32>()?;
        loss_sum += loss as f64 * b.len() as f64;
        let p = argmax(&logits)?;
        correct += p.iter().zip(&b.labels).filter(|(a, b)| a == b).count();
        predictions.extend(p);
    }
    let images = predictions.len();
    Ok(EvalResult {
        images,
        accuracy: correct as f64 / images as f64,
        loss: loss_sum / images as f64,
        predictions,
    })
}

/// Share of images on which two evaluations predict the same class.
pub fn agreement(a: &EvalResult, b: &EvalResult) -> f64 {
    let same = a
        .predictions
        .iter()
        .zip(&b.predictions)
        .filter(|(x, y)| x == y)
        .count();
    same as f64 / a.predictions.len().max(1) as f64
}
