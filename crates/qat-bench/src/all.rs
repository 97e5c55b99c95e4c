//! `qat-bench all`: every benchmark in one run, gathered into one markdown report (a header
//! describing the machine and build, one table per section, then every JSON line).
//!
//! Each section runs as a child process of this binary (`peak`, `gemm`, `dwconv`, `model`,
//! `train-step`), so per-process settings (train-step's global thread pool) stay isolated
//! and a failing section is reported without losing the others. The model section divides by
//! the VNNI peak the peak section just measured.
//!
//! ```text
//! taskset -c 1 qat-bench all --threads 1 --out bench.md
//! qat-bench all --out bench.md            # 1 and 2 threads, about 3 minutes on a quiet machine
//! ```

use anyhow::{bail, Context};
use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::Instant;

use mobilenet_v2::pipeline as env;

/// Arguments of `qat-bench all`.
#[derive(clap::Args)]
pub struct Args {
    /// Write the markdown report here (default: standard output).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Thread counts for the sections that take them (repeat the flag).
    #[arg(long, default_values_t = vec![1, 2])]
    threads: Vec<usize>,
    /// Timed batches per figure in every section.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Skip sections by name (peak, gemm, dwconv, model, train-step; repeat the flag).
    #[arg(long)]
    skip: Vec<String>,
}

/// A section: its subcommand, the arguments it gets, and the columns of its table
/// (JSON keys; empty = every key in order of appearance).
struct Section {
    name: &'static str,
    title: &'static str,
    args: Vec<String>,
    columns: &'static [(&'static str, &'static str)],
}

/// Lines a section printed, or why it has none.
struct Outcome {
    lines: Vec<Map<String, Value>>,
    error: Option<String>,
    seconds: f64,
}

const SECTIONS: [&str; 5] = ["peak", "gemm", "dwconv", "model", "train-step"];

/// ONNX Runtime 1.32 static QDQ per-channel int8, 1 thread, on this machine type (issue 5):
/// (model, batch, ms).
const ORT_INT8_MS: [(&str, usize, f64); 3] = [
    ("mnv2-28-w0.5", 1, 0.21),
    ("mnv2-28-w0.5", 32, 5.23),
    ("mnv2-224-w1.0", 1, 1.64),
];

fn run_section(name: &str, args: &[String]) -> Outcome {
    let t = Instant::now();
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            return Outcome {
                lines: Vec::new(),
                error: Some(format!("cannot find this executable: {e}")),
                seconds: 0.0,
            }
        }
    };
    eprintln!("all: running `qat-bench {name} {}`", args.join(" "));
    let out = Command::new(exe)
        .arg(name)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output();
    let seconds = t.elapsed().as_secs_f64();
    match out {
        Err(e) => Outcome {
            lines: Vec::new(),
            error: Some(format!("could not start: {e}")),
            seconds,
        },
        Ok(o) => {
            let lines = String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter_map(|v| match v {
                    Value::Object(m) => Some(m),
                    _ => None,
                })
                .collect();
            let error = (!o.status.success()).then(|| format!("exited with {}", o.status));
            Outcome {
                lines,
                error,
                seconds,
            }
        }
    }
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if n.is_f64() => {
                let a = f.abs();
                if a >= 100.0 {
                    format!("{f:.0}")
                } else if a >= 1.0 {
                    format!("{f:.2}")
                } else {
                    format!("{f:.4}")
                }
            }
            _ => n.to_string(),
        },
        Some(v) => v.to_string(),
    }
}

