//! PyTorch int8 parity (issue 5 item 5) on every `mobilenet_v2_*.safetensors` golden file:
//! the QAT graph with PyTorch's `qat/*` state (as `golden_qat.rs` loads it) is converted with
//! `convert` and run on the golden inputs; its top-1 must equal `logits_int8`'s (PyTorch's own
//! converted model) on every input. Also printed: max |Δ| against `logits_int8` and against
//! our fake-quant logits, and the same on every ISA this CPU supports (identical outputs).

mod common;

use common::{max_abs, qat_from_golden, tensor, top1};
use qat_graph::convert::{lower_node, Lowered};
use qat_graph::{convert, convert_with, NodeId, RunTensor};
use qat_runtime::{Isa, ModelOptions};
use qat_testutil::GoldenFile;

#[test]
fn int8_top1_matches_pytorch_int8() {
    let files = GoldenFile::all_with_prefix("mobilenet_v2_", "int8_top1_matches_pytorch_int8");
    for f in &files {
        let q = qat_from_golden(f);
        let model = convert(&q).unwrap();
        // PyTorch's fused per-channel weight fake-quant gives same-sign channels a zero point
        // of -128 / 127; convert refits them (see `AsymmetricWeights`).
        let refit: usize = (0..q.graph().len())
            .filter_map(|i| match lower_node(&q, NodeId(i)).unwrap() {
                Lowered::Weighted(l) => Some(l.refit_channels.len()),
                _ => None,
            })
            .sum();
        println!("{}: {refit} weight channels refit", f.path.display());
        let x = tensor(f, "input");
        let want = tensor(f, "logits_int8");
        let y = model.run_tensor(&x).unwrap();
        assert_eq!(y.dims(), want.dims());
        let fq = q.forward_t(&x, false).unwrap();
        let (ours, theirs) = (top1(&y), top1(&want));
        let agree = ours.iter().zip(&theirs).filter(|(a, b)| a == b).count();
        let fq_agree = ours
            .iter()
            .zip(top1(&fq))
            .filter(|(a, b)| **a == *b)
            .count();
        let flat = want.flatten_all().unwrap();
        let range = flat.max(0).unwrap().to_scalar::<f32>().unwrap()
            - flat.min(0).unwrap().to_scalar::<f32>().unwrap();
        println!(
            "{}: int8 top-1 = PyTorch int8 on {agree}/{n}, = our fake-quant on {fq_agree}/{n}; \
             max |Δ| vs logits_int8 {:.4}, vs our fake-quant {:.4}, PyTorch fake-quant vs \
             int8 {:.4} (logits range {range:.2})",
            f.path.display(),
            max_abs(&y, &want),
            max_abs(&y, &fq),
            max_abs(&tensor(f, "logits_fakequant"), &want),
            n = ours.len(),
        );
        assert_eq!(
            ours,
            theirs,
            "{}: top-1 differs from logits_int8",
            f.path.display()
        );

        // Every ISA gives the same logits.
        for isa in Isa::supported() {
            let m = convert_with(
                &q,
                ModelOptions {
                    isa: Some(isa),
                    threads: 1,
                },
            )
            .unwrap();
            let d = max_abs(&m.run_tensor(&x).unwrap(), &y);
            assert_eq!(d, 0.0, "{}: {isa:?} differs by {d}", f.path.display());
        }
    }
}
