//! QAT Conv+BN layers training with batch statistics apply their activation fake-quant
//! inside their fused op (`QatGraph::fuse_output_fake_quant`, on by default): over several
//! steps the graph's outputs, every parameter gradient, the running statistics and every
//! fake-quant module's state (ranges, qparams) equal the graph running the modules on their
//! own, bit for bit, with BN live and then frozen (where nothing is fused).

mod qat_train_util;

use std::collections::HashMap;

use candle_core::Device;
use qat_graph::{prepare_qat_module, GraphModule, QConfig, QatGraph};
use qat_train_util::{graph, input, step};

fn qat(fused: bool) -> QatGraph {
    let m = GraphModule::new(graph(), 21, &Device::Cpu).unwrap();
    let q = prepare_qat_module(m, &QConfig::default_qat()).unwrap();
    q.fuse_output_fake_quant(fused);
    q
}

fn state_bits(q: &QatGraph) -> HashMap<String, Vec<u32>> {
    q.state()
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            let v = t.to_dtype(candle_core::DType::F32).unwrap();
            let v = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (k, v.iter().map(|f| f.to_bits()).collect())
        })
        .collect()
}

#[test]
fn qat_fused_output_fake_quant_equals_separate_modules() {
    let (fused, plain) = (qat(true), qat(false));
    assert!(fused.output_fake_quant_fused() && !plain.output_fake_quant_fused());
    for (i, frozen) in [false, false, false, true].into_iter().enumerate() {
        if frozen {
            fused.freeze_bn_stats();
            plain.freeze_bn_stats();
        }
        let x = input(i as u64);
        let (yf, gf) = step(&fused, &x);
        let (yp, gp) = step(&plain, &x);
        let what = format!("step {i} (BN frozen: {frozen})");
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&yf), bits(&yp), "{what}: output");
        assert_eq!(gf.len(), gp.len());
        for (name, g) in &gf {
            // Bit for bit up to the sign of zero.
            let same = g.iter().zip(&gp[name]).all(|(a, b)| a == b);
            assert!(same, "{what}: gradient of {name}: {g:?} vs {:?}", gp[name]);
        }
        assert_eq!(state_bits(&fused), state_bits(&plain), "{what}: state");
    }
    // The activation observers moved (fake quantization was on all along).
    let fq = fused.fake_quant("a.0.activation_post_process").unwrap();
    assert!(
        fq.qparams().unwrap().0[0] != 1.0,
        "the output fake-quant observed nothing"
    );
    // The fused op did the observing: a NaN BN bias makes a.0's output non-finite, and the
    // refusal comes from the node's op, not from the separate module.
    fused.update_bn_stats();
    plain.update_bn_stats();
    for (q, separate) in [(&fused, false), (&plain, true)] {
        let vars = q.module().varmap().data().lock().unwrap().clone();
        let w = &vars["a.1.bias"];
        w.set(&(w.as_tensor() * f64::NAN).unwrap()).unwrap();
        let e = q.forward_t(&input(9), true).unwrap_err().to_string();
        assert!(e.contains("non-finite"), "{e}");
        assert_eq!(e.contains("a.0.activation_post_process"), separate, "{e}");
    }
}
