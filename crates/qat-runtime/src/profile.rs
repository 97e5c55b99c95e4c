//! Per-op timing of a model call: where the time of [`QuantizedModel::run_into`] goes.
//!
//! Each op's figure is its best (minimum) wall time over several calls, so a call slowed by
//! another process on a shared machine does not hide a fast op; the sum of the minima is
//! therefore a little below the best whole-call time.

use crate::model::QuantizedModel;
use crate::op::Op;
use crate::{Result, RuntimeError};

/// One op's share of a call.
#[derive(Debug, Clone, PartialEq)]
pub struct OpTiming {
    /// The op's value name.
    pub name: String,
    /// Its kind (`"conv2d"`, `"add"`, ...).
    pub kind: &'static str,
    /// The kernel that ran (see [`QuantizedModel::kernel_names`]).
    pub kernel: String,
    /// Best wall seconds over the timed calls.
    pub seconds: f64,
    /// Multiply-accumulates of the whole batch (0 for ops without weights).
    pub macs: u64,
}

impl QuantizedModel {
    /// Time every op over `reps` calls on f32 NCHW `input` (after one untimed warm-up call).
    ///
    /// `Err` when `reps` is 0 or the input does not fit (as [`QuantizedModel::run`]).
    ///
    /// ```
    /// use qat_core::QParams;
    /// use qat_runtime::{Activation, ModelBuilder, Shape};
    /// let q = QParams { scale: 0.1, zero_point: 3 };
    /// let mut b = ModelBuilder::new();
    /// b.input("x", Shape::new(2, 4, 4), q).unwrap();
    /// b.add("y", "x", "x", q, Activation::Relu).unwrap();
    /// let model = b.build("y").unwrap();
    /// let ops = model.profile(&[0.5; 32], 1, 3).unwrap();
    /// assert_eq!((ops[0].name.as_str(), ops[0].kind, ops[0].macs), ("y", "add", 0));
    /// assert!(ops[0].seconds > 0.0);
    /// ```
    pub fn profile(&self, input: &[f32], batch: usize, reps: usize) -> Result<Vec<OpTiming>> {
        if reps == 0 {
            return Err(RuntimeError::Input("profile needs reps ≥ 1".into()));
        }
        let mut out = vec![0f32; self.output_len(batch)?];
        self.run_into(input, batch, &mut out)?;
        let n = self.ops().len();
        let mut best = vec![f64::INFINITY; n];
        let mut one = vec![0f64; n];
        for _ in 0..reps {
            one.fill(0.0);
            self.run_timed(input, batch, &mut out, &mut one)?;
            for (b, &s) in best.iter_mut().zip(&one) {
                *b = b.min(s);
            }
        }
        let kernels = self.kernel_names();
        Ok(self
            .ops()
            .iter()
            .zip(kernels)
            .zip(best)
            .map(|((node, (_, kernel)), seconds)| OpTiming {
                name: node.name.clone(),
                kind: node.op.kind(),
                kernel,
                seconds,
                macs: batch as u64 * macs_per_sample(&node.op, node.shape),
            })
            .collect())
    }
}

/// MACs of one sample of `op` producing a value of `shape`.
pub(crate) fn macs_per_sample(op: &Op, shape: crate::Shape) -> u64 {
    let pixels = (shape.h * shape.w) as u64;
    match op {
        // Weights are `[out][in / groups][kh][kw]`: one MAC per weight per output pixel.
        Op::Conv2d { params, .. } => pixels * params.weight.len() as u64,
        Op::Linear { params, .. } => params.weight.len() as u64,
        Op::FloatLinear { weight, .. } => weight.len() as u64,
        Op::FloatConv1x1 { weight, .. } => pixels * weight.len() as u64,
        _ => 0,
    }
}
