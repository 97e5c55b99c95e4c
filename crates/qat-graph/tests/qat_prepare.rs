//! `prepare_qat` / `prepare` on a small MobileNet-like graph: where the fake-quants go,
//! gradients, eval output against a hand composition of fake-quant ops around plain candle
//! ops, observer / fake-quant switches, BN freezing, float islands, PTQ calibration, LSQ.

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use qat_fakequant::{fake_quantize_per_channel, fake_quantize_per_tensor};
use qat_graph::qat::Boundary;
use qat_graph::{
    prepare, prepare_qat_module, BnCfg, Conv2dCfg, Graph, GraphModule, LinearCfg, OpsPath, QConfig,
    QatGraph,
};

fn graph() -> Graph {
    let mut g = Graph::new();
    let x = g.input("x", [3, 10, 10]).unwrap();
    let a = g
        .conv2d(
            "features.0.0",
            x,
            Conv2dCfg::new(3, 8, 3).padding(1).bias(false),
        )
        .unwrap();
    let a = g.batch_norm2d("features.0.1", a, BnCfg::new(8)).unwrap();
    let a = g.relu6("features.0.2", a).unwrap();
    let b = g
        .conv2d(
            "features.1.0",
            a,
            Conv2dCfg::new(8, 8, 3).padding(1).groups(8).bias(false),
        )
        .unwrap();
    let b = g.batch_norm2d("features.1.1", b, BnCfg::new(8)).unwrap();
    let b = g.relu6("features.1.2", b).unwrap();
    let c = g
        .conv2d("features.2.0", b, Conv2dCfg::new(8, 8, 1).bias(false))
        .unwrap();
    let c = g.batch_norm2d("features.2.1", c, BnCfg::new(8)).unwrap();
    let s = g.add("add", c, a).unwrap();
    let p = g.global_avg_pool("pool", s).unwrap();
    let f = g.flatten("flatten", p).unwrap();
    g.linear(
        "classifier",
        f,
        LinearCfg {
            in_features: 8,
            out_features: 5,
            bias: true,
        },
    )
    .unwrap();
    g
}

fn module(seed: u64) -> GraphModule {
    let mut m = GraphModule::new(graph(), seed, &Device::Cpu).unwrap();
    // The hand composition below uses candle's ops: same arithmetic, same rounding.
    m.set_ops_path(OpsPath::Candle);
    m
}

