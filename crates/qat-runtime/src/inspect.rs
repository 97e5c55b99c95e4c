//! [`QuantizedModel::inspect`]: a human-readable summary of the plan.

use crate::op::{Bias, Op, ValueType};
use crate::QuantizedModel;
use std::fmt::Write;

fn ty(t: ValueType) -> String {
    match t {
        ValueType::U8(q) => format!("u8 (scale {:.6e}, zp {})", q.scale, q.zero_point),
        ValueType::F32 => "f32".into(),
    }
}

fn attrs(op: &Op) -> String {
    let bias = |b: &Bias| {
        if matches!(b, Bias::None) {
            ""
        } else {
            " +bias"
        }
    };
    match op {
        Op::Conv2d { params: p, .. } => format!(
            "k{}x{} s{}x{} p{}x{} d{}x{} g{} {:?}{}",
            p.kernel.0,
            p.kernel.1,
            p.stride.0,
            p.stride.1,
            p.padding.0,
            p.padding.1,
            p.dilation.0,
            p.dilation.1,
            p.groups,
            p.activation,
            bias(&p.bias)
        ),
        Op::Linear { params: p, .. } => format!("{:?}{}", p.activation, bias(&p.bias)),
        Op::Add { activation, .. } => format!("{activation:?}"),
        Op::FloatLinear { bias, .. } | Op::FloatConv1x1 { bias, .. } => {
            if bias.is_some() {
                "+bias".into()
            } else {
                String::new()
            }
        }
        _ => String::new(),
    }
}

impl QuantizedModel {
    /// A human-readable summary: every op with its inputs, output shape, qparams, attributes,
    /// parameter bytes and kernel; then totals.
    ///
    /// ```
    /// # use qat_core::QParams;
    /// # use qat_runtime::{ModelBuilder, Shape};
    /// let q = QParams { scale: 0.1, zero_point: 0 };
    /// let mut b = ModelBuilder::new();
    /// b.input("x", Shape::new(4, 2, 2), q).unwrap();
    /// b.global_avg_pool("pool", "x", None).unwrap();
    /// let text = b.build("pool").unwrap().inspect();
    /// assert!(text.contains("global_avg_pool") && text.contains("[4, 1, 1]"));
    /// ```
    pub fn inspect(&self) -> String {
        let mut s = String::new();
        let input = self.input();
        let _ = writeln!(
            s,
            "candle-qat int8 model ({} v{}): {} ops, ISA {}, {} thread(s)",
            crate::format::FORMAT,
            crate::format::VERSION,
            self.ops().len(),
            self.isa(),
            self.threads()
        );
        let _ = writeln!(
            s,
            "input  `{}` {} {} (f32 NCHW quantized on entry)",
            input.name,
            input.shape,
            ty(ValueType::U8(input.qparams))
        );
        let kernels = self.kernel_names();
        let mut total = 0usize;
        for (node, (_, kernel)) in self.ops().iter().zip(&kernels) {
            let bytes = node.op.param_bytes();
            total += bytes;
            let _ = writeln!(
                s,
                "  {:<20} {:<16} ({}) -> {} {} {} | {} B | {}",
                node.name,
                node.op.kind(),
                node.op.inputs().join(", "),
                node.shape,
                ty(node.ty),
                attrs(&node.op),
                bytes,
                kernel
            );
        }
        let (shape, t) = self.output_shape();
        let _ = writeln!(s, "output `{}` {} {}", self.output_name(), shape, ty(t));
        let file = self.to_bytes().map_or_else(
            |e| format!("unavailable ({e})"),
            |b| format!("{} bytes", b.len()),
        );
        let _ = writeln!(
            s,
            "parameters: {total} bytes ({:.1} KiB); file size: {file}; buffers pooled now: {} bytes",
            total as f64 / 1024.0,
            self.arena_bytes()
        );
        s
    }
}
