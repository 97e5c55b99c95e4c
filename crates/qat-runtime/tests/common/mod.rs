//! Shared test helpers: a deterministic small model and an independent scalar reference built
//! only from qat-core's normative formulas (plain loops, no kernel code).
#![allow(dead_code)]

use qat_core::{QDType, QParams};
use qat_runtime::{
    Activation, Bias, Conv2dParams, LinearParams, ModelBuilder, ModelOptions, QuantizedModel, Shape,
};
use rand::{Rng, SeedableRng};

pub fn q(scale: f32, zero_point: i32) -> QParams {
    QParams { scale, zero_point }
}

pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

pub fn weights(r: &mut impl Rng, n: usize) -> Vec<i8> {
    (0..n).map(|_| r.gen_range(-128i32..=127) as i8).collect()
}

pub fn scales(r: &mut impl Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| r.gen_range(lo..hi)).collect()
}

pub fn inputs(r: &mut impl Rng, n: usize, amp: f32) -> Vec<f32> {
    (0..n).map(|_| r.gen_range(-amp..amp)).collect()
}

/// A quantized NHWC tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct QT {
    pub data: Vec<u8>,
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub q: QParams,
}

/// Quantize f32 NCHW → u8 NHWC with qat-core's formula.
pub fn ref_quantize_nchw(x: &[f32], n: usize, s: Shape, qp: QParams) -> QT {
    let mut data = vec![0u8; x.len()];
    for b in 0..n {
        for c in 0..s.c {
            for y in 0..s.h {
                for xx in 0..s.w {
                    let v = x[((b * s.c + c) * s.h + y) * s.w + xx];
                    data[((b * s.h + y) * s.w + xx) * s.c + c] =
                        qat_core::quantize(v, qp, QDType::quint8()) as u8;
                }
            }
        }
    }
    QT {
        data,
        n,
        h: s.h,
        w: s.w,
        c: s.c,
        q: qp,
    }
}

/// Quantize f32 NHWC → u8 NHWC.
pub fn ref_quantize_nhwc(x: &[f32], like: &QT, qp: QParams) -> QT {
    QT {
        data: x
            .iter()
            .map(|&v| qat_core::quantize(v, qp, QDType::quint8()) as u8)
            .collect(),
        q: qp,
        ..like.clone()
    }
}

fn bounds(out: QParams, act: Activation) -> (i32, i32) {
    match act {
        Activation::None => (0, 255),
        Activation::Relu => (out.zero_point, 255),
        Activation::Relu6 => {
            let six = qat_core::quantize(6.0, out, QDType::quint8());
            (out.zero_point, six.max(out.zero_point))
        }
        Activation::Clamp { qmin, qmax } => (qmin as i32, qmax as i32),
    }
}

fn bias_i32(b: &Bias, in_s: f32, ws: &[f32], oc: usize) -> i32 {
    match b {
        Bias::None => 0,
        Bias::I32(v) => v[oc],
        Bias::F32(v) => (v[oc] as f64 / (in_s as f64 * ws[oc] as f64)).round_ties_even() as i32,
    }
}

