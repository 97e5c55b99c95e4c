//! The executor against f64 scalar references: conv / BN / activations / pools in eval mode,
//! BatchNorm train mode (batch statistics, running-stat momentum with unbiased variance),
//! dropout, the fast-vs-candle ops switch, bad inputs.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use qat_graph::params::normal_vec;
use qat_graph::{seeded_rng, BnCfg, Conv2dCfg, Graph, GraphModule, LinearCfg, OpsPath, PoolCfg};

const CPU: Device = Device::Cpu;

fn randn(seed: u64, shape: &[usize], std: f64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(normal_vec(&mut seeded_rng(seed), n, 0.0, std), shape, &CPU).unwrap()
}

fn vals(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Give every float parameter random values (BN variances positive) via the state dict.
fn randomize(m: &GraphModule, seed: u64) {
    let mut sd = HashMap::new();
    for (i, s) in m.param_specs().iter().enumerate() {
        let t = if s.name.ends_with("num_batches_tracked") {
            Tensor::new(3i64, &CPU).unwrap()
        } else if s.name.ends_with("running_var") {
            (randn(seed + i as u64, &s.shape, 0.5).abs().unwrap() + 0.5).unwrap()
        } else {
            randn(seed + i as u64, &s.shape, 0.5)
        };
        sd.insert(s.name.clone(), t);
    }
    m.load_state_dict(&sd).unwrap();
}

fn param(m: &GraphModule, name: &str) -> Vec<f64> {
    vals(&m.state_dict()[name])
}

/// f64 NCHW conv with groups.
#[allow(clippy::too_many_arguments)]
fn conv_ref(
    x: &[f64],
    [n, c, h, w]: [usize; 4],
    wt: &[f64],
    b: Option<&[f64]>,
    o: usize,
    k: usize,
    stride: usize,
    pad: usize,
    dil: usize,
    groups: usize,
) -> (Vec<f64>, [usize; 4]) {
    let oh = (h + 2 * pad - dil * (k - 1) - 1) / stride + 1;
    let ow = (w + 2 * pad - dil * (k - 1) - 1) / stride + 1;
    let cig = c / groups;
    let cog = o / groups;
    let mut y = vec![0.0; n * o * oh * ow];
    for ni in 0..n {
        for oc in 0..o {
            let g = oc / cog;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = b.map_or(0.0, |b| b[oc]);
                    for ic in 0..cig {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * stride + ky * dil) as isize - pad as isize;
                                let ix = (ox * stride + kx * dil) as isize - pad as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xi =
                                    ((ni * c + g * cig + ic) * h + iy as usize) * w + ix as usize;
                                let wi = ((oc * cig + ic) * k + ky) * k + kx;
                                acc += x[xi] * wt[wi];
                            }
                        }
                    }
                    y[((ni * o + oc) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    (y, [n, o, oh, ow])
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

#[test]
fn eval_conv_bn_relu6_pool_linear_match_f64_reference() {
    for path in [OpsPath::Candle, OpsPath::Fast] {
        for (groups, cin, cout, stride, dil) in [(1, 3, 4, 1, 1), (4, 4, 4, 2, 1), (2, 4, 6, 1, 2)]
        {
            let mut g = Graph::new();
            let x = g.input("x", [cin, 7, 6]).unwrap();
            let conv = Conv2dCfg::new(cin, cout, 3)
                .stride(stride)
                .padding(1)
                .dilation(dil)
                .groups(groups);
            let c = g.conv2d("c", x, conv).unwrap();
            let b = g.batch_norm2d("bn", c, BnCfg::new(cout)).unwrap();
            let r = g.relu6("act", b).unwrap();
            let p = g.global_avg_pool("pool", r).unwrap();
            let f = g.flatten("flat", p).unwrap();
            g.linear(
                "fc",
                f,
                LinearCfg {
                    in_features: cout,
                    out_features: 3,
                    bias: true,
                },
            )
            .unwrap();
            let mut m = GraphModule::new(g, 1, &CPU).unwrap();
            m.set_ops_path(path);
            randomize(&m, 10);
            let xt = (randn(5, &[2, cin, 7, 6], 1.0) * 4.0).unwrap();
            let y = vals(&m.forward_t(&xt, false).unwrap());

            let (cv, [n, o, oh, ow]) = conv_ref(
                &vals(&xt),
                [2, cin, 7, 6],
                &param(&m, "c.weight"),
                Some(&param(&m, "c.bias")),
                cout,
                3,
                stride,
                1,
                dil,
                groups,
            );
            let (gm, bt) = (param(&m, "bn.weight"), param(&m, "bn.bias"));
            let (rm, rv) = (param(&m, "bn.running_mean"), param(&m, "bn.running_var"));
            let mut pooled = vec![0.0; n * o];
            for i in 0..cv.len() {
                let ch = (i / (oh * ow)) % o;
                let v = (cv[i] - rm[ch]) / (rv[ch] + 1e-5).sqrt() * gm[ch] + bt[ch];
                pooled[i / (oh * ow)] += v.clamp(0.0, 6.0) / (oh * ow) as f64;
            }
            let (fw, fb) = (param(&m, "fc.weight"), param(&m, "fc.bias"));
            let mut want = vec![0.0; n * 3];
            for ni in 0..n {
                for j in 0..3 {
                    want[ni * 3 + j] = fb[j]
                        + (0..o)
                            .map(|k| fw[j * o + k] * pooled[ni * o + k])
                            .sum::<f64>();
                }
            }
            assert_close(&y, &want, 1e-5, &format!("{path:?} groups {groups}"));
        }
    }
}

#[test]
fn train_mode_batch_norm_uses_batch_stats_and_updates_running_stats() {
    let mut g = Graph::new();
    let x = g.input("x", [3, 4, 5]).unwrap();
    g.batch_norm2d(
        "bn",
        x,
        BnCfg {
            momentum: 0.3,
            ..BnCfg::new(3)
        },
    )
    .unwrap();
    let m = GraphModule::new(g, 0, &CPU).unwrap();
    randomize(&m, 20);
    let (gm, bt) = (param(&m, "bn.weight"), param(&m, "bn.bias"));
    let (rm0, rv0) = (param(&m, "bn.running_mean"), param(&m, "bn.running_var"));
    let xt = (randn(7, &[2, 3, 4, 5], 2.0) + 1.0).unwrap();
    let xv = vals(&xt);
    let y = vals(&m.forward_t(&xt, true).unwrap());

    let per = 2 * 4 * 5;
    let mut want = vec![0.0; xv.len()];
    for ch in 0..3 {
        let idx: Vec<usize> = (0..xv.len()).filter(|i| (i / 20) % 3 == ch).collect();
        let mean = idx.iter().map(|&i| xv[i]).sum::<f64>() / per as f64;
        let var = idx.iter().map(|&i| (xv[i] - mean).powi(2)).sum::<f64>() / per as f64;
        for &i in &idx {
            want[i] = (xv[i] - mean) / (var + 1e-5).sqrt() * gm[ch] + bt[ch];
        }
        let rm = param(&m, "bn.running_mean")[ch];
        let rv = param(&m, "bn.running_var")[ch];
        assert!(
            (rm - (0.7 * rm0[ch] + 0.3 * mean)).abs() < 1e-5,
            "running mean"
        );
        let unbiased = var * per as f64 / (per - 1) as f64;
        assert!(
            (rv - (0.7 * rv0[ch] + 0.3 * unbiased)).abs() < 1e-5,
            "running var"
        );
    }
    assert_close(&y, &want, 1e-5, "train-mode BN output");
    let count = m.state_dict()["bn.num_batches_tracked"]
        .to_scalar::<i64>()
        .unwrap();
    assert_eq!(count, 4, "num_batches_tracked counts train-mode batches");

    // Eval mode leaves the buffers alone.
    let before = param(&m, "bn.running_mean");
    m.forward_t(&xt, false).unwrap();
    assert_eq!(param(&m, "bn.running_mean"), before);
}

#[test]
fn train_bn_on_tiny_input_is_an_error() {
    let mut g = Graph::new();
    let x = g.input("x", [2]).unwrap();
    g.batch_norm1d("bn1", x, BnCfg::new(2)).unwrap();
    let m = GraphModule::new(g, 0, &CPU).unwrap();
    let e = m.forward_t(&randn(1, &[1, 2], 1.0), true).unwrap_err();
    assert!(e.to_string().contains("bn1"), "{e}");
    assert!(m.forward_t(&randn(1, &[1, 2], 1.0), false).is_ok());
}

#[test]
fn pools_hardswish_concat_add_match_reference() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 6, 6]).unwrap();
    let mp = g
        .max_pool2d(
            "mp",
            x,
            PoolCfg {
                kernel: 2,
                stride: 2,
                padding: 0,
            },
        )
        .unwrap();
    let ap = g
        .avg_pool2d(
            "ap",
            x,
            PoolCfg {
                kernel: 2,
                stride: 2,
                padding: 0,
            },
        )
        .unwrap();
    let hs = g.hardswish("hs", mp).unwrap();
    let ad = g.add("add", hs, ap).unwrap();
    let cat = g.concat("cat", &[ad, mp], 1).unwrap();
    let id = g.identity("id", cat).unwrap();
    g.set_outputs(&[id, ad]).unwrap();
    let m = GraphModule::new(g, 0, &CPU).unwrap();
    let xt = randn(3, &[1, 2, 6, 6], 3.0);
    let xv = vals(&xt);
    let outs = m.forward_all(&[&xt], false).unwrap();
    let mut mpv = vec![0.0; 18];
    let mut apv = [0.0; 18];
    for c in 0..2 {
        for oy in 0..3 {
            for ox in 0..3 {
                let win: Vec<f64> = (0..4)
                    .map(|k| xv[c * 36 + (oy * 2 + k / 2) * 6 + ox * 2 + k % 2])
                    .collect();
                mpv[c * 9 + oy * 3 + ox] = win.iter().cloned().fold(f64::MIN, f64::max);
                apv[c * 9 + oy * 3 + ox] = win.iter().sum::<f64>() / 4.0;
            }
        }
    }
    let add: Vec<f64> = (0..18)
        .map(|i| mpv[i] * (mpv[i] + 3.0).clamp(0.0, 6.0) / 6.0 + apv[i])
        .collect();
    let mut cat = add.clone();
    cat.extend_from_slice(&mpv);
    assert_close(&vals(&outs[0]), &cat, 1e-6, "concat output");
    assert_close(&vals(&outs[1]), &add, 1e-6, "add output");
    assert_eq!(outs[0].dims(), &[1, 4, 3, 3]);
}

