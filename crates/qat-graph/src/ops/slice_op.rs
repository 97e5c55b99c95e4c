//! The candle `CustomOp2` / `CustomOp3` plumbing every fused op shares: operands checked and
//! read as contiguous f32 slices, and a backward op whose flat output (all gradients packed one
//! after the other, so one candle op computes them in one pass) is split back into tensors.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::common::slice_f32;

/// A three-operand op on contiguous f32 CPU data. Wrapped in [`Op3`] it is a candle
/// `CustomOp3`: `cpu_fwd` reads the operands with [`slice_f32`] (errors naming the op and
/// operand) and calls [`SliceOp3::run`].
pub(super) trait SliceOp3: Send + Sync {
    /// The op's name (candle's op graph, error messages).
    const NAME: &'static str;
    /// What each operand is, for error messages.
    const OPERANDS: [&'static str; 3];

    /// The output and its shape from the operands' data; `shape` is the first operand's.
    fn run(&self, a: &[f32], b: &[f32], c: &[f32], shape: &Shape) -> Result<(Vec<f32>, Shape)>;

    /// The gradients of the three operands given the output `res` and its gradient `grad`.
    /// Backward ops, which run outside autograd, keep this default.
    fn grads(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        _c: &Tensor,
        _res: &Tensor,
        _grad: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        Err(candle_core::Error::BackwardNotSupported { op: Self::NAME })
    }
}

/// A [`SliceOp3`] as a candle `CustomOp3`.
pub(super) struct Op3<T>(pub(super) T);

impl<T: SliceOp3> CustomOp3 for Op3<T> {
    fn name(&self) -> &'static str {
        T::NAME
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
        let [n1, n2, n3] = T::OPERANDS;
        let a = slice_f32(s1, l1, T::NAME, n1)?;
        let b = slice_f32(s2, l2, T::NAME, n2)?;
        let c = slice_f32(s3, l3, T::NAME, n3)?;
        let (out, shape) = self.0.run(a, b, c, l1.shape())?;
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [ga, gb, gc] = self.0.grads(a, b, c, res, grad)?;
        Ok((ga, gb, gc))
    }
}

/// A two-operand op on contiguous f32 CPU data; [`Op2`] makes it a candle `CustomOp2`, as
/// [`SliceOp3`] / [`Op3`] for three operands.
pub(super) trait SliceOp2: Send + Sync {
    /// The op's name (candle's op graph, error messages).
    const NAME: &'static str;
    /// What each operand is, for error messages.
    const OPERANDS: [&'static str; 2];

    /// The output and its shape from the operands' data and shapes.
    fn run(&self, a: &[f32], b: &[f32], shapes: (&Shape, &Shape)) -> Result<(Vec<f32>, Shape)>;

    /// The gradients of the two operands; backward ops keep this default.
    fn grads(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        _grad: &Tensor,
    ) -> Result<[Option<Tensor>; 2]> {
        Err(candle_core::Error::BackwardNotSupported { op: Self::NAME })
    }
}

/// A [`SliceOp2`] as a candle `CustomOp2`.
pub(super) struct Op2<T>(pub(super) T);

impl<T: SliceOp2> CustomOp2 for Op2<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let [n1, n2] = T::OPERANDS;
        let a = slice_f32(s1, l1, T::NAME, n1)?;
        let b = slice_f32(s2, l2, T::NAME, n2)?;
        let (out, shape) = self.0.run(a, b, (l1.shape(), l2.shape()))?;
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let [ga, gb] = self.0.grads(a, b, res, grad)?;
        Ok((ga, gb))
    }
}

/// A flat output of `len` floats (the packed gradients of a backward op) with its shape.
pub(super) fn flat(out: Vec<f32>) -> (Vec<f32>, Shape) {
    let len = out.len();
    (out, Shape::from(len))
}

