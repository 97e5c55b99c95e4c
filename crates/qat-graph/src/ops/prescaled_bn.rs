//! Train-mode BatchNorm2d of a per-channel divided and shifted input, `BN(x / s[c] + b[c])`, as
//! one op: the QAT Conv+BN un-scaling (`conv / scale_factor (+ bias)`) followed by the real
//! BatchNorm with batch statistics (PyTorch's `_forward_approximate`).
//!
//! The divided tensor `z` is never stored: each pass recomputes it per (image, channel) plane
//! into a plane-sized scratch (with the same rounding as [`super::channel_div_nchw`]), so the
//! pair costs one output tensor and one autograd node instead of two of each. The backward
//! chains the BatchNorm gradient `dz` into `dx = dz / s`, `ds = −Σ dz·x / s²`, `db = Σ dz`.

use std::sync::{Arc, Mutex};

use candle_core::{bail, CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::batch_norm::{
    affine, check, dx_kernel, grad_sums, per_channel, sq_dev, BatchNormTrainOutput, Dims,
};
use super::channel::{bwd_plane, fwd_plane};
use super::common::{f32_contiguous, slice_f32, sum, PAR_MIN_ELEMS};

/// Per-channel statistics of `z`, saved by the forward for the backward.
#[derive(Debug, Default)]
struct Stats {
    mean: Vec<f32>,
    invstd: Vec<f32>,
    var: Vec<f32>,
}

/// `z = x / s + b` for plane `i` of `x` into `z`.
fn z_plane(z: &mut [f32], x: &[f32], d: Dims, i: usize, s: &[f32], b: &[f32]) {
    let c = i % d.c;
    fwd_plane(z, &x[i * d.plane..(i + 1) * d.plane], s[c], b[c], true);
}

/// Runs `f(i, out_plane) -> T` over the planes of `out` with a plane-sized scratch, in parallel
/// when big; returns the per-plane results in order.
fn map_planes<T: Send>(
    out: &mut [f32],
    plane: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32]) -> T + Sync,
) -> Vec<T> {
    if plane == 0 {
        return Vec::new();
    }
    if out.len() < PAR_MIN_ELEMS {
        let mut scratch = vec![0f32; 2 * plane];
        out.chunks_exact_mut(plane)
            .enumerate()
            .map(|(i, o)| f(i, o, &mut scratch))
            .collect()
    } else {
        out.par_chunks_exact_mut(plane)
            .enumerate()
            .map_init(|| vec![0f32; 2 * plane], |scratch, (i, o)| f(i, o, scratch))
            .collect()
    }
}

/// `(x [N,C,H,W], [γ | s] (2C), [β | b] (2C)) -> y`.
struct Forward {
    d: Dims,
    eps: f64,
    stats: Arc<Mutex<Stats>>,
}

impl CustomOp3 for Forward {
    fn name(&self) -> &'static str {
        "batch_norm_train_prescaled"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(s1, l1, self.name(), "input")?;
        let gs = slice_f32(s2, l2, self.name(), "weight and divisor")?;
        let bb = slice_f32(s3, l3, self.name(), "bias and shift")?;
        let d = self.d;
        let (gamma, s) = gs.split_at(d.c);
        let (beta, b) = bb.split_at(d.c);
        let m = d.count() as f64;
        let stats: Vec<(f32, f32)> = per_channel(d, |c| {
            // The channel's z, all images (N·H·W floats: cache-resident).
            let mut z = vec![0f32; d.n * d.plane];
            for (n, zp) in z.chunks_exact_mut(d.plane.max(1)).enumerate() {
                z_plane(zp, x, d, n * d.c + c, s, b);
            }
            let mean = (sum(&z) as f64 / m) as f32;
            let mut var = 0f64;
            sq_dev(&z, mean, &mut var);
            (mean, (var / m) as f32)
        });
        let mean: Vec<f32> = stats.iter().map(|s| s.0).collect();
        let var: Vec<f32> = stats.iter().map(|s| s.1).collect();
        let invstd: Vec<f32> = var
            .iter()
            .map(|&v| (1.0 / (v as f64 + self.eps).sqrt()) as f32)
            .collect();
        let mut y = vec![0f32; x.len()];
        map_planes(&mut y, d.plane, |i, o, scratch| {
            let c = i % d.c;
            let z = &mut scratch[..d.plane];
            z_plane(z, x, d, i, s, b);
            let a = gamma[c] * invstd[c];
            affine(o, z, a, beta[c] - a * mean[c]);
        });
        *self
            .stats
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))? = Stats { mean, invstd, var };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gs: &Tensor,
        bb: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // The backward needs γ, s and b: pass [γ | s | β | b] as one tensor.
        let params = Tensor::cat(&[gs, bb], 0)?;
        let packed = x.apply_op3_no_bwd(
            &grad,
            &params,
            &Backward {
                d: self.d,
                stats: self.stats.clone(),
            },
        )?;
        let (len, c) = (x.elem_count(), self.d.c);
        let dx = packed.narrow(0, 0, len)?.reshape(x.shape())?;
        let dgs = packed.narrow(0, len, 2 * c)?;
        let dbb = packed.narrow(0, len + 2 * c, 2 * c)?;
        Ok((Some(dx), Some(dgs), Some(dbb)))
    }
}

