//! QAT Conv+BN(+ReLU) through `prepare_qat` against PyTorch's `torch.ao.nn.intrinsic.qat`
//! `ConvBn2d` / `ConvBnReLU2d` (`qat_conv_bn.safetensors`): output, gradients of the input,
//! the weight and the BN affine parameters, the weight fake-quant scale and the updated
//! running statistics, BN live and frozen.

use candle_core::{Device, Tensor, Var};
use qat_core::{QDType, QScheme, Signedness};
use qat_graph::qconfig::{FakeQuantKind, FqSpec, NodeQConfig, ObserverKind};
use qat_graph::{prepare_qat_module, BnCfg, Conv2dCfg, Graph, GraphModule, QConfig};
use qat_testutil::{case_name, param_f64, param_i64, param_str, GoldenFile};

const REL: f64 = 1e-5;

fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_close_except(what, got, want, &[]);
}

/// `skip`: indices allowed to differ (see `tie_positions`).
fn assert_close_except(what: &str, got: &[f32], want: &[f64], skip: &[usize]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if skip.contains(&i) {
            continue;
        }
        let d = (g as f64 - w).abs();
        assert!(
            d <= REL * scale,
            "{what}[{i}]: got {g}, want {w} (|d| = {d:e} > {REL} * {scale})"
        );
    }
}

fn weight_spec(case: &serde_json::Value) -> FqSpec {
    let (lo, hi) = (
        param_i64(case, "weight_quant_min") as i32,
        param_i64(case, "weight_quant_max") as i32,
    );
    let scheme = match param_str(case, "weight_qscheme") {
        "per_channel_symmetric" => QScheme::PerChannelSymmetric { axis: 0 },
        "per_channel_affine" => QScheme::PerChannelAffine { axis: 0 },
        "per_tensor_symmetric" => QScheme::PerTensorSymmetric,
        "per_tensor_affine" => QScheme::PerTensorAffine,
        s => panic!("case {}: unknown weight_qscheme {s}", case_name(case)),
    };
    let sign = if lo < 0 {
        Signedness::Signed
    } else {
        Signedness::Unsigned
    };
    // PyTorch's default QAT weight fake-quant: moving-average (per-channel) min / max fused.
    FqSpec {
        kind: FakeQuantKind::FusedMovingAverage,
        observer: ObserverKind::MovingAverageMinMax {
            averaging_constant: 0.01,
        },
        dtype: QDType::custom(sign, lo, hi).unwrap(),
        scheme,
        eps: f32::EPSILON,
    }
}

/// Flat index of the largest |weight · γ / σ| in each output channel.
fn tie_positions(vars: &std::collections::HashMap<String, Var>, eps: f64) -> Vec<usize> {
    let w = vars["conv.weight"].as_tensor();
    let rstd = (vars["bn.running_var"].as_tensor() + eps)
        .unwrap()
        .sqrt()
        .unwrap();
    let sf = vars["bn.weight"].as_tensor().div(&rstd).unwrap();
    let o = w.dim(0).unwrap();
    let sw = w
        .broadcast_mul(&sf.reshape((o, 1, 1, 1)).unwrap())
        .unwrap()
        .reshape((o, ()))
        .unwrap();
    let per = sw.dim(1).unwrap();
    let rows = sw.abs().unwrap().to_vec2::<f32>().unwrap();
    rows.iter()
        .enumerate()
        .map(|(c, r)| {
            let j = (0..per).fold(0, |b, j| if r[j] > r[b] { j } else { b });
            c * per + j
        })
        .collect()
}

