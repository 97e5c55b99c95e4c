//! The small QAT graph and training step the fused-train tests share: a 1×1 conv + BN +
//! ReLU6, a depthwise stride-2 conv + BN + ReLU6, a 1×1 projection + BN, pool and a linear
//! head — every fused Conv+BN kind the QAT forward routes.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use qat_graph::{BnCfg, Conv2dCfg, Graph, LinearCfg, QatGraph};

/// The graph, input `[4, 9, 9]`.
pub fn graph() -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", [4, 9, 9]).unwrap();
    // 1×1 conv with a bias (the un-scaling's shift) + BN + ReLU6.
    let a = g
        .conv2d("a.0", x, Conv2dCfg::new(4, 12, 1).bias(true))
        .unwrap();
    let a = g.batch_norm2d("a.1", a, BnCfg::new(12)).unwrap();
    let a = g.relu6("a.2", a).unwrap();
    // Depthwise stride 2 + BN + ReLU6.
    let b = g
        .conv2d(
            "b.0",
            a,
            Conv2dCfg::new(12, 12, 3)
                .stride(2)
                .padding(1)
                .groups(12)
                .bias(false),
        )
        .unwrap();
    let b = g.batch_norm2d("b.1", b, BnCfg::new(12)).unwrap();
    let b = g.relu6("b.2", b).unwrap();
    // 1×1 projection + BN, no activation.
    let c = g
        .conv2d("c.0", b, Conv2dCfg::new(12, 6, 1).bias(false))
        .unwrap();
    let c = g.batch_norm2d("c.1", c, BnCfg::new(6)).unwrap();
    let p = g.global_avg_pool("pool", c).unwrap();
    let f = g.flatten("flatten", p).unwrap();
    g.linear(
        "fc",
        f,
        LinearCfg {
            in_features: 6,
            out_features: 5,
            bias: true,
        },
    )
    .unwrap();
    g
}

/// A deterministic `[3, 4, 9, 9]` input in [-2, 2).
pub fn input(seed: u64) -> Tensor {
    let n = 3 * 4 * 9 * 9;
    let v: Vec<f32> = (0..n)
        .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 250.0) - 2.0)
        .collect();
    Tensor::from_vec(v, (3, 4, 9, 9), &Device::Cpu).unwrap()
}

/// The loss `Σ y·r`, its value and every trainable parameter's gradient by name.
pub fn step(q: &QatGraph, x: &Tensor) -> (Vec<f32>, HashMap<String, Vec<f32>>) {
    let y = q.forward_t(x, true).unwrap();
    let r = Tensor::arange(0f32, y.elem_count() as f32, &Device::Cpu)
        .unwrap()
        .reshape(y.dims())
        .unwrap()
        .cos()
        .unwrap();
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let g = q
        .trainable()
        .into_iter()
        .map(|(name, var, _)| {
            let g = grads
                .get(var.as_tensor())
                .expect("every parameter has a gradient");
            (name, g.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        })
        .collect();
    (y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), g)
}
