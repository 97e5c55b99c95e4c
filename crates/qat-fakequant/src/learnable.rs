//! Learnable scale and zero point (LSQ / LSQ+): PyTorch's
//! `_fake_quantize_learnable_per_{tensor,channel}_affine` and their backward.
//!
//! The forward is ordinary fake quantization after rounding the float zero point (half to
//! even) and clamping it into the range. The backward returns, per element,
//!
//! * `grad_x = grad_y * [quant_min <= xq <= quant_max]` with `xq = round(zp + x/scale)`;
//! * `grad_scale`: `grad_y * (xfq - x) / scale` inside the range, `grad_y * (quant_min - zp)`
//!   below it and `grad_y * (quant_max - zp)` above it;
//! * `grad_zero_point`: 0 inside, `-grad_y * scale` outside;
//!
//! the last two times `grad_factor` and summed over the tensor (per-tensor) or over every
//! axis but the channel axis (per-channel). PyTorch's backward rounds the zero point
//! differently from its forward — per-tensor `trunc(clamp(zp + 0.5))`, per-channel
//! `clamp(round_half_even(zp))` — and adds it before rounding; both quirks are kept, since
//! they decide which elements count as clipped.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};

use crate::check;
use crate::kernels::{self, fill_vec, Affine, Isa};
use crate::op::{f32_slice, FakeQuantOp};

#[derive(Debug, Clone)]
struct LearnableOp {
    axis: Option<usize>,
    lo: f32,
    hi: f32,
    grad_factor: f32,
    isa: Isa,
}

impl LearnableOp {
    fn op_name(&self) -> &'static str {
        if self.axis.is_some() {
            "fake_quantize_learnable_per_channel"
        } else {
            "fake_quantize_learnable_per_tensor"
        }
    }

    /// The forward's integer zero point: round half to even, then clamp.
    fn fwd_zp(&self, zp: f32) -> f32 {
        zp.round_ties_even().max(self.lo).min(self.hi)
    }

    /// The backward's zero point (see the module docs).
    fn bwd_zp(&self, zp: f32) -> f32 {
        match self.axis {
            None => (zp + 0.5).max(self.lo).min(self.hi).trunc(),
            Some(_) => self.fwd_zp(zp),
        }
    }

    fn params(&self, scale: &[f32], zp: &[f32], bwd: bool) -> Vec<Affine> {
        let z = |v: f32| if bwd { self.bwd_zp(v) } else { self.fwd_zp(v) };
        scale
            .iter()
            .zip(zp)
            .map(|(&s, &v)| Affine::new(s, z(v)))
            .collect()
    }
}

fn cpu_f32<R>(op: &str, t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(f32_slice(op, s, layout)?),
        _ => bail!("{op}: the fused learnable op runs on the CPU only"),
    }
}

impl CustomOp3 for LearnableOp {
    fn name(&self) -> &'static str {
        self.op_name()
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
        let scale = f32_slice(self.op_name(), s2, l2)?;
        let zp = f32_slice(self.op_name(), s3, l3)?;
        let op = FakeQuantOp {
            params: self.params(scale, zp, false),
            axis: self.axis,
            lo: self.lo,
            hi: self.hi,
            isa: self.isa,
        };
        candle_core::CustomOp1::cpu_fwd(&op, s1, l1)
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        zp: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let name = self.op_name();
        let g = grad.contiguous()?;
        let params = cpu_f32(name, &scale.contiguous()?, |s| {
            cpu_f32(name, &zp.contiguous()?, |z| Ok(self.params(s, z, true)))
        })?;
        let c = params.len();
        let inner = match self.axis {
            None => x.elem_count(),
            Some(axis) => check::split_at_axis(x.dims(), axis).2,
        };
        let (mut dscale, mut dzp) = (vec![0f64; c], vec![0f64; c]);
        let n = x.elem_count();
        let dx = cpu_f32(name, x, |xs| {
            cpu_f32(name, &g, |gs| {
                if n == 0 {
                    return Ok(Vec::new());
                }
                Ok(fill_vec(n, |d| {
                    kernels::learn_bwd_blocks(
                        self.isa,
                        xs,
                        gs,
                        d,
                        &params,
                        inner,
                        self.lo,
                        self.hi,
                        self.grad_factor,
                        &mut dscale,
                        &mut dzp,
                    )
                }))
            })
        })?;
        let dev = x.device();
        let to_f32 = |v: Vec<f64>| v.into_iter().map(|s| s as f32).collect::<Vec<f32>>();
        let dx = Tensor::from_vec(dx, x.shape(), dev)?;
        let ds = Tensor::from_vec(to_f32(dscale), scale.shape(), dev)?;
        let dz = Tensor::from_vec(to_f32(dzp), zp.shape(), dev)?;
        Ok((Some(dx), Some(ds), Some(dz)))
    }
}

