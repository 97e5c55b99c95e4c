//! Every case of PyTorch's `observers.safetensors` (see `../shared/golden/README.md`): feed
//! `batch0..N-1` in order and compare the qparams (and min / max) after each batch.

use candle_core::{Device, Tensor};
use qat_observer::{
    HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver, Observer, ObserverConfig, PerChannelMinMaxObserver,
    QDType, QScheme,
};
use qat_testutil::{case_name, param_f64, param_i64, param_str, GoldenFile};
use serde_json::Value;

/// The `QDType` PyTorch used for a case.
///
/// The cases record the final `quant_min` / `quant_max` (already halved when
/// `reduce_range=true`), not whether they were passed to the observer. PyTorch treats a passed
/// range as "customized" (`has_customized_qrange`), which only matters for symmetric quint8:
/// zero point 128 with the default range, the midpoint `(qmin + qmax) / 2` with a customized
/// one. A range equal to the dtype's default (after `reduce_range`) was the default: the
/// symmetric quint8 case confirms it (its golden zero point is 128, not 127); any other range
/// (e.g. the 4-bit `[0, 15]`) must have been passed explicitly, so it is `QDType::custom`.
fn dtype_of(case: &Value) -> QDType {
    let qmin = param_i64(case, "quant_min") as i32;
    let qmax = param_i64(case, "quant_max") as i32;
    let reduce = case
        .get("reduce_range")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let base = match param_str(case, "dtype") {
        "torch.quint8" => QDType::quint8(),
        "torch.qint8" => QDType::qint8(),
        d => panic!("case {}: unknown dtype {d}", case_name(case)),
    };
    let default = if reduce { base.reduce_range() } else { base };
    if default.range() == (qmin, qmax) {
        default
    } else {
        QDType::custom(base.signedness, qmin, qmax)
            .unwrap_or_else(|e| panic!("case {}: {e}", case_name(case)))
    }
}

fn scheme_of(case: &Value) -> QScheme {
    let axis = || param_i64(case, "ch_axis") as usize;
    match param_str(case, "qscheme") {
        "torch.per_tensor_affine" => QScheme::PerTensorAffine,
        "torch.per_tensor_symmetric" => QScheme::PerTensorSymmetric,
        "torch.per_channel_affine" => QScheme::PerChannelAffine { axis: axis() },
        "torch.per_channel_symmetric" => QScheme::PerChannelSymmetric { axis: axis() },
        s => panic!("case {}: unknown qscheme {s}", case_name(case)),
    }
}

/// The observer a case names, and the relative scale tolerance the issue allows for it.
fn observer_of(case: &Value) -> (Box<dyn Observer>, f32) {
    let cfg = ObserverConfig::new(dtype_of(case), scheme_of(case))
        .with_eps(param_f64(case, "eps") as f32);
    let c = || param_f64(case, "averaging_constant") as f32;
    match param_str(case, "observer") {
        "MinMaxObserver" => (Box::new(MinMaxObserver::new(cfg).unwrap()), 1e-6),
        "MovingAverageMinMaxObserver" => (
            Box::new(MovingAverageMinMaxObserver::new(cfg, c()).unwrap()),
            1e-6,
        ),
        "PerChannelMinMaxObserver" => (Box::new(PerChannelMinMaxObserver::new(cfg).unwrap()), 1e-6),
        "MovingAveragePerChannelMinMaxObserver" => (
            Box::new(MovingAveragePerChannelMinMaxObserver::new(cfg, c()).unwrap()),
            1e-6,
        ),
        "HistogramObserver" => {
            let bins = param_i64(case, "bins") as usize;
            (Box::new(HistogramObserver::new(cfg, bins).unwrap()), 1e-4)
        }
        o => panic!("case {}: unknown observer kind {o}", case_name(case)),
    }
}

fn tensor(file: &GoldenFile, name: &str) -> Tensor {
    let g = file.tensor(name);
    Tensor::from_vec(g.f32(), g.shape.clone(), &Device::Cpu).unwrap()
}

fn state_values(obs: &dyn Observer, name: &str) -> Vec<f32> {
    obs.state().unwrap()[name]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// The generator saved `min_afterN` / `max_afterN` as references to PyTorch's buffers, which
/// observers update in place, so in `observers.safetensors` every `min_afterN` holds the final
/// value (e.g. `minmax_affine_quint8/min_after0` is the minimum of all five batches, not of
/// batch 0). When a case shows that signature (every step equal to the last), only the last
/// step's min / max is a real reference; otherwise every step is compared.
fn min_max_steps(file: &GoldenFile, name: &str, batches: usize) -> Vec<usize> {
    let last = batches - 1;
    if !file.has(&format!("{name}/min_after{last}")) {
        return Vec::new();
    }
    let aliased = ["min", "max"].iter().all(|k| {
        let fin = file.tensor(&format!("{name}/{k}_after{last}")).f32();
        (0..last).all(|n| file.tensor(&format!("{name}/{k}_after{n}")).f32() == fin)
    });
    if aliased {
        vec![last]
    } else {
        (0..batches).collect()
    }
}

#[test]
fn golden_observers() {
    let Some(file) = GoldenFile::open("observers.safetensors", "golden_observers") else {
        return;
    };
    let cases = file.cases();
    assert!(!cases.is_empty(), "observers.safetensors lists no cases");
    let mut checked = 0;
    let mut worst = Vec::new();
    for case in &cases {
        let name = case_name(case);
        let batches = param_i64(case, "batches") as usize;
        let (mut obs, tol) = observer_of(case);
        let mm_steps = min_max_steps(&file, name, batches);
        let mut worst_rel = 0.0f32;
        for n in 0..batches {
            obs.observe(&tensor(&file, &format!("{name}/batch{n}")))
                .unwrap_or_else(|e| panic!("{name}: batch{n}: {e}"));
            let q = obs.qparams().unwrap();
            let scale = file.tensor(&format!("{name}/scale_after{n}")).f32();
            let zp = file.tensor(&format!("{name}/zero_point_after{n}")).i32();
            assert_eq!(
                q.scale.len(),
                scale.len(),
                "{name}: after{n}: channel count"
            );
            for (c, (&got, &want)) in q.scale.iter().zip(&scale).enumerate() {
                let rel = ((got - want) / want).abs();
                worst_rel = worst_rel.max(rel);
                assert!(
                    rel <= tol,
                    "{name}: after{n}: scale[{c}] {got} vs PyTorch {want} (rel {rel:e} > {tol:e})"
                );
            }
            assert_eq!(q.zero_point, zp, "{name}: after{n}: zero points");
            if mm_steps.contains(&n) {
                for k in ["min", "max"] {
                    let want = file.tensor(&format!("{name}/{k}_after{n}")).f32();
                    let got = state_values(obs.as_ref(), &format!("{k}_val"));
                    assert_eq!(got, want, "{name}: after{n}: {k}_val");
                }
            }
            checked += 1;
        }
        worst.push(format!("{name}: {worst_rel:.2e}"));
    }
    eprintln!(
        "golden_observers: {} cases, {checked} steps checked; worst relative scale error per case:\n  {}",
        cases.len(),
        worst.join("\n  ")
    );
}