/// `(x, dy, [γ | s | β | b]) -> [dx | dγ | ds | dβ | db]`, flat.
struct Backward {
    d: Dims,
    stats: Arc<Mutex<Stats>>,
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "batch_norm_train_prescaled_backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(s1, l1, self.name(), "input")?;
        let dy = slice_f32(s2, l2, self.name(), "output gradient")?;
        let params = slice_f32(s3, l3, self.name(), "parameters")?;
        let st = self
            .stats
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
        let d = self.d;
        if st.mean.len() != d.c || dy.len() != x.len() || params.len() != 4 * d.c {
            bail!(
                "{}: statistics or gradient do not match the input",
                self.name()
            )
        }
        let (gamma, rest) = params.split_at(d.c);
        let (s, rest) = rest.split_at(d.c);
        let b = &rest[d.c..];
        let m = d.count() as f64;
        let plane = |i: usize| i * d.plane..(i + 1) * d.plane;
        // Per channel: Σdy and Σdy·(z − mean).
        let sums: Vec<(f64, f64)> = per_channel(d, |c| {
            let mut z = vec![0f32; d.plane];
            let (mut sdy, mut sdyzc) = (0f64, 0f64);
            for n in 0..d.n {
                let i = n * d.c + c;
                z_plane(&mut z, x, d, i, s, b);
                let mut o = (0f64, 0f64);
                grad_sums(&dy[plane(i)], &z, st.mean[c], &mut o);
                sdy += o.0;
                sdyzc += o.1;
            }
            (sdy, sdyzc)
        });
        let mut out = vec![0f32; x.len() + 4 * d.c];
        let (dx, tail) = out.split_at_mut(x.len());
        // dz = k·dy + mz·z + q (the BatchNorm backward), then dx = dz / s with Σdz, Σdz·x.
        let plane_sums = map_planes(dx, d.plane, |i, o, scratch| {
            let c = i % d.c;
            let (z, dz) = scratch.split_at_mut(d.plane);
            z_plane(z, x, d, i, s, b);
            let (sdy, sdyzc) = sums[c];
            let inv = st.invstd[c] as f64;
            let k = gamma[c] as f64 * inv;
            let mz = -k * sdyzc * inv * inv / m;
            let q = -k * sdy / m - mz * st.mean[c] as f64;
            dx_kernel(dz, &dy[plane(i)], z, k as f32, mz as f32, q as f32);
            bwd_plane(o, dz, &x[plane(i)], s[c], true)
        });
        for c in 0..d.c {
            let (sdy, sdyzc) = sums[c];
            let (sdz, sdzx) = (0..d.n).fold((0f64, 0f64), |(a, bsum), n| {
                let p = plane_sums.get(n * d.c + c).copied().unwrap_or((0.0, 0.0));
                (a + p.0, bsum + p.1)
            });
            let sc = s[c] as f64;
            tail[c] = (sdyzc * st.invstd[c] as f64) as f32;
            tail[d.c + c] = (-sdzx / (sc * sc)) as f32;
            tail[2 * d.c + c] = sdy as f32;
            tail[3 * d.c + c] = sdz as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from(x.len() + 4 * d.c)))
    }
}

/// Train-mode BatchNorm2d (batch statistics) of `z = x / divisor[c] + shift[c]` on NCHW `x`:
/// the same values and gradients as [`channel_div_nchw`](super::channel_div_nchw) followed by
/// [`batch_norm_train`](super::batch_norm_train), without storing `z`. The returned statistics
/// are those of `z` (for the running-stat update). `divisor`, `shift`, `weight`, `bias` are
/// `[C]` (`shift` optional); gradients flow to all of them and to `x`. Errors on wrong ranks /
/// shapes, non-f32 / non-CPU tensors, a negative eps, and a single value per channel.
pub fn batch_norm_train_prescaled(
    x: &Tensor,
    divisor: &Tensor,
    shift: Option<&Tensor>,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<BatchNormTrainOutput> {
    const OP: &str = "batch_norm_train_prescaled";
    let d = check(x, weight, bias, OP)?;
    if divisor.dims() != [d.c] || shift.is_some_and(|b| b.dims() != [d.c]) {
        bail!("{OP}: divisor and shift must have shape [{}]", d.c)
    }
    if eps.is_nan() || eps < 0.0 {
        bail!("{OP}: eps must be >= 0, got {eps}")
    }
    let x = f32_contiguous(x, OP, "input")?;
    let shift = match shift {
        Some(b) => b.clone(),
        None => Tensor::zeros(d.c, x.dtype(), x.device())?,
    };
    let gs = f32_contiguous(&Tensor::cat(&[weight, divisor], 0)?, OP, "weight / divisor")?;
    let bb = f32_contiguous(&Tensor::cat(&[bias, &shift], 0)?, OP, "bias / shift")?;
    let stats = Arc::new(Mutex::new(Stats::default()));
    let y = x.apply_op3(
        &gs,
        &bb,
        Forward {
            d,
            eps,
            stats: stats.clone(),
        },
    )?;
    let st = stats
        .lock()
        .map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
    let m = d.count() as f32;
    let unbiased: Vec<f32> = st.var.iter().map(|v| v * m / (m - 1.0)).collect();
    Ok(BatchNormTrainOutput {
        y,
        mean: Tensor::from_slice(&st.mean, d.c, &Device::Cpu)?,
        var: Tensor::from_slice(&st.var, d.c, &Device::Cpu)?,
        var_unbiased: Tensor::from_vec(unbiased, d.c, &Device::Cpu)?,
    })
}

/// [`batch_norm_train_prescaled`] as candle ops (the reference for tests):
/// [`channel_div_nchw_slow`](super::channel_div_nchw_slow) then
/// [`batch_norm_train_slow`](super::batch_norm_train_slow).
pub fn batch_norm_train_prescaled_slow(
    x: &Tensor,
    divisor: &Tensor,
    shift: Option<&Tensor>,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<BatchNormTrainOutput> {
    let z = super::channel_div_nchw_slow(x, divisor, shift)?;
    super::batch_norm_train_slow(&z, weight, bias, eps)
}