/// Checks and runs the learnable op; `axis = None` is per-tensor.
fn learnable(
    x: &Tensor,
    scale: &Tensor,
    zero_point: &Tensor,
    axis: Option<usize>,
    quant_min: i32,
    quant_max: i32,
    grad_factor: f64,
) -> Result<Tensor> {
    let op = LearnableOp {
        axis,
        lo: quant_min as f32,
        hi: quant_max as f32,
        grad_factor: grad_factor as f32,
        isa: Isa::detect(),
    };
    let name = op.op_name();
    check::range(name, quant_min, quant_max)?;
    if quant_min > 0 || quant_max < 0 {
        bail!("{name}: the range [{quant_min}, {quant_max}] must include 0")
    }
    if !grad_factor.is_finite() {
        bail!("{name}: grad_factor {grad_factor} must be finite")
    }
    if !x.device().is_cpu() {
        bail!(
            "{name}: runs on the CPU only (got {:?})",
            x.device().location()
        )
    }
    let c = match axis {
        None => 1,
        Some(a) => check::axis(name, x, a)?,
    };
    for (what, t) in [("scale", scale), ("zero_point", zero_point)] {
        if t.dtype() != candle_core::DType::F32 {
            bail!("{name}: {what} must be f32, got {:?}", t.dtype())
        }
    }
    let s = check::param_vec(name, "scale", scale, c)?;
    let z = check::param_vec(name, "zero_point", zero_point, c)?;
    for (i, (&sv, &zv)) in s.iter().zip(&z).enumerate() {
        check::scale(name, &format!("scale[{i}]"), sv as f32)?;
        if !zv.is_finite() {
            bail!("{name}: zero_point[{i}] = {zv} is not finite")
        }
    }
    let (xf, orig) = check::float_input(name, x)?;
    let y = xf
        .contiguous()?
        .apply_op3(&scale.contiguous()?, &zero_point.contiguous()?, op)?;
    check::restore_dtype(y, orig)
}

/// PyTorch's `_fake_quantize_learnable_per_tensor_affine`: fake quantization with a
/// learnable f32 `scale` and float `zero_point` (1 value each, shape `[]` or `[1]`), with
/// gradients for all three inputs (see the module docs). CPU only.
///
/// ```
/// use candle_core::{Device, Var};
/// let dev = Device::Cpu;
/// let x = Var::new(&[0.31f32, -2.0, 5.0], &dev).unwrap();
/// let s = Var::new(&[0.1f32], &dev).unwrap();
/// let z = Var::new(&[0.0f32], &dev).unwrap();
/// let y = qat_fakequant::fake_quantize_learnable_per_tensor(&x, &s, &z, -8, 7, 1.0).unwrap();
/// let g = y.sum_all().unwrap().backward().unwrap();
/// // Inside: (0.3 - 0.31) / 0.1; below: -8 - 0; above: 7 - 0.
/// let gs = g.get(&s).unwrap().to_vec1::<f32>().unwrap()[0];
/// assert!((gs - (-0.1 - 8.0 + 7.0)).abs() < 1e-5);
/// ```
pub fn fake_quantize_learnable_per_tensor(
    x: &Tensor,
    scale: &Tensor,
    zero_point: &Tensor,
    quant_min: i32,
    quant_max: i32,
    grad_factor: f64,
) -> Result<Tensor> {
    learnable(
        x,
        scale,
        zero_point,
        None,
        quant_min,
        quant_max,
        grad_factor,
    )
}

/// PyTorch's `_fake_quantize_learnable_per_channel_affine`: one learnable scale and float
/// zero point per index of `axis`; the scale / zero-point gradients are summed over every
/// other axis. CPU only.
pub fn fake_quantize_learnable_per_channel(
    x: &Tensor,
    scale: &Tensor,
    zero_point: &Tensor,
    axis: usize,
    quant_min: i32,
    quant_max: i32,
    grad_factor: f64,
) -> Result<Tensor> {
    learnable(
        x,
        scale,
        zero_point,
        Some(axis),
        quant_min,
        quant_max,
        grad_factor,
    )
}