fn table(out: &mut String, columns: &[(&str, &str)], lines: &[Map<String, Value>]) {
    let cols: Vec<(String, String)> = if columns.is_empty() {
        let mut keys: Vec<String> = Vec::new();
        for l in lines {
            for k in l.keys() {
                if k != "bench" && !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
        keys.into_iter().map(|k| (k.clone(), k)).collect()
    } else {
        columns
            .iter()
            .map(|(k, h)| (k.to_string(), h.to_string()))
            .collect()
    };
    let heads: Vec<&str> = cols.iter().map(|(_, h)| h.as_str()).collect();
    let _ = writeln!(out, "| {} |", heads.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(cols.len()));
    for l in lines {
        let row: Vec<String> = cols.iter().map(|(k, _)| cell(l.get(k))).collect();
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
}

/// The model lines with ONNX Runtime's single-thread figure next to ours (`vs_ort` > 1: we
/// are faster).
fn with_ort(lines: &[Map<String, Value>]) -> Vec<Map<String, Value>> {
    lines
        .iter()
        .map(|l| {
            let mut l = l.clone();
            let model = l.get("model").and_then(Value::as_str).unwrap_or("");
            let batch = l.get("batch").and_then(Value::as_u64).unwrap_or(0) as usize;
            // CPU time when the model section measured it: a shared machine inflates wall time.
            let ms = l
                .get("cpu_ms")
                .and_then(Value::as_f64)
                .or_else(|| l.get("ms").and_then(Value::as_f64));
            let threads = l.get("threads").and_then(Value::as_u64);
            if let Some(&(_, _, ort)) = ORT_INT8_MS
                .iter()
                .find(|(m, b, _)| *m == model && *b == batch)
            {
                if threads == Some(1) {
                    l.insert("ort_ms".into(), Value::from(ort));
                    if let Some(ms) = ms {
                        l.insert(
                            "vs_ort".into(),
                            Value::from((ort / ms * 100.0).round() / 100.0),
                        );
                    }
                }
            }
            l
        })
        .collect()
}

/// Version of `package` in the workspace's Cargo.lock (as built).
fn locked_version(package: &str) -> String {
    const LOCK: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock"));
    let needle = format!("name = \"{package}\"\nversion = \"");
    LOCK.find(&needle)
        .and_then(|i| LOCK[i + needle.len()..].split('"').next())
        .unwrap_or("?")
        .to_string()
}

fn rustc_version() -> String {
    Command::new("rustc")
        .arg("-V")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown (rustc not on PATH)".into())
}

/// `YYYY-MM-DD hh:mm UTC` from the system clock.
fn utc_now() -> String {
    let (y, m, d, hh, mm, _) = env::utc_civil(env::unix_now());
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02} UTC")
}

fn header(out: &mut String, args: &Args) {
    let isas: Vec<String> = qat_kernels::Isa::supported()
        .iter()
        .map(|i| i.to_string())
        .collect();
    let _ = writeln!(out, "# qat-bench all\n");
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(out, "| date | {} |", utc_now());
    let _ = writeln!(out, "| CPU | {} |", env::cpu_model());
    let _ = writeln!(
        out,
        "| cores visible | {} |",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = writeln!(out, "| ISAs detected | {} |", isas.join(", "));
    let _ = writeln!(
        out,
        "| ISA used (`QAT_KERNELS_ISA` caps it) | {} |",
        qat_kernels::isa::active()
    );
    let threads: Vec<String> = args.threads.iter().map(|t| t.to_string()).collect();
    let _ = writeln!(out, "| threads | {} |", threads.join(", "));
    let _ = writeln!(out, "| rustc | {} |", rustc_version());
    let _ = writeln!(
        out,
        "| versions | candle-qat {}, candle-core {}, gemm {}, rayon {}, tract-linalg {} |",
        env!("CARGO_PKG_VERSION"),
        locked_version("candle-core"),
        locked_version("gemm"),
        locked_version("rayon"),
        locked_version("tract-linalg")
    );
    let _ = writeln!(
        out,
        "| build | {} |",
        if cfg!(debug_assertions) {
            "debug (numbers are not meaningful: build with --release)"
        } else {
            "release"
        }
    );
    let _ = writeln!(
        out,
        "| timing | best of {} timed batches per figure |\n",
        args.reps
    );
}

/// The VNNI zmm peak the peak section measured, in GMAC/s.
fn measured_peak(lines: &[Map<String, Value>]) -> Option<f64> {
    lines
        .iter()
        .find(|l| l.get("isa").and_then(Value::as_str) == Some("avx512vnni"))
        .and_then(|l| l.get("gmacs").and_then(Value::as_f64))
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    for s in &args.skip {
        if !SECTIONS.contains(&s.as_str()) {
            bail!("unknown --skip {s:?} (sections: {})", SECTIONS.join(", "));
        }
    }
    if args.threads.is_empty() || args.threads.contains(&0) {
        bail!("--threads must be given as counts of at least 1");
    }
    let reps = args.reps.max(1).to_string();
    let threads: Vec<String> = args
        .threads
        .iter()
        .flat_map(|t| ["--threads".to_string(), t.to_string()])
        .collect();
    let with = |extra: &[&str], t: bool| -> Vec<String> {
        let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        v.extend(["--reps".to_string(), reps.clone()]);
        if t {
            v.extend(threads.iter().cloned());
        }
        v
    };
    let mut report = String::new();
    header(&mut report, args);
    let mut all_lines: Vec<Map<String, Value>> = Vec::new();
    let mut peak = None;
    for name in SECTIONS {
        if args.skip.iter().any(|s| s == name) {
            let _ = writeln!(report, "## {name}\n\nskipped (`--skip {name}`)\n");
            continue;
        }
        let sections: Vec<Section> = match name {
            "peak" => vec![Section {
                name,
                title: "Instruction peaks (1 thread)",
                args: Vec::new(),
                columns: &[
                    ("isa", "ISA"),
                    ("instruction", "instruction"),
                    ("gmacs", "GMAC/s (GFMA/s for f32)"),
                ],
            }],
            "gemm" => vec![Section {
                name,
                title: "GEMM u8×i8 (the issue's shapes): ours, tract-linalg, candle f32",
                args: with(&["--no-mobilenet"], true),
                columns: &[
                    ("impl", "impl"),
                    ("kernel", "kernel"),
                    ("output", "output"),
                    ("threads", "threads"),
                    ("m", "M"),
                    ("k", "K"),
                    ("n", "N"),
                    ("gmacs", "GMAC/s"),
                    ("ms", "ms"),
                ],
            }],
            "dwconv" => vec![Section {
                name,
                title: "Depthwise 3×3 on MobileNetV2's layers (batch 1)",
                args: with(&[], true),
                columns: &[
                    ("net", "net"),
                    ("c", "C"),
                    ("h", "H=W"),
                    ("stride", "stride"),
                    ("impl", "impl"),
                    ("kernel", "kernel"),
                    ("threads", "threads"),
                    ("gmacs", "GMAC/s"),
                    ("ms", "ms"),
                ],
            }],
            "model" => {
                let mut a = with(&[], true);
                if let Some(p) = peak {
                    a.extend(["--peak-gmacs".to_string(), format!("{p}")]);
                }
                vec![Section {
                    name,
                    title: "MobileNetV2: int8 (convert → qat-runtime) vs fp32 (qat-graph eval on candle)",
                    args: a,
                    columns: &[
                        ("model", "model"),
                        ("batch", "batch"),
                        ("threads", "threads"),
                        ("ms", "int8 ms"),
                        ("cpu_ms", "int8 CPU ms"),
                        ("fp32_ms", "fp32 ms"),
                        ("int8_speedup", "int8 speed-up"),
                        ("gmacs", "int8 GMAC/s"),
                        ("peak_pct", "% VNNI peak/thread"),
                        ("ort_ms", "ONNX Runtime int8 ms (issue 5)"),
                        ("vs_ort", "ORT ms / ours (CPU ms)"),
                    ],
                }]
            }
            _ => args
                .threads
                .iter()
                .map(|t| Section {
                    name,
                    title: "Training step, MobileNetV2 28×28 w0.5 batch 32",
                    args: vec![
                        "--threads".into(),
                        t.to_string(),
                        "--warmup".into(),
                        "2".into(),
                        "--steps".into(),
                        "5".into(),
                    ],
                    columns: &[],
                })
                .collect(),
        };
        let mut first = true;
        for s in sections {
            let o = run_section(s.name, &s.args);
            if first {
                let _ = writeln!(report, "## {}\n", s.title);
                first = false;
            }
            let _ = writeln!(
                report,
                "`qat-bench {} {}` ({:.0} s)\n",
                s.name,
                s.args.join(" "),
                o.seconds
            );
            if let Some(e) = &o.error {
                let _ = writeln!(report, "**section failed: {e}**\n");
            }
            if s.name == "peak" {
                peak = measured_peak(&o.lines);
            }
            let lines = if s.name == "model" {
                with_ort(&o.lines)
            } else {
                o.lines.clone()
            };
            if !lines.is_empty() {
                table(&mut report, s.columns, &lines);
                let _ = writeln!(report);
            }
            all_lines.extend(lines);
        }
    }
    let _ = writeln!(report, "## JSON lines\n\n```jsonl");
    for l in &all_lines {
        let _ = writeln!(report, "{}", Value::Object(l.clone()));
    }
    let _ = writeln!(report, "```");
    match &args.out {
        Some(p) => {
            std::fs::write(p, &report).with_context(|| format!("writing {}", p.display()))?;
            eprintln!("all: wrote {}", p.display());
        }
        None => print!("{report}"),
    }
    Ok(())
}
