//! [`Metrics`] (`metrics.json`: every number of a run) and the human-readable summary: the
//! terminal table and `report.md`.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::config::PipelineConfig;
use super::env::Environment;
use super::error::{io, PipelineError, Result};
use super::eval::EvalResult;
use super::int8::Int8Metrics;
use super::ptq::PtqMetrics;
use super::qat::QatMetrics;
use super::train::TrainCurve;

/// `metrics.json`
pub const METRICS: &str = "metrics.json";
/// `report.md`
pub const REPORT: &str = "report.md";

/// Median forward latency in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub batch1_ms: f64,
    pub batch32_ms: f64,
}

/// The fp32 stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fp32Metrics {
    pub curve: TrainCurve,
    /// The final model on the test images.
    pub test: EvalResult,
    /// Eval-mode forward latency of the trained model.
    pub latency: Latency,
    /// Size of `fp32.safetensors`.
    pub checkpoint_bytes: u64,
}

/// The model and data of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub parameters: usize,
    pub macs_per_image: u64,
    pub train_images: usize,
    pub test_images: usize,
}

/// Everything a run measured; stages that have not run are `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// UTC start of the run (the default folder name).
    pub started: String,
    pub config: PipelineConfig,
    pub environment: Environment,
    pub model: ModelInfo,
    pub fp32: Option<Fp32Metrics>,
    pub ptq: Option<PtqMetrics>,
    pub qat: Option<QatMetrics>,
    pub int8: Option<Int8Metrics>,
    /// Stages taken from an earlier invocation's checkpoints (`--resume`), in order.
    pub resumed: Vec<String>,
}

