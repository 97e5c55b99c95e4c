//! SGD (momentum, Nesterov, coupled / decoupled weight decay skipping BN and biases) against
//! hand-computed steps, and the cosine warm-up schedule against hand-computed values.

use candle_core::{Device, Tensor, Var};
use qat_graph::{
    BnCfg, Conv2dCfg, CosineWarmup, Graph, GraphModule, ParamKind, Sgd, SgdConfig, WeightDecay,
};

const CPU: Device = Device::Cpu;

fn v(var: &Var) -> Vec<f32> {
    var.as_tensor().to_vec1().unwrap()
}

/// loss = Σ c ⊙ p, so grad = c at every step (constant gradient keeps hand arithmetic easy).
fn run(cfg: SgdConfig, kind: ParamKind, steps: usize) -> Vec<f32> {
    let p = Var::new(&[1.0f32, -2.0], &CPU).unwrap();
    let c = Tensor::new(&[0.5f32, 1.0], &CPU).unwrap();
    let mut opt = Sgd::new(vec![("p".into(), p.clone(), kind)], cfg).unwrap();
    for _ in 0..steps {
        let loss = (p.as_tensor() * &c).unwrap().sum_all().unwrap();
        opt.backward_step(&loss).unwrap();
    }
    v(&p)
}

fn close(a: &[f32], b: &[f64]) {
    for (x, y) in a.iter().zip(b) {
        assert!((*x as f64 - y).abs() < 1e-6, "got {a:?}, want {b:?}");
    }
}

#[test]
fn plain_momentum_and_nesterov_match_hand_steps() {
    let g = [0.5, 1.0];
    let p0 = [1.0, -2.0];
    // Plain SGD, lr 0.1, two steps: p - 2 * 0.1 g.
    let cfg = SgdConfig {
        lr: 0.1,
        ..Default::default()
    };
    close(
        &run(cfg, ParamKind::ConvWeight, 2),
        &[p0[0] - 0.2 * g[0], p0[1] - 0.2 * g[1]],
    );
    // Momentum 0.9: b1 = g, b2 = 0.9 g + g = 1.9 g; p2 = p0 - 0.1 (g + 1.9 g) = p0 - 0.29 g.
    let cfg = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        ..Default::default()
    };
    close(
        &run(cfg, ParamKind::ConvWeight, 2),
        &[p0[0] - 0.29 * g[0], p0[1] - 0.29 * g[1]],
    );
    // Dampening 0.5: b2 = 0.9 g + 0.5 g = 1.4 g; p2 = p0 - 0.1 (1 + 1.4) g.
    let cfg = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        dampening: 0.5,
        ..Default::default()
    };
    close(
        &run(cfg, ParamKind::ConvWeight, 2),
        &[p0[0] - 0.24 * g[0], p0[1] - 0.24 * g[1]],
    );
    // Nesterov: step 1 d = g + 0.9 g = 1.9 g; step 2 b = 1.9 g, d = g + 0.9 * 1.9 g = 2.71 g.
    // p2 = p0 - 0.1 (1.9 + 2.71) g = p0 - 0.461 g.
    let cfg = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        nesterov: true,
        ..Default::default()
    };
    close(
        &run(cfg, ParamKind::ConvWeight, 2),
        &[p0[0] - 0.461 * g[0], p0[1] - 0.461 * g[1]],
    );
}

#[test]
fn weight_decay_coupled_decoupled_and_skipped() {
    // Coupled, one step, momentum 0.9 (first step: buffer = d): d = g + 0.01 p.
    let cfg = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: WeightDecay::Coupled(0.01),
        ..Default::default()
    };
    let want = [
        1.0 - 0.1 * (0.5 + 0.01 * 1.0),
        -2.0 - 0.1 * (1.0 + 0.01 * -2.0),
    ];
    close(&run(cfg, ParamKind::ConvWeight, 1), &want);
    close(&run(cfg, ParamKind::LinearWeight, 1), &want);
    // Decoupled: p (1 - lr wd) - lr g.
    let cfg = SgdConfig {
        lr: 0.1,
        weight_decay: WeightDecay::Decoupled(0.01),
        ..Default::default()
    };
    let want = [1.0 * 0.999 - 0.05, -2.0 * 0.999 - 0.1];
    close(&run(cfg, ParamKind::ConvWeight, 1), &want);
    // BN parameters and biases never decay.
    for kind in [ParamKind::Bias, ParamKind::BnWeight, ParamKind::BnBias] {
        close(&run(cfg, kind, 1), &[1.0 - 0.05, -2.0 - 0.1]);
    }
}

