//! The QAT forward's quantized global average pool, computed on the integer grid exactly as
//! the int8 model computes it.
//!
//! The int8 pool sums its inputs' integers exactly and requantizes the sum with
//! [`qat_core::avg_pool_multiplier`], so a mean that falls on a half step rounds to even. A
//! float mean of the same values lands a few ulps either side of the half step, depending on
//! the reduction order, and rounds either way: that alone kept the pool 1% and the logits'
//! top-1 about 1% away from the int8 model. PyTorch's QAT graph leaves the mean unrounded
//! altogether.

use candle_core::Tensor;

use super::fq::FqModule;
use crate::error::{GraphError, Result};

/// The global average pool of `x` (`[n, c, h, w]`, values on `fq`'s grid) as the int8
/// model computes it, with `mean` (the float pool of `x`, `[n, c, 1, 1]`) carrying the
/// gradient straight through: the value is exactly the integer result, the gradient is
/// `mean`'s. While `fq` does not fake-quantize, `mean` itself.
pub(crate) fn integer_global_pool(fq: &FqModule, x: &Tensor, mean: &Tensor) -> Result<Tensor> {
    if !fq.fake_quant_enabled()? {
        return Ok(mean.clone());
    }
    let err = |m: String| GraphError::node(fq.name(), m);
    let (scale, zp) = match fq.qparams()? {
        (s, z) if s.len() == 1 && z.len() == 1 => (s[0], z[0]),
        _ => {
            return Err(err(
                "a per-channel fake-quant cannot round a pooled value".into()
            ))
        }
    };
    let (_, _, h, w) = x.dims4()?;
    let area = h * w;
    let (lo, hi) = fq.spec().dtype.range();
    // The exact i32 sum must not overflow: the int8 kernels refuse the same bound.
    let span = lo.unsigned_abs().max(hi.unsigned_abs()) as usize;
    if area == 0 || area.saturating_mul(span) > i32::MAX as usize / 2 {
        return Err(err(format!(
            "pooled area {h}×{w} is empty or too large for an exact i32 sum"
        )));
    }
    let inv = 1.0 / scale;
    let m = qat_core::avg_pool_multiplier(scale, scale, area);
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let mut out = Vec::with_capacity(xs.len() / area);
    for plane in xs.chunks_exact(area) {
        let mut sum = 0i32;
        for &v in plane {
            // `v` is `(q - zp) * scale` rounded to f32; times the reciprocal it is within
            // 1e-4 of the integer, so rounding recovers `q` exactly.
            if !v.is_finite() {
                return Err(err(format!("pool input {v} is not finite")));
            }
            sum += ((v * inv).round_ties_even() as i32 + zp).clamp(lo, hi);
        }
        let q = qat_core::global_avg_pool(sum, area, zp, m, zp, lo, hi);
        out.push((q - zp) as f32 * scale);
    }
    let exact = Tensor::from_vec(out, mean.shape(), mean.device())?;
    if !mean.track_op() {
        return Ok(exact);
    }
    // `mean - mean.detach()` is exactly zero, so the value stays the integer result.
    Ok((exact + (mean - mean.detach())?)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var, D};

    use super::*;
    use crate::QConfig;

    fn fq() -> FqModule {
        let spec = QConfig::default_qat().global().unwrap().activation;
        FqModule::new("pool_in.activation_post_process".into(), &spec, 1).unwrap()
    }

    /// The pool of grid values against the exact mean in steps (f64), rounded half to
    /// even: ties included, for an even (4×4: ties happen) and an odd (3×3) area.
    #[test]
    fn value_is_the_exact_mean_rounded_half_even_and_gradient_passes_straight() {
        for (h, w) in [(4usize, 4usize), (3, 3)] {
            let dev = Device::Cpu;
            let n = 2 * 3 * h * w;
            // Plane p holds steps p, p + 1, ... (the observer sees [0, 2.55]: scale 0.01): on
            // 4×4 every mean but the last plane's is a half-step tie, 7.5 + p.
            let area = h * w;
            let mut raw: Vec<f32> = (0..n)
                .map(|i| (i % area + i / area) as f32 * 0.01)
                .collect();
            raw[n - 1] = 2.55;
            let fq = fq();
            let x = fq
                .forward(&Tensor::from_vec(raw, (2, 3, h, w), &dev).unwrap())
                .unwrap();
            fq.enable_observer(false);
            let (s, z) = fq.qparams().unwrap();
            let (s, z) = (s[0], z[0]);
            let xv = Var::from_tensor(&x).unwrap();
            let mean = xv.as_tensor().mean_keepdim(D::Minus1).unwrap();
            let mean = mean.mean_keepdim(D::Minus2).unwrap();
            let y = integer_global_pool(&fq, xv.as_tensor(), &mean).unwrap();
            assert_eq!(y.dims(), [2, 3, 1, 1]);

            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let ys = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut ties = 0;
            for (plane, got) in xs.chunks(h * w).zip(&ys) {
                let steps: f64 = plane.iter().map(|&v| (v as f64 / s as f64).round()).sum();
                let exact = steps / (h * w) as f64;
                ties += (exact.fract().abs() == 0.5) as usize;
                let want = (exact.round_ties_even() as i32 + z).clamp(0, 255) - z;
                assert_eq!(*got, want as f32 * s, "h={h} exact mean {exact} steps");
            }
            if h * w == 16 {
                assert_eq!(ties, 5, "the case must contain half-step ties");
            }

            // d(Σ y·c)/dx = c / area for every element of the plane.
            let c: Vec<f32> = (0..6).map(|i| i as f32 + 1.0).collect();
            let c = Tensor::from_vec(c, (2, 3, 1, 1), &dev).unwrap();
            let g = (y * &c).unwrap().sum_all().unwrap().backward().unwrap();
            let gx = g.get(xv.as_tensor()).unwrap();
            let gx = gx.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (i, v) in gx.iter().enumerate() {
                let want = (i / (h * w) + 1) as f32 / (h * w) as f32;
                assert!((v - want).abs() < 1e-6, "grad[{i}] = {v}, want {want}");
            }
        }
    }

    #[test]
    fn bad_inputs_are_errors_and_fake_quant_off_is_the_identity() {
        let dev = Device::Cpu;
        let fq = fq();
        let x = fq
            .forward(&Tensor::new(&[[[[0.0f32, 1.0], [2.0, 3.0]]]], &dev).unwrap())
            .unwrap();
        let mean = x
            .mean_keepdim(D::Minus1)
            .unwrap()
            .mean_keepdim(D::Minus2)
            .unwrap();
        let inf = Tensor::new(&[[[[0.0f32, f32::INFINITY], [2.0, 3.0]]]], &dev).unwrap();
        let e = integer_global_pool(&fq, &inf, &mean)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not finite") && e.contains("pool_in"), "{e}");
        let empty = Tensor::zeros((1, 1, 0, 2), candle_core::DType::F32, &dev).unwrap();
        let e = integer_global_pool(&fq, &empty, &mean)
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty"), "{e}");
        fq.enable_fake_quant(false);
        let y = integer_global_pool(&fq, &inf, &mean).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            mean.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}