/// Runs the backward op `op` on `(a, b, c)` (made contiguous; outside autograd, as a backward
/// is not differentiated again) and splits its flat output into consecutive tensors of
/// `shapes`, in order. An output of another length is an error naming the op.
pub(super) fn packed_grads<T: SliceOp3, const K: usize>(
    (a, b, c): (&Tensor, &Tensor, &Tensor),
    op: T,
    shapes: [Shape; K],
) -> Result<[Tensor; K]> {
    let packed = a
        .contiguous()?
        .apply_op3_no_bwd(&b.contiguous()?, &c.contiguous()?, &Op3(op))?;
    let total: usize = shapes.iter().map(Shape::elem_count).sum();
    if packed.elem_count() != total {
        bail!(
            "{}: {} packed gradient values, expected {total}",
            T::NAME,
            packed.elem_count()
        )
    }
    let mut at = 0;
    let mut parts = Vec::with_capacity(K);
    for shape in shapes {
        let len = shape.elem_count();
        parts.push(packed.narrow(0, at, len)?.reshape(shape)?);
        at += len;
    }
    parts
        .try_into()
        .map_err(|_| candle_core::Error::Msg(format!("{}: gradient count", T::NAME)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Writes `0, 1, 2, …` (`len` values) after checking its operands are `[a, b, c]`'s data.
    struct Iota {
        len: usize,
    }

    impl SliceOp3 for Iota {
        const NAME: &'static str = "iota";
        const OPERANDS: [&'static str; 3] = ["first", "second", "third"];

        fn run(&self, a: &[f32], b: &[f32], c: &[f32], _: &Shape) -> Result<(Vec<f32>, Shape)> {
            assert_eq!((a, b, c), (&[1f32, 2.0][..], &[3f32][..], &[4f32][..]));
            Ok(flat((0..self.len).map(|i| i as f32).collect()))
        }
    }

    fn operands() -> Result<(Tensor, Tensor, Tensor)> {
        let dev = Device::Cpu;
        Ok((
            Tensor::new(&[1f32, 2.0], &dev)?,
            Tensor::new(&[3f32], &dev)?,
            Tensor::new(&[4f32], &dev)?,
        ))
    }

    #[test]
    fn packed_grads_splits_in_order_and_reshapes() -> Result<()> {
        let (a, b, c) = operands()?;
        // A non-contiguous operand is made contiguous first.
        let at = Tensor::new(&[[1f32, 9.0], [2.0, 9.0]], &Device::Cpu)?
            .t()?
            .narrow(0, 0, 1)?;
        assert!(!at.is_contiguous());
        for a in [&a, &at] {
            let shapes = [Shape::from((2, 3)), Shape::from(1), Shape::from((1, 2))];
            let [p, q, r] = packed_grads((a, &b, &c), Iota { len: 9 }, shapes)?;
            assert_eq!(p.to_vec2::<f32>()?, [[0., 1., 2.], [3., 4., 5.]]);
            assert_eq!(q.to_vec1::<f32>()?, [6.]);
            assert_eq!(r.to_vec2::<f32>()?, [[7., 8.]]);
        }
        Ok(())
    }

    #[test]
    fn packed_grads_of_another_length_is_an_error() -> Result<()> {
        let (a, b, c) = operands()?;
        for len in [8, 10] {
            let e = packed_grads((&a, &b, &c), Iota { len }, [Shape::from(9)])
                .expect_err("a wrong packed length must be an error")
                .to_string();
            assert!(e.contains("iota") && e.contains("expected 9"), "{e}");
        }
        Ok(())
    }

    #[test]
    fn non_f32_operands_are_errors_naming_the_operand() -> Result<()> {
        let (a, b, c) = operands()?;
        let e = a
            .apply_op3_no_bwd(&b.to_dtype(DType::F64)?, &c, &Op3(Iota { len: 1 }))
            .expect_err("an f64 operand must be an error")
            .to_string();
        assert!(e.contains("iota: second must be f32"), "{e}");
        Ok(())
    }

    #[test]
    fn a_backward_op_is_not_differentiated() -> Result<()> {
        let (a, b, c) = operands()?;
        let a = candle_core::Var::from_tensor(&a)?;
        let y = a.apply_op3(&b, &c, Op3(Iota { len: 2 }))?;
        let e = y
            .sum_all()?
            .backward()
            .expect_err("no backward")
            .to_string();
        assert!(e.contains("iota"), "{e}");
        Ok(())
    }
}
