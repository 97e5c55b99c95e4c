//! The fusion pass: every pattern fuses, eval outputs of fused and unfused graphs agree within
//! 1e-5 on random inputs with random parameters, multi-consumer chains and graph outputs stay
//! unfused, and the fused graph keeps the parts' parameter names.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use qat_graph::params::normal_vec;
use qat_graph::{
    fuse, seeded_rng, BnCfg, Conv2dCfg, Graph, GraphModule, LinearCfg, NodeId, Result,
};

const CPU: Device = Device::Cpu;

fn randn(seed: u64, shape: &[usize], std: f64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(normal_vec(&mut seeded_rng(seed), n, 0.0, std), shape, &CPU).unwrap()
}

fn randomize(m: &GraphModule, seed: u64) {
    let mut sd = HashMap::new();
    for (i, s) in m.param_specs().iter().enumerate() {
        let t = if s.name.ends_with("num_batches_tracked") {
            Tensor::new(0i64, &CPU).unwrap()
        } else if s.name.ends_with("running_var") {
            (randn(seed + i as u64, &s.shape, 0.5).abs().unwrap() + 0.3).unwrap()
        } else {
            randn(seed + i as u64, &s.shape, 0.7)
        };
        sd.insert(s.name.clone(), t);
    }
    m.load_state_dict(&sd).unwrap();
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

type Builder = fn(&mut Graph, NodeId) -> Result<NodeId>;

fn conv(g: &mut Graph, x: NodeId, bias: bool) -> Result<NodeId> {
    g.conv2d("c", x, Conv2dCfg::new(4, 6, 3).padding(1).bias(bias))
}

fn fc(g: &mut Graph, x: NodeId, bias: bool) -> Result<NodeId> {
    let cfg = LinearCfg {
        in_features: 4,
        out_features: 7,
        bias,
    };
    g.linear("fc", x, cfg)
}

/// Each pattern, the op type it must fuse into, and the input shape.
fn patterns() -> Vec<(&'static str, Builder, &'static str, Vec<usize>)> {
    vec![
        (
            "conv+bn",
            |g, x| {
                let c = conv(g, x, false)?;
                g.batch_norm2d("bn", c, BnCfg::new(6))
            },
            "ConvBn2d",
            vec![4, 5, 5],
        ),
        (
            "conv+bn+relu",
            |g, x| {
                let c = conv(g, x, true)?;
                let b = g.batch_norm2d("bn", c, BnCfg::new(6))?;
                g.relu("act", b)
            },
            "ConvBnReLU2d",
            vec![4, 5, 5],
        ),
        (
            "conv+bn+relu6",
            |g, x| {
                let c = conv(g, x, false)?;
                let b = g.batch_norm2d("bn", c, BnCfg::new(6))?;
                g.relu6("act", b)
            },
            "ConvBnReLU62d",
            vec![4, 5, 5],
        ),
        (
            "conv+relu",
            |g, x| {
                let c = conv(g, x, true)?;
                g.relu("act", c)
            },
            "ConvReLU2d",
            vec![4, 5, 5],
        ),
        (
            "conv+relu6",
            |g, x| {
                let c = conv(g, x, true)?;
                g.relu6("act", c)
            },
            "ConvReLU62d",
            vec![4, 5, 5],
        ),
        (
            "linear+relu",
            |g, x| {
                let l = fc(g, x, true)?;
                g.relu("act", l)
            },
            "LinearReLU",
            vec![4],
        ),
        (
            "linear+relu6",
            |g, x| {
                let l = fc(g, x, true)?;
                g.relu6("act", l)
            },
            "LinearReLU6",
            vec![4],
        ),
        (
            "linear+bn1d",
            |g, x| {
                let l = fc(g, x, false)?;
                g.batch_norm1d("bn", l, BnCfg::new(7))
            },
            "LinearBn1d",
            vec![4],
        ),
        (
            "bn+relu",
            |g, x| {
                let b = g.batch_norm2d("bn", x, BnCfg::new(4))?;
                g.relu("act", b)
            },
            "BNReLU2d",
            vec![4, 5, 5],
        ),
        (
            "bn+relu6",
            |g, x| {
                let b = g.batch_norm2d("bn", x, BnCfg::new(4))?;
                g.relu6("act", b)
            },
            "BNReLU62d",
            vec![4, 5, 5],
        ),
        (
            "add+relu",
            |g, x| {
                let c = conv(g, x, true)?;
                let d = g.conv2d("d", x, Conv2dCfg::new(4, 6, 1))?;
                let a = g.add("add", c, d)?;
                g.relu("act", a)
            },
            "AddReLU",
            vec![4, 5, 5],
        ),
        (
            "add+relu6",
            |g, x| {
                let c = conv(g, x, true)?;
                let d = g.conv2d("d", x, Conv2dCfg::new(4, 6, 1))?;
                let a = g.add("add", c, d)?;
                g.relu6("act", a)
            },
            "AddReLU6",
            vec![4, 5, 5],
        ),
    ]
}

#[test]
fn every_pattern_fuses_and_matches_unfused_eval_output() {
    for (name, build, fused_type, shape) in patterns() {
        let mut g = Graph::new();
        let x = g.input("x", &shape).unwrap();
        build(&mut g, x).unwrap();
        let m = GraphModule::new(g, 1, &CPU).unwrap();
        randomize(&m, 100);
        let f = m.fused().unwrap();
        let out = f.graph().outputs()[0];
        assert_eq!(f.graph().node(out).op.type_name(), fused_type, "{name}");
        assert!(f.graph().len() < m.graph().len(), "{name}: nothing fused");
        // Parameter names survive fusion.
        let mut a: Vec<_> = m.param_specs().iter().map(|s| s.name.clone()).collect();
        let mut b: Vec<_> = f.param_specs().iter().map(|s| s.name.clone()).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{name}: parameter names");
        let mut full = vec![8];
        full.extend(&shape);
        for seed in 0..3 {
            let xt = (randn(seed, &full, 6.0) + 0.3).unwrap();
            let y0 = m.forward_t(&xt, false).unwrap();
            let y1 = f.forward_t(&xt, false).unwrap();
            let d = max_abs_diff(&y0, &y1);
            assert!(d <= 1e-5, "{name}: fused differs by {d}");
            // The ReLU6 clamp must be active on these inputs for the test to mean something.
            if name.ends_with("relu6") {
                let v: Vec<f32> = y0.flatten_all().unwrap().to_vec1().unwrap();
                assert!(v.contains(&6.0) && v.contains(&0.0), "{name}");
            }
        }
        // Train mode too: same batch statistics, same running-stat updates.
        let xt = randn(9, &full, 1.0);
        let y0 = m.forward_t(&xt, true).unwrap();
        let y1 = f.forward_t(&xt, true).unwrap();
        assert!(max_abs_diff(&y0, &y1) <= 1e-5, "{name}: train mode");
    }
}

#[test]
fn multi_consumer_chains_and_outputs_do_not_fuse() {
    // conv feeds both BN and a second branch: conv+BN must not fuse, BN+ReLU still may.
    let mut g = Graph::new();
    let x = g.input("x", [4, 5, 5]).unwrap();
    let c = g
        .conv2d("c", x, Conv2dCfg::new(4, 4, 3).padding(1))
        .unwrap();
    let b = g.batch_norm2d("bn", c, BnCfg::new(4)).unwrap();
    let r = g.relu("r", b).unwrap();
    let a = g.add("add", r, c).unwrap();
    // BN output consumed twice: BN+ReLU6 must not fuse.
    let b2 = g.batch_norm2d("bn2", a, BnCfg::new(4)).unwrap();
    let r2 = g.relu6("r2", b2).unwrap();
    let a2 = g.add("add2", r2, b2).unwrap();
    // Linear whose output is a graph output: no Linear+ReLU.
    let p = g.global_avg_pool("p", a2).unwrap();
    let fl = g.flatten("fl", p).unwrap();
    let l = g
        .linear(
            "fc",
            fl,
            LinearCfg {
                in_features: 4,
                out_features: 3,
                bias: true,
            },
        )
        .unwrap();
    let lr = g.relu("fc_act", l).unwrap();
    g.set_outputs(&[lr, l]).unwrap();
    let f = fuse(&g).unwrap();
    let types: Vec<(String, String)> = f
        .nodes()
        .iter()
        .map(|n| (n.name.clone(), n.op.type_name()))
        .collect();
    let ty = |n: &str| types.iter().find(|(a, _)| a == n).map(|(_, t)| t.as_str());
    assert_eq!(ty("c"), Some("Conv2d"));
    assert_eq!(ty("bn"), Some("BNReLU2d"));
    assert_eq!(ty("bn2"), Some("BatchNorm2d"));
    assert_eq!(ty("r2"), Some("ReLU6"));
    assert_eq!(ty("fc"), Some("Linear"));
    assert_eq!(ty("fc_act"), Some("ReLU"));
    assert_eq!(ty("add"), Some("Add"));

    let m = GraphModule::new(g, 2, &CPU).unwrap();
    randomize(&m, 5);
    let fm = m.fused().unwrap();
    let xt = randn(1, &[3, 4, 5, 5], 1.0);
    let (y0, y1) = (
        m.forward_all(&[&xt], false).unwrap(),
        fm.forward_all(&[&xt], false).unwrap(),
    );
    assert_eq!(y0.len(), 2);
    for (a, b) in y0.iter().zip(&y1) {
        assert!(max_abs_diff(a, b) <= 1e-5);
    }
}

#[test]
fn fused_module_shares_parameters_and_loads_unfused_state_dict() {
    let mut g = Graph::new();
    let x = g.input("x", [4, 5, 5]).unwrap();
    let c = g
        .conv2d("features.0.0", x, Conv2dCfg::new(4, 6, 3).bias(false))
        .unwrap();
    let b = g.batch_norm2d("features.0.1", c, BnCfg::new(6)).unwrap();
    g.relu6("features.0.2", b).unwrap();
    let m = GraphModule::new(g, 1, &CPU).unwrap();
    let f = m.fused().unwrap();
    let sd = f.state_dict();
    let mut keys: Vec<&String> = sd.keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "features.0.0.weight",
            "features.0.1.bias",
            "features.0.1.num_batches_tracked",
            "features.0.1.running_mean",
            "features.0.1.running_var",
            "features.0.1.weight"
        ]
    );
    // A state dict loaded into the unfused module is what the fused one runs with.
    randomize(&m, 3);
    let xt = randn(2, &[2, 4, 5, 5], 1.0);
    let d = max_abs_diff(
        &m.forward_t(&xt, false).unwrap(),
        &f.forward_t(&xt, false).unwrap(),
    );
    assert!(d <= 1e-5);
    assert!(
        f.graph().find("features.0.1").is_some(),
        "BN name resolves to the fused node"
    );
    assert_eq!(
        f.forward_t(
            &Tensor::zeros((1, 4, 5, 5), DType::F32, &CPU).unwrap(),
            false
        )
        .unwrap()
        .dims(),
        &[1, 6, 3, 3]
    );
}