#[test]
fn invalid_configs_are_rejected_and_missing_grads_skipped() {
    let p = Var::new(&[1.0f32], &CPU).unwrap();
    let params = || vec![("p".to_string(), p.clone(), ParamKind::ConvWeight)];
    let nesterov_no_momentum = SgdConfig {
        nesterov: true,
        ..Default::default()
    };
    assert!(Sgd::new(params(), nesterov_no_momentum).is_err());
    let nesterov_dampening = SgdConfig {
        nesterov: true,
        momentum: 0.9,
        dampening: 0.1,
        ..Default::default()
    };
    assert!(Sgd::new(params(), nesterov_dampening).is_err());
    assert!(Sgd::new(
        params(),
        SgdConfig {
            lr: -1.0,
            ..Default::default()
        }
    )
    .is_err());
    assert!(Sgd::new(
        params(),
        SgdConfig {
            lr: f64::NAN,
            ..Default::default()
        }
    )
    .is_err());
    // A parameter the loss does not touch is left alone.
    let q = Var::new(&[3.0f32], &CPU).unwrap();
    let mut opt = Sgd::new(
        vec![
            ("p".into(), p.clone(), ParamKind::ConvWeight),
            ("q".into(), q.clone(), ParamKind::ConvWeight),
        ],
        SgdConfig {
            lr: 0.5,
            momentum: 0.9,
            ..Default::default()
        },
    )
    .unwrap();
    opt.backward_step(&p.as_tensor().sum_all().unwrap())
        .unwrap();
    assert_eq!(v(&p), [0.5]);
    assert_eq!(v(&q), [3.0]);
}

#[test]
fn graph_module_trainable_excludes_buffers_and_flags_decay() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 3, 3]).unwrap();
    let c = g.conv2d("c", x, Conv2dCfg::new(2, 2, 1)).unwrap();
    g.batch_norm2d("bn", c, BnCfg::new(2)).unwrap();
    let m = GraphModule::new(g, 0, &CPU).unwrap();
    let t: Vec<(String, bool)> = m
        .trainable()
        .into_iter()
        .map(|(n, _, k)| (n, k.decays()))
        .collect();
    assert_eq!(
        t,
        [
            ("c.weight".to_string(), true),
            ("c.bias".to_string(), false),
            ("bn.weight".to_string(), false),
            ("bn.bias".to_string(), false)
        ]
    );
}

#[test]
fn cosine_warmup_values() {
    let s = CosineWarmup::new(0.1, 0.001, 4, 14).unwrap();
    let want = |t: usize| -> f64 {
        match t {
            0 => 0.025,
            1 => 0.05,
            2 => 0.075,
            3 => 0.1,
            // cos phase over 10 steps: t = 4 → full, t = 9 → halfway, t = 14 → min.
            4 => 0.1,
            9 => 0.001 + 0.5 * 0.099,
            _ => 0.001,
        }
    };
    for t in [0, 1, 2, 3, 4, 9, 14, 20] {
        assert!(
            (s.lr(t) - want(t)).abs() < 1e-12,
            "t={t}: {} vs {}",
            s.lr(t),
            want(t)
        );
    }
    // Quarter way: min + (base - min)(1 + cos(π/4))/2 ... at t = 4 + 2.5 is not integral; use
    // t = 6: progress 0.2.
    let p = 0.2 * std::f64::consts::PI;
    assert!((s.lr(6) - (0.001 + 0.0495 * (1.0 + p.cos()))).abs() < 1e-12);
    // Monotone non-increasing after warm-up.
    assert!((4..14).all(|t| s.lr(t + 1) <= s.lr(t)));
    assert!(CosineWarmup::new(0.1, 0.2, 0, 10).is_err());
    assert!(CosineWarmup::new(0.1, 0.0, 10, 10).is_err());
}

