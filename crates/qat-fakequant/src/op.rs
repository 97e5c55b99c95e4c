//! The fused CPU custom ops: one pass forward, one pass backward (the mask is recomputed from
//! `x`, never stored).

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Error, Layout, Result, Shape, Tensor};

use crate::check::split_at_axis;
use crate::kernels::{self, fill_vec, Affine, Isa, RowBuf};

/// Below this many contiguous elements per channel block, per-channel kernels expand the
/// constants along a row instead, so short blocks (a late channel axis) still vectorize.
const MIN_BLOCK: usize = 64;

/// Fake quantization with fixed constants: one channel (per-tensor) or one per index of
/// `axis`.
#[derive(Debug, Clone)]
pub(crate) struct FakeQuantOp {
    pub params: Vec<Affine>,
    pub axis: Option<usize>,
    pub lo: f32,
    pub hi: f32,
    pub isa: Isa,
}

/// The backward of [`FakeQuantOp`]: `(x, grad_y) -> grad_y * mask(x)`.
#[derive(Debug, Clone)]
pub(crate) struct FakeQuantGradOp(pub FakeQuantOp);

/// How a contiguous tensor splits into channel blocks.
enum Plan {
    Blocks { inner: usize },
    Rows(RowBuf),
}

impl FakeQuantOp {
    fn plan(&self, dims: &[usize]) -> Result<Plan> {
        let n: usize = dims.iter().product();
        let Some(axis) = self.axis else {
            return Ok(Plan::Blocks { inner: n });
        };
        if axis >= dims.len() || dims[axis] != self.params.len() {
            bail!(
                "fake_quantize_per_channel: {} channels for axis {axis} of shape {dims:?}",
                self.params.len()
            )
        }
        let (_, c, inner) = split_at_axis(dims, axis);
        if inner >= MIN_BLOCK || c == 1 {
            Ok(Plan::Blocks { inner })
        } else {
            Ok(Plan::Rows(RowBuf::expand(&self.params, inner)))
        }
    }
}

pub(crate) fn f32_slice<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{op}: non-contiguous input reached the fused kernel (make it contiguous first)")
    };
    match s {
        CpuStorage::F32(v) => Ok(&v[start..end]),
        _ => bail!("{op}: the fused kernel takes f32, got {:?}", s.dtype()),
    }
}

impl CustomOp1 for FakeQuantOp {
    fn name(&self) -> &'static str {
        "fake-quantize"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), s, l)?;
        let n = x.len();
        let y = if n == 0 {
            Vec::new()
        } else {
            match self.plan(l.dims())? {
                Plan::Blocks { inner } => fill_vec(n, |y| {
                    kernels::fwd_blocks(self.isa, x, y, &self.params, inner, self.lo, self.hi)
                }),
                Plan::Rows(row) => fill_vec(n, |y| {
                    kernels::fwd_rows(self.isa, x, y, row.view(), self.lo, self.hi)
                }),
            }
        };
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let g = grad_res.contiguous()?;
        Ok(Some(
            arg.apply_op2_no_bwd(&g, &FakeQuantGradOp(self.clone()))?,
        ))
    }
}

impl CustomOp2 for FakeQuantGradOp {
    fn name(&self) -> &'static str {
        "fake-quantize-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(self.name(), s1, l1)?;
        let g = f32_slice(self.name(), s2, l2)?;
        if l1.shape() != l2.shape() {
            return Err(Error::ShapeMismatchBinaryOp {
                lhs: l1.shape().clone(),
                rhs: l2.shape().clone(),
                op: "fake-quantize-backward",
            }
            .bt());
        }
        let (op, n) = (&self.0, x.len());
        let dx = if n == 0 {
            Vec::new()
        } else {
            match op.plan(l1.dims())? {
                Plan::Blocks { inner } => fill_vec(n, |d| {
                    kernels::bwd_blocks(op.isa, x, g, d, &op.params, inner, op.lo, op.hi)
                }),
                Plan::Rows(row) => fill_vec(n, |d| {
                    kernels::bwd_rows(op.isa, x, g, d, row.view(), op.lo, op.hi)
                }),
            }
        };
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}
