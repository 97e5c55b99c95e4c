//! Build-time shape inference and configuration checks (per-sample shapes: no batch axis).

use crate::error::{GraphError, Result};
use crate::ir::{BnCfg, Conv2dCfg, LinearCfg, Op, PoolCfg};

/// The output shape of `op` (node `name`) on inputs of per-sample shapes `ins`.
pub(crate) fn infer(name: &str, op: &Op, ins: &[&[usize]]) -> Result<Vec<usize>> {
    let err = |msg: String| GraphError::node(name, msg);
    match op.arity() {
        Some(n) if ins.len() != n => {
            return Err(err(format!(
                "{} takes {n} input(s), got {}",
                op.type_name(),
                ins.len()
            )))
        }
        None if ins.len() < 2 => {
            return Err(err(format!(
                "{} takes two or more inputs, got {}",
                op.type_name(),
                ins.len()
            )))
        }
        _ => {}
    }
    match op {
        Op::Input { shape } => {
            if shape.is_empty() || shape.contains(&0) {
                return Err(err(format!("input shape {shape:?} must be non-empty")));
            }
            Ok(shape.clone())
        }
        Op::Conv2d(c) => conv(name, c, ins[0]),
        Op::BatchNorm2d(b) => bn(name, b, ins[0], 3),
        Op::BatchNorm1d(b) => bn(name, b, ins[0], 1),
        Op::Linear(l) => linear(name, l, ins[0]),
        Op::ReLU | Op::ReLU6 | Op::Hardswish | Op::Identity => Ok(ins[0].to_vec()),
        Op::Dropout { p } => {
            if !(0.0..1.0).contains(p) {
                return Err(err(format!("dropout probability {p} not in [0, 1)")));
            }
            Ok(ins[0].to_vec())
        }
        Op::Add | Op::AddAct { .. } => {
            if ins[0] != ins[1] {
                return Err(err(format!(
                    "Add inputs differ in shape: {:?} vs {:?}",
                    ins[0], ins[1]
                )));
            }
            Ok(ins[0].to_vec())
        }
        Op::Concat { axis } => concat(name, *axis, ins),
        Op::GlobalAvgPool => {
            let [c, _, _] = rank3(name, "GlobalAvgPool", ins[0])?;
            Ok(vec![c, 1, 1])
        }
        Op::AvgPool2d(p) | Op::MaxPool2d(p) => pool(name, p, ins[0]),
        Op::Flatten => Ok(vec![ins[0].iter().product()]),
        Op::ConvBn { conv: c, bn: b, .. } => {
            let y = conv(name, c, ins[0])?;
            bn(&b.name, &b.cfg, &y, 3)
        }
        Op::ConvAct { conv: c, .. } => conv(name, c, ins[0]),
        Op::LinearAct { linear: l, .. } => linear(name, l, ins[0]),
        Op::LinearBn { linear: l, bn: b } => {
            let y = linear(name, l, ins[0])?;
            bn(&b.name, &b.cfg, &y, 1)
        }
        Op::BnAct { bn: b, .. } => bn(name, b, ins[0], 3),
    }
}

fn rank3(name: &str, what: &str, x: &[usize]) -> Result<[usize; 3]> {
    match x {
        &[c, h, w] => Ok([c, h, w]),
        _ => Err(GraphError::node(
            name,
            format!("{what} expects a [C, H, W] input, got {x:?}"),
        )),
    }
}