#[test]
fn sgd_trains_a_small_graph_deterministically() {
    use qat_graph::{params::normal_vec, seeded_rng, LinearCfg};
    let mut g = Graph::new();
    let x = g.input("x", [1, 6, 6]).unwrap();
    let c = g
        .conv2d("c", x, Conv2dCfg::new(1, 4, 3).padding(1).bias(false))
        .unwrap();
    let b = g.batch_norm2d("bn", c, BnCfg::new(4)).unwrap();
    let r = g.relu6("r", b).unwrap();
    let p = g.global_avg_pool("p", r).unwrap();
    let f = g.flatten("f", p).unwrap();
    g.linear(
        "fc",
        f,
        LinearCfg {
            in_features: 4,
            out_features: 2,
            bias: true,
        },
    )
    .unwrap();
    // Class 1 images are brighter on the left half: learnable by conv + pool + linear.
    let n = 32;
    let mut xs = normal_vec(&mut seeded_rng(5), n * 36, 0.0, 0.5);
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 2).collect();
    for (i, &l) in labels.iter().enumerate() {
        for p in 0..36 {
            if l == 1 && p % 6 < 3 {
                xs[i * 36 + p] += 1.5;
            }
        }
    }
    let xt = Tensor::from_vec(xs, (n, 1, 6, 6), &CPU).unwrap();
    let yt = Tensor::new(labels.as_slice(), &CPU).unwrap();
    let train = || {
        let m = GraphModule::new(g.clone(), 11, &CPU).unwrap();
        let cfg = SgdConfig {
            lr: 0.2,
            momentum: 0.9,
            nesterov: true,
            weight_decay: WeightDecay::Coupled(1e-4),
            ..Default::default()
        };
        let mut opt = Sgd::new(m.trainable(), cfg).unwrap();
        let mut losses = Vec::new();
        for _ in 0..40 {
            let logits = m.forward_t(&xt, true).unwrap();
            let loss = candle_nn::loss::cross_entropy(&logits, &yt).unwrap();
            losses.push(loss.to_scalar::<f32>().unwrap());
            opt.backward_step(&loss).unwrap();
        }
        losses
    };
    let a = train();
    assert!(a[39] < 0.5 * a[0], "loss {} -> {}", a[0], a[39]);
    assert_eq!(a, train(), "same seed, same training run");
}

#[test]
fn grad_norm_clipping_matches_hand_steps() {
    // grad = c = [0.5, 1.0], ‖g‖ = √1.25. Clipped to 0.5: g · 0.5 / (√1.25 + 1e-6).
    let norm = 1.25f64.sqrt();
    let k = 0.5 / (norm + 1e-6);
    let cfg = SgdConfig {
        lr: 0.1,
        max_grad_norm: Some(0.5),
        ..Default::default()
    };
    close(
        &run(cfg, ParamKind::ConvWeight, 1),
        &[1.0 - 0.1 * 0.5 * k, -2.0 - 0.1 * 1.0 * k],
    );
    // Weight decay is added after clipping (PyTorch: clip_grad_norm_, then SGD.step).
    let cfg = SgdConfig {
        weight_decay: WeightDecay::Coupled(0.01),
        ..cfg
    };
    close(
        &run(cfg, ParamKind::ConvWeight, 1),
        &[
            1.0 - 0.1 * (0.5 * k + 0.01 * 1.0),
            -2.0 - 0.1 * (1.0 * k + 0.01 * -2.0),
        ],
    );
    // A norm below the limit leaves the step alone.
    let cfg = SgdConfig {
        lr: 0.1,
        max_grad_norm: Some(2.0),
        ..Default::default()
    };
    close(
        &run(cfg, ParamKind::ConvWeight, 1),
        &[1.0 - 0.05, -2.0 - 0.1],
    );
    // The norm is over all parameters together, and reported.
    let a = Var::new(&[3.0f32], &CPU).unwrap();
    let b = Var::new(&[4.0f32], &CPU).unwrap();
    let mut opt = Sgd::new(
        vec![
            ("a".into(), a.clone(), ParamKind::Bias),
            ("b".into(), b.clone(), ParamKind::Bias),
        ],
        SgdConfig {
            lr: 1.0,
            max_grad_norm: Some(1.0),
            ..Default::default()
        },
    )
    .unwrap();
    // loss = (a² + b²) / 2: grad = [3, 4], norm 5 → step [0.6, 0.8].
    let loss = ((a.as_tensor().sqr().unwrap() + b.as_tensor().sqr().unwrap()).unwrap() * 0.5)
        .unwrap()
        .sum_all()
        .unwrap();
    opt.backward_step(&loss).unwrap();
    assert!((opt.last_grad_norm().unwrap() - 5.0).abs() < 1e-6);
    let k = 1.0 / (5.0 + 1e-6);
    close(&v(&a), &[3.0 - 3.0 * k]);
    close(&v(&b), &[4.0 - 4.0 * k]);
    // Bad limits and a NaN gradient are errors, not silent steps.
    for m in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let cfg = SgdConfig {
            max_grad_norm: Some(m),
            ..Default::default()
        };
        let e = Sgd::new(vec![("a".into(), a.clone(), ParamKind::Bias)], cfg)
            .err()
            .expect("rejected")
            .to_string();
        assert!(e.contains("max_grad_norm"), "{e}");
    }
    let mut opt = Sgd::new(
        vec![("a".into(), a.clone(), ParamKind::Bias)],
        SgdConfig {
            max_grad_norm: Some(1.0),
            ..Default::default()
        },
    )
    .unwrap();
    let loss = (a.as_tensor() * f64::NAN).unwrap().sum_all().unwrap();
    let e = opt.backward_step(&loss).unwrap_err().to_string();
    assert!(e.contains("gradient norm"), "{e}");
}