/// Direct convolution on NHWC u8 with OIHW weights: Σ w · (x − zp) with padding contributing
/// 0, then `qat_core::requantize`.
pub fn ref_conv(x: &QT, p: &Conv2dParams) -> QT {
    let (kh, kw) = p.kernel;
    let (sh, sw) = p.stride;
    let (ph, pw) = p.padding;
    let (dh, dw) = p.dilation;
    let oh = (x.h + 2 * ph - dh * (kh - 1) - 1) / sh + 1;
    let ow = (x.w + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
    let (co, g) = (p.out_channels, p.groups);
    let (cg, og) = (x.c / g, co / g);
    let (lo, hi) = bounds(p.output, p.activation);
    let mut data = vec![0u8; x.n * oh * ow * co];
    for b in 0..x.n {
        for oy in 0..oh {
            for ox in 0..ow {
                for oc in 0..co {
                    let grp = oc / og;
                    let mut acc: i64 = bias_i32(&p.bias, x.q.scale, &p.weight_scales, oc) as i64;
                    for ic in 0..cg {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * sh + ky * dh) as isize - ph as isize;
                                let ix = (ox * sw + kx * dw) as isize - pw as isize;
                                if iy < 0 || ix < 0 || iy as usize >= x.h || ix as usize >= x.w {
                                    continue;
                                }
                                let xv = x.data[((b * x.h + iy as usize) * x.w + ix as usize) * x.c
                                    + grp * cg
                                    + ic] as i64
                                    - x.q.zero_point as i64;
                                let wv = p.weight[((oc * cg + ic) * kh + ky) * kw + kx] as i64;
                                acc += xv * wv;
                            }
                        }
                    }
                    let m = qat_core::requant_multiplier(
                        x.q.scale,
                        p.weight_scales[oc],
                        p.output.scale,
                    );
                    data[((b * oh + oy) * ow + ox) * co + oc] =
                        qat_core::requantize(acc as i32, m, p.output.zero_point, lo, hi) as u8;
                }
            }
        }
    }
    QT {
        data,
        n: x.n,
        h: oh,
        w: ow,
        c: co,
        q: p.output,
    }
}

/// Linear on a `[C, 1, 1]` tensor: a 1×1 convolution.
pub fn ref_linear(x: &QT, p: &LinearParams) -> QT {
    ref_conv(
        x,
        &Conv2dParams {
            out_channels: p.out_features,
            kernel: (1, 1),
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
            weight: p.weight.clone(),
            weight_scales: p.weight_scales.clone(),
            bias: p.bias.clone(),
            output: p.output,
            activation: p.activation,
        },
    )
}

pub fn ref_add(a: &QT, b: &QT, out: QParams, act: Activation) -> QT {
    let (ma, mb) = qat_core::add_multipliers(a.q.scale, b.q.scale, out.scale);
    let (lo, hi) = bounds(out, act);
    let data = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(&x, &y)| {
            qat_core::quantized_add(
                x as i32,
                a.q.zero_point,
                ma,
                y as i32,
                b.q.zero_point,
                mb,
                out.zero_point,
                lo,
                hi,
            ) as u8
        })
        .collect();
    QT {
        data,
        q: out,
        ..a.clone()
    }
}

pub fn ref_gap(x: &QT, out: QParams) -> QT {
    let area = x.h * x.w;
    let m = qat_core::avg_pool_multiplier(x.q.scale, out.scale, area);
    let mut data = vec![0u8; x.n * x.c];
    for b in 0..x.n {
        for c in 0..x.c {
            let sum: i32 = (0..area)
                .map(|p| x.data[(b * area + p) * x.c + c] as i32)
                .sum();
            data[b * x.c + c] =
                qat_core::global_avg_pool(sum, area, x.q.zero_point, m, out.zero_point, 0, 255)
                    as u8;
        }
    }
    QT {
        data,
        n: x.n,
        h: 1,
        w: 1,
        c: x.c,
        q: out,
    }
}

pub fn ref_dequant(x: &QT) -> Vec<f32> {
    x.data
        .iter()
        .map(|&v| qat_core::dequantize(v as i32, x.q))
        .collect()
}

/// The parameters of the small test model.
pub struct Small {
    pub input: QParams,
    pub shape: Shape,
    pub conv1: Conv2dParams,
    pub dw: Conv2dParams,
    pub pw: Conv2dParams,
    pub skip: Conv2dParams,
    pub add_q: QParams,
    pub pool_q: QParams,
    pub fc: LinearParams,
}

#[allow(clippy::too_many_arguments)]
pub fn conv(
    r: &mut impl Rng,
    ci: usize,
    co: usize,
    k: usize,
    stride: usize,
    pad: usize,
    groups: usize,
    bias: Bias,
    output: QParams,
    activation: Activation,
) -> Conv2dParams {
    Conv2dParams {
        out_channels: co,
        kernel: (k, k),
        stride: (stride, stride),
        padding: (pad, pad),
        dilation: (1, 1),
        groups,
        weight: weights(r, co * (ci / groups) * k * k),
        weight_scales: scales(r, co, 0.002, 0.006),
        bias,
        output,
        activation,
    }
}