#[test]
fn dropout_is_train_only_scaled_and_seeded() {
    let mut g = Graph::new();
    let x = g.input("x", [1000]).unwrap();
    g.dropout("drop", x, 0.25).unwrap();
    let make = || GraphModule::new(g.clone(), 9, &CPU).unwrap();
    let m = make();
    let xt = Tensor::ones((2, 1000), DType::F32, &CPU).unwrap();
    assert_eq!(vals(&m.forward_t(&xt, false).unwrap()), vals(&xt));
    let y = vals(&m.forward_t(&xt, true).unwrap());
    let kept = y.iter().filter(|&&v| v != 0.0).count();
    assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    // 2000 Bernoulli(0.75) draws: mean 1500, sd ≈ 19.
    assert!((1400..1600).contains(&kept), "kept {kept}");
    assert_eq!(
        vals(&make().forward_t(&xt, true).unwrap()),
        y,
        "same seed, same mask"
    );
}

#[test]
fn fast_and_candle_paths_agree_in_train_mode_with_gradients() {
    let mut g = Graph::new();
    let x = g.input("x", [6, 9, 9]).unwrap();
    let c = g
        .conv2d("pw", x, Conv2dCfg::new(6, 12, 1).bias(false))
        .unwrap();
    let b = g.batch_norm2d("bn", c, BnCfg::new(12)).unwrap();
    let r = g.relu6("r", b).unwrap();
    let d = g
        .conv2d(
            "dw",
            r,
            Conv2dCfg::new(12, 12, 3).stride(2).padding(1).groups(12),
        )
        .unwrap();
    let b2 = g.batch_norm2d("bn2", d, BnCfg::new(12)).unwrap();
    g.relu("r2", b2).unwrap();
    let xt = randn(4, &[3, 6, 9, 9], 1.0);
    let run = |path| {
        let mut m = GraphModule::new(g.clone(), 3, &CPU).unwrap();
        m.set_ops_path(path);
        let y = m.forward_t(&xt, true).unwrap();
        let loss = y.sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let gs: Vec<Vec<f64>> = m
            .trainable()
            .iter()
            .map(|(_, v, _)| vals(grads.get(v.as_tensor()).unwrap()))
            .collect();
        (vals(&y), gs, param(&m, "bn2.running_var"))
    };
    let (y0, g0, rv0) = run(OpsPath::Candle);
    let (y1, g1, rv1) = run(OpsPath::Fast);
    assert_close(&y1, &y0, 1e-5, "output");
    assert_close(&rv1, &rv0, 1e-5, "running var");
    for (a, b) in g1.iter().zip(&g0) {
        assert_close(a, b, 1e-4, "gradient");
    }
}