impl Metrics {
    /// Write `metrics.json` (atomically: a crash never leaves half a file to resume from).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let p = dir.join(METRICS);
        let tmp = dir.join(format!("{METRICS}.tmp"));
        let json = serde_json::to_string_pretty(self).map_err(|source| PipelineError::Json {
            path: p.clone(),
            source,
        })?;
        std::fs::write(&tmp, json).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &p).map_err(io(&p))
    }

    /// Read a run folder's `metrics.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let p = dir.join(METRICS);
        let s = std::fs::read_to_string(&p).map_err(io(&p))?;
        serde_json::from_str(&s).map_err(|source| PipelineError::Json { path: p, source })
    }

    /// The summary rows: `(model, accuracy %, latency b1, latency b32, size bytes)`.
    fn rows(&self) -> Vec<[String; 5]> {
        let pct = |r: &EvalResult| format!("{:.2}", 100.0 * r.accuracy);
        let dash = || "–".to_string();
        let mut rows = Vec::new();
        if let Some(f) = &self.fp32 {
            rows.push([
                "fp32".into(),
                pct(&f.test),
                format!("{:.2}", f.latency.batch1_ms),
                format!("{:.2}", f.latency.batch32_ms),
                f.checkpoint_bytes.to_string(),
            ]);
        }
        if let Some(p) = &self.ptq {
            rows.push([
                "PTQ int8".into(),
                pct(&p.int8),
                dash(),
                dash(),
                p.int8_bytes.to_string(),
            ]);
            rows.push([
                "PTQ (fake-quant)".into(),
                pct(&p.fake_quant),
                dash(),
                dash(),
                dash(),
            ]);
        }
        if let Some(q) = self.qat.as_ref().and_then(|q| q.curve.epochs.last()) {
            rows.push([
                "QAT (fake-quant)".into(),
                pct(&q.test),
                dash(),
                dash(),
                dash(),
            ]);
        }
        if let Some(i) = &self.int8 {
            rows.push([
                "QAT int8".into(),
                pct(&i.test),
                format!("{:.2}", i.latency.batch1_ms),
                format!("{:.2}", i.latency.batch32_ms),
                i.model_bytes.to_string(),
            ]);
        }
        rows
    }

    /// Accuracy differences against the goals (points; positive = below fp32).
    fn goals(&self) -> Vec<String> {
        let mut g = Vec::new();
        let Some(fp) = self.fp32.as_ref().map(|f| f.test.accuracy) else {
            return g;
        };
        let pts = |a: f64| 100.0 * (fp - a);
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        if let Some(p) = &self.ptq {
            let d = pts(p.int8.accuracy);
            g.push(format!(
                "PTQ int8: fp32 − PTQ int8 = {d:.2} points (goal: ≤ 1 point — {})",
                verdict(d <= 1.0)
            ));
        }
        if let Some(i) = &self.int8 {
            let d = pts(i.test.accuracy);
            g.push(format!(
                "QAT int8: fp32 − QAT int8 = {d:.2} points (goal: ≤ 0.3 points — {})",
                verdict(d <= 0.3)
            ));
            g.push(format!(
                "fake-quant ⇄ int8 top-1 agreement {:.2}% on {} test images (goal: ≥ 99.8% — {})",
                100.0 * i.top1_agreement,
                i.test.images,
                verdict(i.top1_agreement >= 0.998)
            ));
            if let Some(a) = i.integer_exact_agreement {
                g.push(format!(
                    "integer-exact ⇄ int8 top-1 agreement {:.2}% on {} test images (the QAT \
                     graph's integer-exact evaluation; must be 100%: {})",
                    100.0 * a,
                    i.test.images,
                    verdict(a == 1.0)
                ));
            }
            if let Some(w) = i.compare.worst_layer() {
                g.push(format!(
                    "per layer ({} images): worst end-to-end layer {} with {:.2}% of elements \
                     equal, at most {} step(s) off; int8 latency {:.2} / {:.2} ms (batch 1 / \
                     32) vs fp32 {}, on {}",
                    i.compare.samples,
                    w.name,
                    100.0 * w.end_to_end.equal_fraction,
                    w.end_to_end.max_step_diff,
                    i.latency.batch1_ms,
                    i.latency.batch32_ms,
                    self.fp32.as_ref().map_or("–".into(), |f| format!(
                        "{:.2} / {:.2} ms",
                        f.latency.batch1_ms, f.latency.batch32_ms
                    )),
                    i.isa
                ));
            }
        }
        g
    }

    /// The terminal table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let head = ["model", "top-1 %", "ms @1", "ms @32", "bytes"];
        let _ = writeln!(
            s,
            "{:<22} {:>8} {:>8} {:>8} {:>10}",
            head[0], head[1], head[2], head[3], head[4]
        );
        for r in self.rows() {
            let _ = writeln!(
                s,
                "{:<22} {:>8} {:>8} {:>8} {:>10}",
                r[0], r[1], r[2], r[3], r[4]
            );
        }
        for g in self.goals() {
            let _ = writeln!(s, "{g}");
        }
        s
    }

    /// `report.md`.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let c = &self.config;
        let _ = writeln!(
            s,
            "# MobileNetV2 (width {}) on {}: fp32 → PTQ → QAT → int8\n",
            c.width, c.dataset
        );
        let _ = writeln!(
            s,
            "Run started {} · {} training images · {} test images · {} parameters · {:.1} M MAC \
             per image\n",
            self.started,
            self.model.train_images,
            self.model.test_images,
            self.model.parameters,
            self.model.macs_per_image as f64 / 1e6
        );
        let _ = writeln!(
            s,
            "| model | top-1 % | latency batch 1 (ms) | latency batch 32 (ms) | size (bytes) |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        for r in self.rows() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                r[0], r[1], r[2], r[3], r[4]
            );
        }
        let _ = writeln!(s);
        for g in self.goals() {
            let _ = writeln!(s, "- {g}");
        }
        if !self.resumed.is_empty() {
            let _ = writeln!(
                s,
                "- stages taken from earlier checkpoints (`--resume`): {}",
                self.resumed.join(", ")
            );
        }
        let _ = writeln!(s, "\n## Per epoch\n");
        let _ = writeln!(s, "| stage | epoch | train loss | train acc % | test loss | test acc % | lr (last) | images/s | s | CPU s (training) |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let stages = [
            ("fp32", self.fp32.as_ref().map(|f| &f.curve)),
            ("QAT", self.qat.as_ref().map(|q| &q.curve)),
        ];
        for (name, curve) in stages {
            for e in curve.iter().flat_map(|c| c.epochs.iter()) {
                let _ = writeln!(
                    s,
                    "| {name} | {} | {:.4} | {:.2} | {:.4} | {:.2} | {:.5} | {:.1} | {:.0} | {} |",
                    e.epoch,
                    e.train_loss,
                    100.0 * e.train_accuracy,
                    e.test.loss,
                    100.0 * e.test.accuracy,
                    e.lr,
                    e.images_per_s,
                    e.seconds,
                    e.cpu_seconds.map_or("–".into(), |c| format!("{c:.0}"))
                );
            }
        }
        if let Some(q) = &self.qat {
            let _ = writeln!(
                s,
                "\nQAT: BN statistics frozen at step {}, observers off at step {} (of {}).",
                q.bn_frozen_at_step.map_or("end".into(), |t| t.to_string()),
                q.observers_off_at_step
                    .map_or("end".into(), |t| t.to_string()),
                q.curve.step_loss.len()
            );
        }
        let hists = self
            .qat
            .iter()
            .flat_map(|q| q.weight_histograms.iter().chain(&q.activation_histograms))
            .chain(self.ptq.iter().flat_map(|p| p.activation_histograms.iter()));
        let mut any = false;
        for h in hists {
            if !any {
                let _ = writeln!(s, "\n## Quantization ranges\n");
                let _ = writeln!(s, "| stage | layer | kind | range | clipped % |");
                let _ = writeln!(s, "|---|---|---|---|---:|");
                any = true;
            }
            let _ = writeln!(
                s,
                "| {} | {} | {} | [{:.4}, {:.4}] {} | {:.3} |",
                h.stage,
                h.layer,
                h.kind,
                h.range[0],
                h.range[1],
                h.unit,
                100.0 * h.clipped
            );
        }
        let _ = writeln!(s, "\n## Plots\n");
        let _ = writeln!(s, "![training curves](curves.svg)\n");
        let _ = writeln!(
            s,
            "![weight and activation histograms with the quantization range](histograms.svg)\n"
        );
        if self.int8.is_some() {
            let _ = writeln!(
                s,
                "![per-layer fake-quant vs int8 agreement](layer_error.svg)\n"
            );
        }
        let _ = writeln!(s, "## Settings\n");
        let _ = writeln!(s, "| setting | value |\n|---|---|");
        if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(&self.config) {
            for (k, v) in map {
                let _ = writeln!(s, "| {k} | {v} |");
            }
        }
        let e = &self.environment;
        let _ = writeln!(s, "\n## Environment\n");
        let _ = writeln!(s, "| | |\n|---|---|");
        for (k, v) in [
            ("CPU", e.cpu.clone()),
            ("logical CPUs", e.cpus.to_string()),
            ("int8 ISA (qat_kernels::isa::active)", e.isa.clone()),
            ("threads", e.threads.to_string()),
            ("OS / arch", format!("{} / {}", e.os, e.arch)),
            ("mobilenet-v2 crate", e.crate_version.clone()),
            ("candle", e.candle_version.clone()),
            ("optimized build", e.optimized.to_string()),
        ] {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        s
    }

    /// Write `metrics.json` and `report.md`.
    pub fn write_reports(&self, dir: &Path) -> Result<()> {
        self.save(dir)?;
        let p = dir.join(REPORT);
        std::fs::write(&p, self.markdown()).map_err(io(&p))
    }
}