/// quantize → conv 3×3 s1 + ReLU → depthwise 3×3 s2 + ReLU6 → 1×1 conv → add with a skip
/// branch (1×1 s2 grouped conv of conv1) + ReLU → global avg pool → flatten → linear →
/// dequantize.
pub fn small(seed: u64) -> Small {
    let mut r = rng(seed);
    let c = 8;
    let bias_f: Vec<f32> = inputs(&mut r, c, 0.3);
    let bias_i: Vec<i32> = (0..c).map(|_| r.gen_range(-3000..3000)).collect();
    Small {
        input: q(0.02, 128),
        shape: Shape::new(3, 11, 9),
        conv1: conv(
            &mut r,
            3,
            c,
            3,
            1,
            1,
            1,
            Bias::F32(bias_f),
            q(0.05, 3),
            Activation::Relu,
        ),
        dw: conv(
            &mut r,
            c,
            c,
            3,
            2,
            1,
            c,
            Bias::I32(bias_i.clone()),
            q(0.03, 2),
            Activation::Relu6,
        ),
        pw: conv(
            &mut r,
            c,
            c,
            1,
            1,
            0,
            1,
            Bias::None,
            q(0.04, 120),
            Activation::None,
        ),
        skip: conv(
            &mut r,
            c,
            c,
            1,
            2,
            0,
            2,
            Bias::I32(bias_i),
            q(0.045, 100),
            Activation::None,
        ),
        add_q: q(0.06, 10),
        pool_q: q(0.02, 5),
        fc: LinearParams {
            out_features: 10,
            weight: weights(&mut r, 10 * c),
            weight_scales: scales(&mut r, 10, 0.002, 0.006),
            bias: Bias::F32(inputs(&mut r, 10, 0.5)),
            output: q(0.01, 128),
            activation: Activation::None,
        },
    }
}

pub fn build_small(s: &Small, options: ModelOptions) -> QuantizedModel {
    let mut b = ModelBuilder::new();
    b.input("x", s.shape, s.input).unwrap();
    b.conv2d("conv1", "x", s.conv1.clone()).unwrap();
    b.conv2d("dw", "conv1", s.dw.clone()).unwrap();
    b.conv2d("pw", "dw", s.pw.clone()).unwrap();
    b.conv2d("skip", "conv1", s.skip.clone()).unwrap();
    b.add("add", "pw", "skip", s.add_q, Activation::Relu)
        .unwrap();
    b.global_avg_pool("pool", "add", Some(s.pool_q)).unwrap();
    b.flatten("flat", "pool").unwrap();
    b.linear("fc", "flat", s.fc.clone()).unwrap();
    b.dequantize("logits", "fc").unwrap();
    b.build_with("logits", options).unwrap()
}

/// Every value of the small model per the reference, by name.
pub fn reference_small(s: &Small, x: &[f32], n: usize) -> Vec<(&'static str, QT)> {
    let xq = ref_quantize_nchw(x, n, s.shape, s.input);
    let c1 = ref_conv(&xq, &s.conv1);
    let dw = ref_conv(&c1, &s.dw);
    let pw = ref_conv(&dw, &s.pw);
    let skip = ref_conv(&c1, &s.skip);
    let add = ref_add(&pw, &skip, s.add_q, Activation::Relu);
    let pool = ref_gap(&add, s.pool_q);
    let fc = ref_linear(&pool, &s.fc);
    vec![
        ("x", xq),
        ("conv1", c1),
        ("dw", dw),
        ("pw", pw),
        ("skip", skip),
        ("add", add),
        ("pool", pool.clone()),
        ("flat", pool),
        ("fc", fc),
    ]
}