#[test]
fn wrong_inputs_are_errors_naming_the_input_and_nan_propagates() {
    let mut g = Graph::new();
    let x = g.input("image", [1, 4, 4]).unwrap();
    let c = g
        .conv2d("c", x, Conv2dCfg::new(1, 2, 3).padding(1))
        .unwrap();
    let b = g.batch_norm2d("bn", c, BnCfg::new(2)).unwrap();
    g.relu("r", b).unwrap();
    let m = GraphModule::new(g, 0, &CPU).unwrap();
    for bad in [&[2, 1, 4, 5][..], &[2, 2, 4, 4], &[1, 4, 4], &[0, 1, 4, 4]] {
        let e = m
            .forward_t(&Tensor::zeros(bad, DType::F32, &CPU).unwrap(), false)
            .unwrap_err();
        assert!(e.to_string().contains("image"), "{bad:?}: {e}");
    }
    let e = m
        .forward_t(
            &Tensor::zeros((1, 1, 4, 4), DType::F64, &CPU).unwrap(),
            false,
        )
        .unwrap_err();
    assert!(e.to_string().contains("f32"), "{e}");
    assert!(m.forward_all(&[], false).is_err());

    // NaN is data, not an error: it stays within its own sample in eval mode.
    let mut xv = vec![0.5f32; 32];
    xv[5] = f32::NAN;
    let xt = Tensor::from_vec(xv, (2, 1, 4, 4), &CPU).unwrap();
    let y = vals(&m.forward_t(&xt, false).unwrap());
    assert!(y[..32].iter().any(|v| v.is_nan()));
    assert!(y[32..].iter().all(|v| v.is_finite()));
}

