//! Test support shared by the workspace's crates (a dev-dependency only).
//!
//! [`GoldenFile`] reads the PyTorch reference vectors in `../shared/golden` (or
//! `$QAT_GOLDEN_DIR`): safetensors files whose metadata holds a JSON `cases` list.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

/// The golden directory: `$QAT_GOLDEN_DIR`, else `<workspace>/../shared/golden`.
///
/// Returns `None` (after printing a SKIP line naming the test) when neither exists, so a
/// user's machine without the vectors still runs the rest of the suite. Under CI
/// (`CI=true`) a missing folder panics: there it must never be a silent skip.
pub fn golden_dir(test: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("QAT_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden"),
    };
    if dir.is_dir() {
        return Some(dir);
    }
    let msg = format!(
        "golden vectors not found at {} (set QAT_GOLDEN_DIR)",
        dir.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {msg}; under CI the golden tests must run");
    }
    eprintln!("SKIPPED {test}: {msg}");
    None
}

/// One golden safetensors file, read whole.
pub struct GoldenFile {
    pub path: PathBuf,
    bytes: Vec<u8>,
    metadata: HashMap<String, String>,
}

/// A golden tensor: shape and values widened to f64 (exact for every stored dtype).
#[derive(Debug, Clone)]
pub struct GoldenTensor {
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub values: Vec<f64>,
}

impl GoldenTensor {
    /// The values as f32 (exact for f32 tensors).
    pub fn f32(&self) -> Vec<f32> {
        self.values.iter().map(|&v| v as f32).collect()
    }
    /// The values as i32 (exact for integer tensors within range).
    pub fn i32(&self) -> Vec<i32> {
        self.values.iter().map(|&v| v as i32).collect()
    }
    /// The values as u8.
    pub fn u8(&self) -> Vec<u8> {
        self.values.iter().map(|&v| v as u8).collect()
    }
    /// The values as i8.
    pub fn i8(&self) -> Vec<i8> {
        self.values.iter().map(|&v| v as i8).collect()
    }
}

impl GoldenFile {
    /// Open `<golden_dir>/<name>`; `None` when the golden folder is absent (see [`golden_dir`]).
    pub fn open(name: &str, test: &str) -> Option<GoldenFile> {
        let dir = golden_dir(test)?;
        Some(Self::open_path(&dir.join(name)))
    }

    /// Open a golden file by path (panics with the path on a missing or corrupt file: a test
    /// that cannot read its reference must fail loudly).
    pub fn open_path(path: &Path) -> GoldenFile {
        let bytes =
            std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
        let metadata = meta.metadata().clone().unwrap_or_default();
        GoldenFile {
            path: path.to_path_buf(),
            bytes,
            metadata,
        }
    }

    /// Every `*.safetensors` in the golden folder whose file name starts with `prefix`,
    /// sorted by name (so a new vector set dropped there is tested too).
    pub fn all_with_prefix(prefix: &str, test: &str) -> Vec<GoldenFile> {
        let Some(dir) = golden_dir(test) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| x == "safetensors")
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(prefix))
            })
            .collect();
        paths.sort();
        paths.iter().map(|p| Self::open_path(p)).collect()
    }

    /// A metadata string.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// The metadata `cases` list (empty when the file has none).
    pub fn cases(&self) -> Vec<Value> {
        match self.meta("cases") {
            Some(s) => match serde_json::from_str(s) {
                Ok(Value::Array(v)) => v,
                _ => panic!(
                    "{}: metadata `cases` is not a JSON list",
                    self.path.display()
                ),
            },
            None => Vec::new(),
        }
    }

    /// The names of every tensor in the file.
    pub fn names(&self) -> Vec<String> {
        self.st().names().into_iter().map(str::to_string).collect()
    }

    /// Whether a tensor exists.
    pub fn has(&self, name: &str) -> bool {
        self.st().tensor(name).is_ok()
    }

    /// Read a tensor, widened to f64 (panics naming the tensor when it is missing).
    pub fn tensor(&self, name: &str) -> GoldenTensor {
        let st = self.st();
        let view = st
            .tensor(name)
            .unwrap_or_else(|e| panic!("{}: tensor {name}: {e}", self.path.display()));
        let data = view.data();
        let values: Vec<f64> = match view.dtype() {
            Dtype::F32 => chunks::<4>(data)
                .map(|b| f32::from_le_bytes(b) as f64)
                .collect(),
            Dtype::F64 => chunks::<8>(data).map(f64::from_le_bytes).collect(),
            Dtype::I64 => chunks::<8>(data)
                .map(|b| i64::from_le_bytes(b) as f64)
                .collect(),
            Dtype::I32 => chunks::<4>(data)
                .map(|b| i32::from_le_bytes(b) as f64)
                .collect(),
            Dtype::U8 | Dtype::BOOL => data.iter().map(|&b| b as f64).collect(),
            Dtype::I8 => data.iter().map(|&b| b as i8 as f64).collect(),
            d => panic!(
                "{}: tensor {name}: unsupported dtype {d:?}",
                self.path.display()
            ),
        };
        GoldenTensor {
            shape: view.shape().to_vec(),
            dtype: view.dtype(),
            values,
        }
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes)
            .unwrap_or_else(|e| panic!("parsing {}: {e}", self.path.display()))
    }
}

fn chunks<const N: usize>(data: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    data.chunks_exact(N)
        .map(|c| c.try_into().expect("exact chunk"))
}

/// A number from a case's JSON parameters (panics naming the case and key when missing).
pub fn param_f64(case: &Value, key: &str) -> f64 {
    case.get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("case {}: missing number `{key}`", case_name(case)))
}

/// An integer from a case's JSON parameters.
pub fn param_i64(case: &Value, key: &str) -> i64 {
    case.get(key)
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("case {}: missing integer `{key}`", case_name(case)))
}

/// A string from a case's JSON parameters.
pub fn param_str<'a>(case: &'a Value, key: &str) -> &'a str {
    case.get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("case {}: missing string `{key}`", case_name(case)))
}

/// The case's `name`.
pub fn case_name(case: &Value) -> &str {
    case.get("name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
}

/// `n` deterministic pseudo-random values uniform in `[-amp/2, amp/2)` (a 64-bit LCG seeded
/// with `seed`): bench and test inputs that are the same on every machine and run.
pub fn lcg_values(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * amp
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_golden_file() {
        let files = GoldenFile::all_with_prefix("", "qat-testutil::reads_every_golden_file");
        if golden_dir("qat-testutil").is_none() {
            return;
        }
        assert!(
            !files.is_empty(),
            "the golden folder holds no safetensors file"
        );
        for f in &files {
            for name in f.names() {
                let t = f.tensor(&name);
                assert_eq!(t.values.len(), t.shape.iter().product::<usize>(), "{name}");
            }
        }
        let fq = files
            .iter()
            .find(|f| f.path.ends_with("fake_quant.safetensors"))
            .expect("fake_quant.safetensors");
        assert!(!fq.cases().is_empty());
    }
}