#[test]
fn qat_conv_bn_matches_pytorch() {
    let Some(file) = GoldenFile::open("qat_conv_bn.safetensors", "qat_conv_bn_matches_pytorch")
    else {
        return;
    };
    let dev = Device::Cpu;
    let cases = file.cases();
    assert!(!cases.is_empty(), "no cases");
    for case in &cases {
        let name = case_name(case);
        let t = |f: &str| file.tensor(&format!("{name}/{f}"));
        let tensor = |f: &str| {
            let g = t(f);
            let v: Vec<f32> = g.values.iter().map(|&v| v as f32).collect();
            Tensor::from_vec(v, g.shape.as_slice(), &dev).unwrap()
        };
        let relu = match param_str(case, "module") {
            "ConvBn2d" => false,
            "ConvBnReLU2d" => true,
            m => panic!("case {name}: unknown module {m}"),
        };
        let w = tensor("weight");
        let x = tensor("x");
        let (o, i, k) = (w.dim(0).unwrap(), w.dim(1).unwrap(), w.dim(2).unwrap());
        let xs = x.dims().to_vec();
        let conv = Conv2dCfg::new(i, o, k)
            .stride(param_i64(case, "stride") as usize)
            .padding(param_i64(case, "padding") as usize)
            .bias(false);
        let bn = BnCfg {
            num_features: o,
            eps: param_f64(case, "eps"),
            momentum: param_f64(case, "momentum"),
        };
        let mut g = Graph::new();
        let n = g.input("x", &xs[1..]).unwrap();
        let n = g.conv2d("conv", n, conv).unwrap();
        let n = g.batch_norm2d("bn", n, bn).unwrap();
        if relu {
            g.relu("relu", n).unwrap();
        }
        let m = GraphModule::new(g, 0, &dev).unwrap();
        {
            let data = m.varmap().data().lock().unwrap();
            for (p, f) in [
                ("conv.weight", "weight"),
                ("bn.weight", "bn_weight"),
                ("bn.bias", "bn_bias"),
                ("bn.running_mean", "bn_running_mean"),
                ("bn.running_var", "bn_running_var"),
            ] {
                data[p].set(&tensor(f)).unwrap();
            }
        }
        let mut cfg = NodeQConfig {
            activation: QConfig::default_qat().global().unwrap().activation,
            weight: weight_spec(case),
        };
        cfg.activation.eps = f32::EPSILON;
        let q = prepare_qat_module(m, &QConfig::uniform(cfg)).unwrap();
        assert_eq!(
            q.fake_quant_names(),
            [
                "x.activation_post_process",
                "conv.weight_fake_quant",
                "conv.activation_post_process"
            ],
            "case {name}"
        );
        // The golden is the intrinsic module alone: no activation fake-quant.
        q.enable_fake_quant_for("x", false).unwrap();
        q.fake_quant("conv.activation_post_process")
            .unwrap()
            .enable_fake_quant(false);
        let frozen = case
            .get("freeze_bn_stats")
            .and_then(|v| v.as_bool())
            .unwrap_or_else(|| panic!("case {name}: missing freeze_bn_stats"));
        if frozen {
            q.freeze_bn_stats();
        }
        let ties = tie_positions(&q.module().varmap().data().lock().unwrap(), bn.eps);
        let xv = Var::from_tensor(&x).unwrap();
        let y = q.forward_t(xv.as_tensor(), true).unwrap();
        assert_close(
            &format!("{name}/y"),
            &y.flatten_all().unwrap().to_vec1().unwrap(),
            &t("y").values,
        );
        let loss = (y * tensor("grad_y")).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let vars = q.module().varmap().data().lock().unwrap().clone();
        // The element with the largest |scaled weight| of each channel sits exactly on the
        // symmetric range's edge (x / scale = ±127.5), where one ulp of the folded weight
        // decides whether the STE passes its gradient (round-half-even 127.5 → 128 is
        // clamped). Those elements may differ in grad_weight: at most one per channel.
        let gw = grads
            .get(vars["conv.weight"].as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let gw_ref = t("grad_weight").values;
        let gw_tol = REL * gw_ref.iter().fold(0f64, |m, v| m.max(v.abs()));
        let flipped: Vec<usize> = ties
            .iter()
            .copied()
            .filter(|&i| (gw[i] as f64 - gw_ref[i]).abs() > gw_tol)
            .collect();
        assert_close_except(
            &format!("{name}/grad_weight"),
            &gw,
            &t("grad_weight").values,
            &ties,
        );
        for &i in &flipped {
            // A flip means exactly that one side passed the gradient and the other blocked it.
            let (g, w) = (gw[i] as f64, t("grad_weight").values[i]);
            assert!(
                g == 0.0 || w == 0.0,
                "{name}: grad_weight[{i}] = {g} vs {w}"
            );
        }
        if !flipped.is_empty() {
            eprintln!("{name}: STE tie flipped at grad_weight{flipped:?}");
        }
        // A flipped element also changes γ's gradient through the folding factor γ/σ, by
        // exactly Δgrad_w · w / γ; with that accounted for, γ's gradient must match.
        let per = gw.len() / o;
        let w0 = t("weight").values;
        let gamma0 = t("bn_weight").values;
        let mut gbw_ref = t("grad_bn_weight").values;
        for &i in &flipped {
            let c = i / per;
            gbw_ref[c] += (gw[i] as f64 - gw_ref[i]) * w0[i] / gamma0[c];
        }
        let gbw = grads
            .get(vars["bn.weight"].as_tensor())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_close(&format!("{name}/grad_bn_weight"), &gbw, &gbw_ref);
        for (what, tensor_ref, golden) in [
            ("grad_x", xv.as_tensor().clone(), "grad_x"),
            (
                "grad_bn_bias",
                vars["bn.bias"].as_tensor().clone(),
                "grad_bn_bias",
            ),
        ] {
            let gr = grads
                .get(&tensor_ref)
                .unwrap_or_else(|| panic!("{name}: no gradient for {what}"));
            assert_close(
                &format!("{name}/{what}"),
                &gr.flatten_all().unwrap().to_vec1().unwrap(),
                &t(golden).values,
            );
        }
        for (p, f) in [
            ("bn.running_mean", "bn_running_mean_after"),
            ("bn.running_var", "bn_running_var_after"),
        ] {
            assert_close(
                &format!("{name}/{f}"),
                &vars[p].as_tensor().to_vec1().unwrap(),
                &t(f).values,
            );
        }
        let nbt = vars["bn.num_batches_tracked"]
            .as_tensor()
            .to_scalar::<i64>()
            .unwrap();
        assert_eq!(
            nbt,
            if frozen { 0 } else { 1 },
            "{name}: num_batches_tracked"
        );
        let (scale, zp) = q
            .fake_quant("conv.weight_fake_quant")
            .unwrap()
            .qparams()
            .unwrap();
        assert_close(
            &format!("{name}/weight_fq_scale"),
            &scale,
            &t("weight_fq_scale").values,
        );
        let want_zp: Vec<f64> = if file.has(&format!("{name}/weight_fq_zero_point")) {
            t("weight_fq_zero_point").values
        } else {
            vec![0.0; zp.len()] // symmetric signed: always 0
        };
        let zp: Vec<f64> = zp.iter().map(|&z| z as f64).collect();
        assert_eq!(zp, want_zp, "{name}: weight zero points");
    }
    eprintln!("qat_conv_bn: {} cases checked", cases.len());
}