#[test]
fn seeded_init_is_deterministic_and_follows_torchvision() {
    let mut g = Graph::new();
    let x = g.input("x", [64, 8, 8]).unwrap();
    let c = g
        .conv2d("c", x, Conv2dCfg::new(64, 128, 3).bias(true))
        .unwrap();
    let b = g.batch_norm2d("bn", c, BnCfg::new(128)).unwrap();
    let p = g.global_avg_pool("p", b).unwrap();
    let f = g.flatten("f", p).unwrap();
    g.linear(
        "fc",
        f,
        LinearCfg {
            in_features: 128,
            out_features: 100,
            bias: true,
        },
    )
    .unwrap();
    let a = GraphModule::new(g.clone(), 7, &CPU).unwrap();
    let b2 = GraphModule::new(g.clone(), 7, &CPU).unwrap();
    let c2 = GraphModule::new(g, 8, &CPU).unwrap();
    assert_eq!(param(&a, "c.weight"), param(&b2, "c.weight"));
    assert_ne!(param(&a, "c.weight"), param(&c2, "c.weight"));
    let std = |v: &[f64]| (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt();
    // kaiming normal, fan_out = 128 * 3 * 3.
    let want = (2.0f64 / (128.0 * 9.0)).sqrt();
    assert!((std(&param(&a, "c.weight")) / want - 1.0).abs() < 0.02);
    assert!((std(&param(&a, "fc.weight")) / 0.01 - 1.0).abs() < 0.03);
    assert!(param(&a, "c.bias").iter().all(|&v| v == 0.0));
    assert!(param(&a, "bn.weight").iter().all(|&v| v == 1.0));
    assert!(param(&a, "bn.running_var").iter().all(|&v| v == 1.0));
    assert!(param(&a, "bn.bias")
        .iter()
        .chain(&param(&a, "bn.running_mean"))
        .all(|&v| v == 0.0));
}