fn input(seed: u64, n: usize) -> Tensor {
    let mut rng = qat_graph::seeded_rng(seed);
    let v = qat_graph::params::normal_vec(&mut rng, n * 300, 0.0, 1.0);
    Tensor::from_vec(v, (n, 3, 10, 10), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

const FQ_NAMES: [&str; 10] = [
    "x.activation_post_process",
    "features.0.0.weight_fake_quant",
    "features.0.0.activation_post_process",
    "features.1.0.weight_fake_quant",
    "features.1.0.activation_post_process",
    "features.2.0.weight_fake_quant",
    "features.2.0.activation_post_process",
    "add.activation_post_process",
    "classifier.weight_fake_quant",
    "classifier.activation_post_process",
];

#[test]
fn qat_prepare_places_fake_quants() {
    let q = prepare_qat_module(module(1), &QConfig::default_qat()).unwrap();
    assert_eq!(q.fake_quant_names(), FQ_NAMES);
    assert_eq!(
        q.boundaries(),
        [Boundary::DeQuant {
            producer: "classifier".into(),
            consumer: None
        }]
    );
    let types: Vec<String> = q.graph().nodes().iter().map(|n| n.op.type_name()).collect();
    assert_eq!(
        types,
        [
            "Input",
            "ConvBnReLU62d",
            "ConvBnReLU62d",
            "ConvBn2d",
            "Add",
            "GlobalAvgPool",
            "Flatten",
            "Linear"
        ]
    );
}

#[test]
fn qat_gradients_reach_every_parameter() {
    let q = prepare_qat_module(module(2), &QConfig::default_qat()).unwrap();
    let x = Var::from_tensor(&input(3, 4)).unwrap();
    let y = q.forward_t(x.as_tensor(), true).unwrap();
    assert_eq!(y.dims(), &[4, 5]);
    let w = Tensor::arange(0f32, 20.0, &Device::Cpu)
        .unwrap()
        .reshape((4, 5))
        .unwrap()
        .sin()
        .unwrap();
    let grads = (y * w).unwrap().sum_all().unwrap().backward().unwrap();
    let params = q.trainable();
    assert_eq!(params.len(), 11); // 3 conv weights, 3 × BN γ/β, linear weight and bias
    for (name, var, _) in params.iter().chain(std::iter::once(&(
        "input".to_string(),
        x.clone(),
        qat_graph::ParamKind::Bias,
    ))) {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let v = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            v.iter().all(|x| x.is_finite()),
            "{name}: non-finite gradient"
        );
        assert!(v.iter().any(|&x| x != 0.0), "{name}: all-zero gradient");
    }
}

/// The scale / zero point of a fake-quant module as per-tensor values.
fn qp(q: &QatGraph, name: &str) -> (Vec<f32>, Vec<i32>) {
    q.fake_quant(name).unwrap().qparams().unwrap()
}

fn fq_act(q: &QatGraph, name: &str, t: &Tensor) -> Tensor {
    let (s, z) = qp(q, name);
    fake_quantize_per_tensor(t, s[0], z[0], 0, 255).unwrap()
}

fn fq_weight(q: &QatGraph, name: &str, w: &Tensor) -> Tensor {
    let (s, z) = qp(q, name);
    let n = s.len();
    let s = Tensor::from_vec(s, n, &Device::Cpu).unwrap();
    let z: Vec<f32> = z.iter().map(|&v| v as f32).collect();
    let z = Tensor::from_vec(z, n, &Device::Cpu).unwrap();
    fake_quantize_per_channel(w, &s, &z, 0, -128, 127).unwrap()
}

/// Eval-mode QAT Conv+BN by hand: fold with running stats, fake-quant, conv, unfold, BN.
fn conv_bn_eval(
    q: &QatGraph,
    vars: &HashMap<String, Tensor>,
    conv: &str,
    bn: &str,
    x: &Tensor,
    groups: usize,
    pad: usize,
) -> Tensor {
    let v = |n: &str| vars[n].clone();
    let rstd = (v(&format!("{bn}.running_var")) + 1e-5)
        .unwrap()
        .sqrt()
        .unwrap();
    let sf = v(&format!("{bn}.weight")).div(&rstd).unwrap();
    let w = v(&format!("{conv}.weight"))
        .broadcast_mul(&sf.reshape((8, 1, 1, 1)).unwrap())
        .unwrap();
    let w = fq_weight(q, &format!("{conv}.weight_fake_quant"), &w);
    let y = x.conv2d(&w, pad, 1, 1, groups).unwrap();
    let y = y.broadcast_div(&sf.reshape((1, 8, 1, 1)).unwrap()).unwrap();
    let scale = v(&format!("{bn}.weight")).div(&rstd).unwrap();
    let shift =
        (v(&format!("{bn}.bias")) - (v(&format!("{bn}.running_mean")) * &scale).unwrap()).unwrap();
    y.broadcast_mul(&scale.reshape((1, 8, 1, 1)).unwrap())
        .unwrap()
        .broadcast_add(&shift.reshape((1, 8, 1, 1)).unwrap())
        .unwrap()
}

#[test]
fn qat_eval_equals_hand_composition() {
    let q = prepare_qat_module(module(4), &QConfig::default_qat()).unwrap();
    for s in 0..3 {
        q.forward_t(&input(10 + s, 4), true).unwrap();
    }
    q.enable_observers(false);
    let x = input(20, 3);
    let got = q.forward_t(&x, false).unwrap();

    let vars: HashMap<String, Tensor> = q.state().unwrap();
    let a = fq_act(&q, "x.activation_post_process", &x);
    let a = conv_bn_eval(&q, &vars, "features.0.0", "features.0.1", &a, 1, 1)
        .clamp(0f32, 6f32)
        .unwrap();
    let a = fq_act(&q, "features.0.0.activation_post_process", &a);
    let b = conv_bn_eval(&q, &vars, "features.1.0", "features.1.1", &a, 8, 1)
        .clamp(0f32, 6f32)
        .unwrap();
    let b = fq_act(&q, "features.1.0.activation_post_process", &b);
    let c = conv_bn_eval(&q, &vars, "features.2.0", "features.2.1", &b, 1, 0);
    let c = fq_act(&q, "features.2.0.activation_post_process", &c);
    let s = fq_act(&q, "add.activation_post_process", &(c + &a).unwrap());
    // The pooled mean is rounded back onto the add's grid, as the int8 pool does.
    let p = s.mean_keepdim((2, 3)).unwrap();
    let p = fq_act(&q, "add.activation_post_process", &p)
        .flatten_from(1)
        .unwrap();
    let w = fq_weight(
        &q,
        "classifier.weight_fake_quant",
        &vars["classifier.weight"],
    );
    let y = p
        .matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(&vars["classifier.bias"])
        .unwrap();
    let want = fq_act(&q, "classifier.activation_post_process", &y);
    let d = max_abs_diff(&got, &want);
    assert!(d <= 1e-6, "QAT eval vs hand composition: max |d| = {d}");
    // The output really is on the classifier's quantization grid.
    let (s, z) = qp(&q, "classifier.activation_post_process");
    for v in got.flatten_all().unwrap().to_vec1::<f32>().unwrap() {
        let k = v / s[0] + z[0] as f32;
        assert!((k - k.round()).abs() < 1e-3, "{v} is off the grid");
    }
}

#[test]
fn qat_switches_behave() {
    let q = prepare_qat_module(module(5), &QConfig::default_qat()).unwrap();
    let float = q.module(); // the same variables, run in float
    q.forward_t(&input(30, 4), true).unwrap();
    let names = q.fake_quant_names();
    let snapshot =
        |q: &QatGraph| -> Vec<(Vec<f32>, Vec<i32>)> { names.iter().map(|n| qp(q, n)).collect() };

    // Observers off: qparams frozen even for a very different input, in train and eval.
    q.enable_observers(false);
    let before = snapshot(&q);
    let big = (input(31, 4) * 50.0).unwrap();
    q.forward_t(&big, true).unwrap();
    q.forward_t(&big, false).unwrap();
    assert_eq!(snapshot(&q), before);
    // Observers on again: they move (in eval mode too, as in PyTorch).
    q.enable_observers(true);
    q.forward_t(&big, false).unwrap();
    assert_ne!(qp(&q, "x.activation_post_process"), before[0]);

    // Fake quant off everywhere: the float model (BN folded and unfolded: ~1 ulp apart).
    q.enable_observers(false);
    q.enable_fake_quant(false);
    let x = input(32, 2);
    let d = max_abs_diff(
        &q.forward_t(&x, false).unwrap(),
        &float.forward_t(&x, false).unwrap(),
    );
    assert!(d < 1e-5, "fake quant off vs float: {d}");
    // On for one node only.
    q.enable_fake_quant_for("add", true).unwrap();
    for n in &names {
        let on = q.fake_quant(n).unwrap().fake_quant_enabled().unwrap();
        assert_eq!(on, n.starts_with("add."), "{n}");
    }
    let y = q.forward_t(&x, false).unwrap();
    // (The classifier's small initial weights shrink the difference; it is not zero.)
    assert!(max_abs_diff(&y, &float.forward_t(&x, false).unwrap()) > 0.0);
    q.enable_observers_for("features.1.0", true).unwrap();
    for n in &names {
        let on = q.fake_quant(n).unwrap().observer_enabled().unwrap();
        assert_eq!(on, n.starts_with("features.1.0."), "{n}");
    }
    // By kind: weight observers only, then activation observers only.
    q.enable_observers(false);
    q.enable_weight_observers(true);
    for n in &names {
        let on = q.fake_quant(n).unwrap().observer_enabled().unwrap();
        assert_eq!(on, n.ends_with(".weight_fake_quant"), "{n}");
    }
    q.enable_observers(true);
    q.enable_weight_observers(false);
    q.enable_activation_observers(true);
    for n in &names {
        let on = q.fake_quant(n).unwrap().observer_enabled().unwrap();
        assert_eq!(on, n.ends_with(".activation_post_process"), "{n}");
    }
    q.enable_activation_observers(false);
    assert!(names
        .iter()
        .all(|n| !q.fake_quant(n).unwrap().observer_enabled().unwrap()));
    let e = q
        .enable_fake_quant_for("nope", true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope") && e.contains("no such node"), "{e}");
    let e = q
        .enable_observers_for("pool", true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no fake-quant"), "{e}");

    // State export: PyTorch-like names.
    let st = q.state().unwrap();
    for k in [
        "features.0.0.weight",
        "features.0.1.running_var",
        "features.0.0.weight_fake_quant.scale",
        "features.0.0.weight_fake_quant.zero_point",
        "features.0.0.weight_fake_quant.activation_post_process.min_val",
        "add.activation_post_process.scale",
        "x.activation_post_process.activation_post_process.max_val",
        "classifier.activation_post_process.fake_quant_enabled",
    ] {
        assert!(st.contains_key(k), "state lacks {k}");
    }
    // ... and it loads back into a fresh prepared graph.
    let q2 = prepare_qat_module(module(5), &QConfig::default_qat()).unwrap();
    q2.load_fake_quant_state(&st).unwrap();
    for n in &names {
        assert_eq!(qp(&q2, n), qp(&q, n), "{n}");
    }
}

#[test]
fn qat_freeze_bn_stats_stops_running_stat_updates() {
    let q = prepare_qat_module(module(6), &QConfig::default_qat()).unwrap();
    let rm = |q: &QatGraph| {
        q.state().unwrap()["features.1.1.running_mean"]
            .to_vec1::<f32>()
            .unwrap()
    };
    let r0 = rm(&q);
    q.forward_t(&input(40, 4), true).unwrap();
    let r1 = rm(&q);
    assert_ne!(r0, r1);
    q.freeze_bn_stats();
    q.forward_t(&input(41, 4), true).unwrap();
    assert_eq!(rm(&q), r1);
    // Frozen train mode normalises with running statistics: equals eval (observers off).
    q.enable_observers(false);
    let x = input(42, 2);
    let d = max_abs_diff(
        &q.forward_t(&x, true).unwrap(),
        &q.forward_t(&x, false).unwrap(),
    );
    assert_eq!(d, 0.0);
    q.update_bn_stats();
    q.forward_t(&input(43, 4), true).unwrap();
    assert_ne!(rm(&q), r1);
}

#[test]
fn qat_float_island_gets_quant_and_dequant() {
    let qc = QConfig::default_qat().with_name("features.1.0", None);
    let q = prepare_qat_module(module(7), &qc).unwrap();
    let names = q.fake_quant_names();
    assert!(!names.contains(&"features.1.0.weight_fake_quant".to_string()));
    assert!(names.contains(&"features.1.0.activation_post_process".to_string()));
    assert!(q.node("features.1.0").unwrap().is_quant_stub);
    assert_eq!(
        q.boundaries(),
        [
            Boundary::Quant {
                node: "features.1.0".into()
            },
            Boundary::DeQuant {
                producer: "features.0.0".into(),
                consumer: Some("features.1.0".into())
            },
            Boundary::DeQuant {
                producer: "classifier".into(),
                consumer: None
            },
        ]
    );
    let y = q.forward_t(&input(50, 2), true).unwrap();
    assert!(y
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_finite()));

    // A float classifier: its input is dequantized, nothing after it is fake-quantized.
    let q = prepare_qat_module(
        module(7),
        &QConfig::default_qat().with_op_type("Linear", None),
    )
    .unwrap();
    assert_eq!(q.fake_quant_names(), FQ_NAMES[..8]);
    assert_eq!(
        q.boundaries(),
        [Boundary::DeQuant {
            producer: "flatten".into(),
            consumer: Some("classifier".into())
        }]
    );
}

#[test]
fn qat_ptq_calibration_observes_without_fake_quant() {
    let q = prepare(module(8), &QConfig::ptq()).unwrap();
    let float = q.module();
    assert_eq!(q.fake_quant_names(), FQ_NAMES);
    let batches: Vec<Tensor> = (0..3).map(|s| input(60 + s, 4)).collect();
    q.calibrate(&batches).unwrap();
    let x = input(70, 2);
    let d = max_abs_diff(
        &q.forward_t(&x, false).unwrap(),
        &float.forward_t(&x, false).unwrap(),
    );
    assert!(d < 1e-5, "calibration changed the output: {d}");
    // Observe-only modules stay off even when switched on.
    q.enable_fake_quant(true);
    for n in FQ_NAMES {
        let f = q.fake_quant(n).unwrap();
        assert!(!f.fake_quant_enabled().unwrap(), "{n}");
        let (s, _) = f.qparams().unwrap();
        assert!(
            s.iter().all(|&s| s != 1.0 && s > 0.0),
            "{n}: not calibrated ({s:?})"
        );
    }
}

#[test]
fn qat_lsq_scales_learn() {
    let q = prepare_qat_module(module(9), &QConfig::lsq(4).unwrap()).unwrap();
    q.forward_t(&input(80, 4), true).unwrap(); // static estimate
    q.enable_observers(false); // LSQ: learn from here on
    let y = q.forward_t(&input(81, 4), true).unwrap();
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let lsq: Vec<_> = q
        .trainable()
        .into_iter()
        .filter(|(n, _, _)| n.ends_with(".scale"))
        .collect();
    assert_eq!(lsq.len(), FQ_NAMES.len());
    let with_grad = lsq
        .iter()
        .filter(|(_, v, _)| {
            grads.get(v.as_tensor()).is_some_and(|g| {
                g.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .any(|&x| x != 0.0)
            })
        })
        .count();
    assert_eq!(with_grad, lsq.len());
}

#[test]
fn qat_pytorch_state_loading_maps_names_and_checks_coverage() {
    let q = prepare_qat_module(module(11), &QConfig::default_qat()).unwrap();
    q.forward_t(&input(90, 4), true).unwrap();
    // Our state under PyTorch's eager names: the input stub is `quant`, a fused BN lives
    // under `<conv>.bn`.
    let to_pytorch = |k: &str| -> String {
        if let Some(r) = k.strip_prefix("x.") {
            return format!("quant.{r}");
        }
        for (bn, conv) in [
            ("features.0.1.", "features.0.0"),
            ("features.1.1.", "features.1.0"),
            ("features.2.1.", "features.2.0"),
        ] {
            if let Some(r) = k.strip_prefix(bn) {
                return format!("{conv}.bn.{r}");
            }
        }
        k.to_string()
    };
    let mut sd: HashMap<String, Tensor> = q
        .state()
        .unwrap()
        .into_iter()
        .map(|(k, v)| (to_pytorch(&k), v))
        .collect();
    let extra = "features.5.skip_add.activation_post_process.scale".to_string();
    sd.insert(extra.clone(), Tensor::new(&[1f32], &Device::Cpu).unwrap());

    let q2 = prepare_qat_module(module(12), &QConfig::default_qat()).unwrap();
    assert_eq!(q2.load_pytorch_qat_state(&sd).unwrap(), [extra]);
    let (s1, s2) = (q.state().unwrap(), q2.state().unwrap());
    for k in [
        "features.1.1.running_var",
        "features.0.0.weight",
        "x.activation_post_process.scale",
        "features.2.0.weight_fake_quant.scale",
    ] {
        let v = |s: &HashMap<String, Tensor>| s[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v(&s1), v(&s2), "{k}");
    }
    let x = input(91, 2);
    q.enable_observers(false);
    q2.enable_observers(false);
    assert_eq!(
        max_abs_diff(
            &q.forward_t(&x, false).unwrap(),
            &q2.forward_t(&x, false).unwrap()
        ),
        0.0
    );

    sd.remove("features.1.0.bn.running_var");
    let e = q2.load_pytorch_qat_state(&sd).unwrap_err().to_string();
    assert!(e.contains("features.1.1.running_var"), "{e}");
}

#[test]
fn qat_conv_relu6_and_linear_relu_fake_quantize_weights_inside() {
    let mut g = Graph::new();
    let x = g.input("x", [3, 10, 10]).unwrap();
    let c = g
        .conv2d("conv", x, Conv2dCfg::new(3, 8, 3).stride(2).padding(1))
        .unwrap();
    let c = g.relu6("conv_act", c).unwrap();
    let f = g.flatten("flatten", c).unwrap();
    let fc = LinearCfg {
        in_features: 8 * 25,
        out_features: 6,
        bias: true,
    };
    let l = g.linear("fc", f, fc).unwrap();
    g.relu("fc_act", l).unwrap();
    let mut m = GraphModule::new(g, 13, &Device::Cpu).unwrap();
    m.set_ops_path(OpsPath::Candle);
    let q = prepare_qat_module(m, &QConfig::default_qat()).unwrap();
    let types: Vec<String> = q.graph().nodes().iter().map(|n| n.op.type_name()).collect();
    assert_eq!(types, ["Input", "ConvReLU62d", "Flatten", "LinearReLU"]);
    assert_eq!(
        q.fake_quant_names(),
        [
            "x.activation_post_process",
            "conv.weight_fake_quant",
            "conv.activation_post_process",
            "fc.weight_fake_quant",
            "fc.activation_post_process"
        ]
    );
    q.forward_t(&input(100, 4), true).unwrap();
    q.enable_observers(false);
    let x = input(101, 2);
    let got = q.forward_t(&x, false).unwrap();
    let st = q.state().unwrap();
    let a = fq_act(&q, "x.activation_post_process", &x);
    let w = fq_weight(&q, "conv.weight_fake_quant", &st["conv.weight"]);
    let y = a
        .conv2d(&w, 1, 2, 1, 1)
        .unwrap()
        .broadcast_add(&st["conv.bias"].reshape((1, 8, 1, 1)).unwrap())
        .unwrap()
        .clamp(0f32, 6f32)
        .unwrap();
    let y = fq_act(&q, "conv.activation_post_process", &y)
        .flatten_from(1)
        .unwrap();
    let (s, z) = qp(&q, "fc.weight_fake_quant");
    assert_eq!(s.len(), 6);
    let w = fq_weight(&q, "fc.weight_fake_quant", &st["fc.weight"]);
    let y = y
        .matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(&st["fc.bias"])
        .unwrap()
        .relu()
        .unwrap();
    let want = fq_act(&q, "fc.activation_post_process", &y);
    assert!(z.iter().all(|&z| z == 0));
    assert!(max_abs_diff(&got, &want) <= 1e-6);
}

#[test]
fn qat_bad_inputs_are_errors() {
    let q = prepare_qat_module(module(14), &QConfig::default_qat()).unwrap();
    let wrong = Tensor::zeros((2, 3, 9, 10), candle_core::DType::F32, &Device::Cpu).unwrap();
    let e = q.forward_t(&wrong, true).unwrap_err().to_string();
    assert!(e.contains("x") && e.contains("[2, 3, 9, 10]"), "{e}");
    let ints = Tensor::zeros((2, 3, 10, 10), candle_core::DType::I64, &Device::Cpu).unwrap();
    let e = q.forward_t(&ints, true).unwrap_err().to_string();
    assert!(e.contains("f32"), "{e}");
    let x = input(110, 2);
    let e = q.forward_all(&[&x, &x], true).unwrap_err().to_string();
    assert!(e.contains("1 input(s), 2 given"), "{e}");
    // NaN reaches an observer: the error names the fake-quant module, state untouched.
    let before = qp(&q, "x.activation_post_process");
    let nan = (x.clone() * f64::NAN).unwrap();
    let e = q.forward_t(&nan, true).unwrap_err().to_string();
    assert!(e.contains("x.activation_post_process"), "{e}");
    assert_eq!(qp(&q, "x.activation_post_process"), before);
}