fn conv(name: &str, c: &Conv2dCfg, x: &[usize]) -> Result<Vec<usize>> {
    let err = |msg: String| Err(GraphError::node(name, msg));
    let [ch, h, w] = rank3(name, "Conv2d", x)?;
    if c.in_channels == 0 || c.out_channels == 0 {
        return err("channel counts must be positive".into());
    }
    if c.groups == 0 || c.in_channels % c.groups != 0 || c.out_channels % c.groups != 0 {
        return err(format!(
            "groups {} must divide in_channels {} and out_channels {}",
            c.groups, c.in_channels, c.out_channels
        ));
    }
    if c.kernel.contains(&0) || c.stride == 0 || c.dilation == 0 {
        return err(format!(
            "kernel {:?}, stride {}, dilation {} must be positive",
            c.kernel, c.stride, c.dilation
        ));
    }
    if ch != c.in_channels {
        return err(format!(
            "expects {} input channels, got {ch} (input shape {x:?})",
            c.in_channels
        ));
    }
    let out = |size: usize, k: usize| -> Option<usize> {
        let span = c.dilation * (k - 1) + 1;
        let padded = size + 2 * c.padding;
        (padded >= span).then(|| (padded - span) / c.stride + 1)
    };
    match (out(h, c.kernel[0]), out(w, c.kernel[1])) {
        (Some(oh), Some(ow)) => Ok(vec![c.out_channels, oh, ow]),
        _ => err(format!(
            "kernel {:?} (dilation {}) larger than padded input {h}x{w} (padding {})",
            c.kernel, c.dilation, c.padding
        )),
    }
}

fn bn(name: &str, b: &BnCfg, x: &[usize], rank: usize) -> Result<Vec<usize>> {
    let err = |msg: String| Err(GraphError::node(name, msg));
    if x.len() != rank {
        let want = if rank == 3 { "[C, H, W]" } else { "[F]" };
        return err(format!("BatchNorm expects a {want} input, got {x:?}"));
    }
    if x[0] != b.num_features {
        return err(format!(
            "BatchNorm has {} features, input has {} (shape {x:?})",
            b.num_features, x[0]
        ));
    }
    if b.eps <= 0.0 || !(0.0..=1.0).contains(&b.momentum) {
        return err(format!(
            "eps {} must be > 0 and momentum {} in [0, 1]",
            b.eps, b.momentum
        ));
    }
    Ok(x.to_vec())
}

fn linear(name: &str, l: &LinearCfg, x: &[usize]) -> Result<Vec<usize>> {
    if l.in_features == 0 || l.out_features == 0 {
        return Err(GraphError::node(name, "feature counts must be positive"));
    }
    if x != [l.in_features] {
        return Err(GraphError::node(
            name,
            format!(
                "Linear expects [{}] features, got {x:?} (flatten first)",
                l.in_features
            ),
        ));
    }
    Ok(vec![l.out_features])
}

fn pool(name: &str, p: &PoolCfg, x: &[usize]) -> Result<Vec<usize>> {
    let err = |msg: String| Err(GraphError::node(name, msg));
    let [c, h, w] = rank3(name, "pooling", x)?;
    if p.padding != 0 {
        return err(format!(
            "pool padding {} is unsupported (only 0)",
            p.padding
        ));
    }
    if p.kernel == 0 || p.stride == 0 || p.kernel > h || p.kernel > w {
        return err(format!(
            "pool kernel {} / stride {} invalid for a {h}x{w} input",
            p.kernel, p.stride
        ));
    }
    Ok(vec![
        c,
        (h - p.kernel) / p.stride + 1,
        (w - p.kernel) / p.stride + 1,
    ])
}

fn concat(name: &str, axis: usize, ins: &[&[usize]]) -> Result<Vec<usize>> {
    let err = |msg: String| Err(GraphError::node(name, msg));
    let rank = ins[0].len();
    if axis == 0 || axis > rank {
        return err(format!(
            "concat axis {axis} must be in 1..={rank} (axis 0 is the batch)"
        ));
    }
    let d = axis - 1;
    let mut out = ins[0].to_vec();
    for s in &ins[1..] {
        let same_rest = s.len() == rank && (0..rank).all(|i| i == d || s[i] == ins[0][i]);
        if !same_rest {
            return err(format!(
                "concat inputs {:?} and {s:?} differ outside axis {axis}",
                ins[0]
            ));
        }
        out[d] += s[d];
    }
    Ok(out)
}
