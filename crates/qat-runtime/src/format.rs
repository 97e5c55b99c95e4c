//! The model file: safetensors with canonical (unpacked) weights and the plan as versioned JSON
//! in the header's metadata. Packing happens at load for the running CPU, so one file runs on
//! x86 and ARM alike.
//!
//! # Layout
//!
//! Metadata key `"model"` holds the JSON below; tensors are named after their op:
//!
//! | tensor | dtype | shape | for |
//! |---|---|---|---|
//! | `{op}.weight` | I8 | `[O, I/groups, kh, kw]` (conv2d), `[O, I]` (linear) | quantized ops |
//! | `{op}.weight_scales` | F32 | `[O]` | quantized ops (finite, > 0) |
//! | `{op}.bias` | I32 | `[O]` | quantized ops with `"bias": true` (scale `in · w[o]`) |
//! | `{op}.weight` | F32 | `[O, I]` | `float_linear`, `float_conv1x1` |
//! | `{op}.bias` | F32 | `[O]` | float ops with `"bias": true` |
//!
//! JSON fields (unknown fields are refused):
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `format` | string | always `"candle-qat-int8"` |
//! | `version` | integer | format version, `1` (others are refused) |
//! | `input` | object | `name`, `shape` `[C, H, W]`, `qparams` |
//! | `output` | string | name of the output value |
//! | `ops` | array | in execution order: `{ "name", "op", "attrs" }` |
//! | `qparams` | object | `{ "scale": f64 (an exact f32), "zero_point": 0..=255 }` |
//! | `op` | string | `quantize`, `dequantize`, `conv2d`, `linear`, `add`, `global_avg_pool`, `flatten`, `float_linear`, `float_conv1x1`, `float_relu`, `float_hardswish`, `float_add` |
//! | `attrs` of `conv2d` | object | `input`, `out_channels`, `kernel`, `stride`, `padding`, `dilation` (each `[h, w]`), `groups`, `output` (qparams), `activation` (`none` / `relu` / `relu6` / `{"clamp": [qmin, qmax]}`), `bias` (bool) |
//! | `attrs` of `linear` | object | `input`, `out_features`, `output`, `activation`, `bias` |
//! | `attrs` of `add` | object | `a`, `b`, `output`, `activation` |
//! | `attrs` of `quantize` / `global_avg_pool` | object | `input`, `qparams` / `output` |
//! | `attrs` of `float_linear` / `float_conv1x1` | object | `input`, `out_features` / `out_channels`, `bias` |
//! | `attrs` of the others | object | `input` (or `a`, `b`) |
//!
//! Loading re-builds the model through [`crate::ModelBuilder`], so a file is held to exactly
//! the checks a freshly built model is; in addition every tensor must have the expected dtype
//! and shape and no tensor may be left unused. Any failure is an `Err`, never a panic.
//!
//! ```
//! use qat_core::QParams;
//! use qat_runtime::{ModelBuilder, ModelOptions, QuantizedModel, Shape};
//! let q = QParams { scale: 0.1, zero_point: 3 };
//! let mut b = ModelBuilder::new();
//! b.input("x", Shape::new(2, 2, 2), q).unwrap();
//! b.global_avg_pool("pool", "x", None).unwrap();
//! let model = b.build("pool").unwrap();
//! let path = std::env::temp_dir().join(format!("qat-doc-{}.safetensors", std::process::id()));
//! model.save(&path).unwrap();                       // atomic: temp file + rename
//! let loaded = QuantizedModel::load(&path).unwrap(); // validated, packed for this CPU
//! let x = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8];
//! assert_eq!(loaded.run(&x, 1).unwrap(), model.run(&x, 1).unwrap());
//! # std::fs::remove_file(&path).unwrap();
//! // A damaged file is an error, not a panic.
//! let bytes = model.to_bytes().unwrap();
//! assert!(QuantizedModel::from_bytes(&bytes[..bytes.len() - 1], ModelOptions::default()).is_err());
//! ```

use crate::builder::check_qparams;
use crate::model::ModelOptions;
use crate::op::{Bias, Conv2dParams, LinearParams, Op};
use crate::{ModelBuilder, QuantizedModel, Result, RuntimeError, Shape};
use qat_core::QParams;
use qat_kernels::Activation;
use safetensors::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::Path;

/// The `format` field.
pub const FORMAT: &str = "candle-qat-int8";
/// The version this crate writes and reads.
pub const VERSION: u32 = 1;
/// The metadata key holding the JSON.
pub const METADATA_KEY: &str = "model";

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQ {
    scale: f64,
    zero_point: i32,
}

impl From<QParams> for FileQ {
    fn from(q: QParams) -> Self {
        // f32 → f64 is exact, and serde_json round-trips f64 exactly.
        FileQ {
            scale: q.scale as f64,
            zero_point: q.zero_point,
        }
    }
}

impl FileQ {
    fn to_q(self) -> QParams {
        QParams {
            scale: self.scale as f32,
            zero_point: self.zero_point,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FileAct {
    None,
    Relu,
    Relu6,
    /// `{"clamp": [qmin, qmax]}`: explicit u8 output bounds (a narrowed fake-quant range).
    Clamp([u8; 2]),
}

impl From<Activation> for FileAct {
    fn from(a: Activation) -> Self {
        match a {
            Activation::None => FileAct::None,
            Activation::Relu => FileAct::Relu,
            Activation::Relu6 => FileAct::Relu6,
            Activation::Clamp { qmin, qmax } => FileAct::Clamp([qmin, qmax]),
        }
    }
}

impl From<FileAct> for Activation {
    fn from(a: FileAct) -> Self {
        match a {
            FileAct::None => Activation::None,
            FileAct::Relu => Activation::Relu,
            FileAct::Relu6 => Activation::Relu6,
            FileAct::Clamp([qmin, qmax]) => Activation::Clamp { qmin, qmax },
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileInput {
    name: String,
    shape: [usize; 3],
    qparams: FileQ,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(
    tag = "op",
    content = "attrs",
    rename_all = "snake_case",
    deny_unknown_fields
)]
enum FileOpKind {
    Quantize(QuantizeAttrs),
    Dequantize(InputAttrs),
    Conv2d(ConvAttrs),
    Linear(LinearAttrs),
    Add(AddAttrs),
    GlobalAvgPool(PoolAttrs),
    Flatten(InputAttrs),
    FloatLinear(FloatLinearAttrs),
    FloatConv1x1(FloatConvAttrs),
    FloatRelu(InputAttrs),
    FloatHardswish(InputAttrs),
    FloatAdd(FloatAddAttrs),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputAttrs {
    input: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuantizeAttrs {
    input: String,
    qparams: FileQ,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConvAttrs {
    input: String,
    out_channels: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
    output: FileQ,
    activation: FileAct,
    bias: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinearAttrs {
    input: String,
    out_features: usize,
    output: FileQ,
    activation: FileAct,
    bias: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddAttrs {
    a: String,
    b: String,
    output: FileQ,
    activation: FileAct,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolAttrs {
    input: String,
    output: FileQ,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FloatLinearAttrs {
    input: String,
    out_features: usize,
    bias: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FloatConvAttrs {
    input: String,
    out_channels: usize,
    bias: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FloatAddAttrs {
    a: String,
    b: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOp {
    name: String,
    #[serde(flatten)]
    kind: FileOpKind,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileModel {
    format: String,
    version: u32,
    input: FileInput,
    output: String,
    ops: Vec<FileOp>,
}

/// A tensor to write.
struct Owned {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Owned {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn i8s(v: &[i8], shape: Vec<usize>) -> Owned {
    Owned {
        dtype: Dtype::I8,
        shape,
        data: v.iter().map(|&x| x as u8).collect(),
    }
}

fn i32s(v: &[i32]) -> Owned {
    Owned {
        dtype: Dtype::I32,
        shape: vec![v.len()],
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn f32s(v: &[f32], shape: Vec<usize>) -> Owned {
    Owned {
        dtype: Dtype::F32,
        shape,
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn bias_flag(b: &Bias, name: &str, t: &mut BTreeMap<String, Owned>) -> bool {
    match b {
        Bias::I32(v) => {
            t.insert(format!("{name}.bias"), i32s(v));
            true
        }
        // The builder stores i32 biases only.
        Bias::F32(_) | Bias::None => false,
    }
}

impl QuantizedModel {
    /// The file's bytes (see the [module documentation](self::super::format)).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut tensors: BTreeMap<String, Owned> = BTreeMap::new();
        let mut ops = Vec::with_capacity(self.ops().len());
        for node in self.ops() {
            let name = node.name.clone();
            let kind = match &node.op {
                Op::Quantize { input, qparams } => FileOpKind::Quantize(QuantizeAttrs {
                    input: input.clone(),
                    qparams: (*qparams).into(),
                }),
                Op::Dequantize { input } => FileOpKind::Dequantize(InputAttrs {
                    input: input.clone(),
                }),
                Op::Conv2d { input, params: p } => {
                    let ci = p.weight.len() / (p.out_channels * p.kernel.0 * p.kernel.1);
                    let shape = vec![p.out_channels, ci, p.kernel.0, p.kernel.1];
                    tensors.insert(format!("{name}.weight"), i8s(&p.weight, shape));
                    tensors.insert(
                        format!("{name}.weight_scales"),
                        f32s(&p.weight_scales, vec![p.out_channels]),
                    );
                    FileOpKind::Conv2d(ConvAttrs {
                        input: input.clone(),
                        out_channels: p.out_channels,
                        kernel: [p.kernel.0, p.kernel.1],
                        stride: [p.stride.0, p.stride.1],
                        padding: [p.padding.0, p.padding.1],
                        dilation: [p.dilation.0, p.dilation.1],
                        groups: p.groups,
                        output: p.output.into(),
                        activation: p.activation.into(),
                        bias: bias_flag(&p.bias, &name, &mut tensors),
                    })
                }
                Op::Linear { input, params: p } => {
                    let shape = vec![p.out_features, p.weight.len() / p.out_features];
                    tensors.insert(format!("{name}.weight"), i8s(&p.weight, shape));
                    tensors.insert(
                        format!("{name}.weight_scales"),
                        f32s(&p.weight_scales, vec![p.out_features]),
                    );
                    FileOpKind::Linear(LinearAttrs {
                        input: input.clone(),
                        out_features: p.out_features,
                        output: p.output.into(),
                        activation: p.activation.into(),
                        bias: bias_flag(&p.bias, &name, &mut tensors),
                    })
                }
                Op::Add {
                    a,
                    b,
                    output,
                    activation,
                } => FileOpKind::Add(AddAttrs {
                    a: a.clone(),
                    b: b.clone(),
                    output: (*output).into(),
                    activation: (*activation).into(),
                }),
                Op::GlobalAvgPool { input, output } => FileOpKind::GlobalAvgPool(PoolAttrs {
                    input: input.clone(),
                    output: (*output).into(),
                }),
                Op::Flatten { input } => FileOpKind::Flatten(InputAttrs {
                    input: input.clone(),
                }),
                Op::FloatLinear {
                    input,
                    out_features,
                    weight,
                    bias,
                } => {
                    float_tensors(&name, *out_features, weight, bias, &mut tensors);
                    FileOpKind::FloatLinear(FloatLinearAttrs {
                        input: input.clone(),
                        out_features: *out_features,
                        bias: bias.is_some(),
                    })
                }
                Op::FloatConv1x1 {
                    input,
                    out_channels,
                    weight,
                    bias,
                } => {
                    float_tensors(&name, *out_channels, weight, bias, &mut tensors);
                    FileOpKind::FloatConv1x1(FloatConvAttrs {
                        input: input.clone(),
                        out_channels: *out_channels,
                        bias: bias.is_some(),
                    })
                }
                Op::FloatRelu { input } => FileOpKind::FloatRelu(InputAttrs {
                    input: input.clone(),
                }),
                Op::FloatHardswish { input } => FileOpKind::FloatHardswish(InputAttrs {
                    input: input.clone(),
                }),
                Op::FloatAdd { a, b } => FileOpKind::FloatAdd(FloatAddAttrs {
                    a: a.clone(),
                    b: b.clone(),
                }),
            };
            ops.push(FileOp { name, kind });
        }
        let input = self.input();
        let file = FileModel {
            format: FORMAT.into(),
            version: VERSION,
            input: FileInput {
                name: input.name.clone(),
                shape: [input.shape.c, input.shape.h, input.shape.w],
                qparams: input.qparams.into(),
            },
            output: self.output_name().to_string(),
            ops,
        };
        let json = serde_json::to_string(&file)
            .map_err(|e| RuntimeError::Format(format!("encoding the JSON: {e}")))?;
        let meta = HashMap::from([(METADATA_KEY.to_string(), json)]);
        safetensors::serialize(tensors.iter(), Some(meta))
            .map_err(|e| RuntimeError::Format(format!("encoding safetensors: {e}")))
    }

    /// Write the model to `path` atomically: a temporary file in the same directory, flushed
    /// to disk, then renamed over `path` (readers see the old file or the new one, never half).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_bytes()?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let file_name = path.file_name().ok_or_else(|| {
            RuntimeError::Format(format!("{} is not a file path", path.display()))
        })?;
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(
            ".{}.{}.{n}.tmp",
            file_name.to_string_lossy(),
            std::process::id()
        ));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            RuntimeError::Io(e)
        })
    }

    /// Load a model file and pack it for this CPU's best ISA.
    pub fn load(path: impl AsRef<Path>) -> Result<QuantizedModel> {
        Self::load_with(path, ModelOptions::default())
    }

    /// [`QuantizedModel::load`] with options (forced ISA, threads).
    pub fn load_with(path: impl AsRef<Path>, options: ModelOptions) -> Result<QuantizedModel> {
        let bytes = std::fs::read(path)?;
        Self::from_bytes(&bytes, options)
    }

    /// Parse, validate and pack a model file's bytes.
    pub fn from_bytes(bytes: &[u8], options: ModelOptions) -> Result<QuantizedModel> {
        let ferr = |m: String| RuntimeError::Format(m);
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| ferr(format!("not a valid safetensors file: {e}")))?;
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| ferr(format!("not a valid safetensors file: {e}")))?;
        let json = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(METADATA_KEY))
            .ok_or_else(|| ferr(format!("no `{METADATA_KEY}` entry in the metadata")))?;
        let head: serde_json::Value =
            serde_json::from_str(json).map_err(|e| ferr(format!("model JSON: {e}")))?;
        match head.get("format").and_then(|f| f.as_str()) {
            Some(FORMAT) => {}
            other => return Err(ferr(format!("format is {other:?}, expected \"{FORMAT}\""))),
        }
        match head.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == VERSION as u64 => {}
            other => {
                return Err(ferr(format!(
                    "unsupported version {other:?} (this build reads version {VERSION})"
                )))
            }
        }
        let file: FileModel =
            serde_json::from_value(head).map_err(|e| ferr(format!("model JSON: {e}")))?;
        let mut tensors = Tensors {
            st: &st,
            used: HashSet::new(),
        };
        let mut b = ModelBuilder::new();
        let [c, h, w] = file.input.shape;
        let q = file.input.qparams.to_q();
        check_qparams(&file.input.name, "input", q)?;
        b.input(&file.input.name, Shape::new(c, h, w), q)?;
        for fop in file.ops {
            let name = fop.name;
            let op = decode_op(&name, fop.kind, &mut tensors)?;
            b.op(&name, op)?;
        }
        let mut unused: Vec<&str> = st
            .names()
            .into_iter()
            .filter(|n| !tensors.used.contains(*n))
            .collect();
        if !unused.is_empty() {
            unused.sort_unstable();
            return Err(ferr(format!("tensors no op uses: {unused:?}")));
        }
        b.build_with(&file.output, options)
    }
}

fn float_tensors(
    name: &str,
    n: usize,
    weight: &[f32],
    bias: &Option<Vec<f32>>,
    t: &mut BTreeMap<String, Owned>,
) {
    t.insert(
        format!("{name}.weight"),
        f32s(weight, vec![n, weight.len() / n]),
    );
    if let Some(b) = bias {
        t.insert(format!("{name}.bias"), f32s(b, vec![n]));
    }
}

struct Tensors<'a, 'd> {
    st: &'a SafeTensors<'d>,
    used: HashSet<String>,
}

impl Tensors<'_, '_> {
    /// The raw bytes of `op.suffix`, checked for dtype and rank (`shape` entries `None` are
    /// free and returned).
    fn get(
        &mut self,
        op: &str,
        suffix: &str,
        dtype: Dtype,
        shape: &[Option<usize>],
    ) -> Result<(Vec<usize>, &[u8])> {
        let key = format!("{op}.{suffix}");
        let t = self
            .st
            .tensor(&key)
            .map_err(|_| RuntimeError::Format(format!("op `{op}`: missing tensor `{key}`")))?;
        if t.dtype() != dtype {
            return Err(RuntimeError::Format(format!(
                "op `{op}`: tensor `{key}` is {:?}, expected {dtype:?}",
                t.dtype()
            )));
        }
        let got = t.shape();
        let ok = got.len() == shape.len()
            && got
                .iter()
                .zip(shape)
                .all(|(g, s)| s.is_none_or(|s| s == *g));
        if !ok {
            return Err(RuntimeError::Format(format!(
                "op `{op}`: tensor `{key}` has shape {got:?}, expected {shape:?}"
            )));
        }
        self.used.insert(key);
        Ok((got.to_vec(), t.data()))
    }

    fn i8(
        &mut self,
        op: &str,
        suffix: &str,
        shape: &[Option<usize>],
    ) -> Result<(Vec<usize>, Vec<i8>)> {
        let (s, d) = self.get(op, suffix, Dtype::I8, shape)?;
        Ok((s, d.iter().map(|&x| x as i8).collect()))
    }

    fn i32(&mut self, op: &str, suffix: &str, n: usize) -> Result<Vec<i32>> {
        let (_, d) = self.get(op, suffix, Dtype::I32, &[Some(n)])?;
        Ok(d.chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn f32(&mut self, op: &str, suffix: &str, shape: &[Option<usize>]) -> Result<Vec<f32>> {
        let (_, d) = self.get(op, suffix, Dtype::F32, shape)?;
        Ok(d.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

fn decode_op(name: &str, kind: FileOpKind, t: &mut Tensors<'_, '_>) -> Result<Op> {
    Ok(match kind {
        FileOpKind::Quantize(a) => Op::Quantize {
            input: a.input,
            qparams: a.qparams.to_q(),
        },
        FileOpKind::Dequantize(a) => Op::Dequantize { input: a.input },
        FileOpKind::Conv2d(a) => {
            let o = a.out_channels;
            let (_, weight) = t.i8(
                name,
                "weight",
                &[Some(o), None, Some(a.kernel[0]), Some(a.kernel[1])],
            )?;
            let weight_scales = t.f32(name, "weight_scales", &[Some(o)])?;
            let bias = if a.bias {
                Bias::I32(t.i32(name, "bias", o)?)
            } else {
                Bias::None
            };
            Op::Conv2d {
                input: a.input,
                params: Conv2dParams {
                    out_channels: o,
                    kernel: (a.kernel[0], a.kernel[1]),
                    stride: (a.stride[0], a.stride[1]),
                    padding: (a.padding[0], a.padding[1]),
                    dilation: (a.dilation[0], a.dilation[1]),
                    groups: a.groups,
                    weight,
                    weight_scales,
                    bias,
                    output: a.output.to_q(),
                    activation: a.activation.into(),
                },
            }
        }
        FileOpKind::Linear(a) => {
            let o = a.out_features;
            let (_, weight) = t.i8(name, "weight", &[Some(o), None])?;
            let weight_scales = t.f32(name, "weight_scales", &[Some(o)])?;
            let bias = if a.bias {
                Bias::I32(t.i32(name, "bias", o)?)
            } else {
                Bias::None
            };
            Op::Linear {
                input: a.input,
                params: LinearParams {
                    out_features: o,
                    weight,
                    weight_scales,
                    bias,
                    output: a.output.to_q(),
                    activation: a.activation.into(),
                },
            }
        }
        FileOpKind::Add(a) => Op::Add {
            a: a.a,
            b: a.b,
            output: a.output.to_q(),
            activation: a.activation.into(),
        },
        FileOpKind::GlobalAvgPool(a) => Op::GlobalAvgPool {
            input: a.input,
            output: a.output.to_q(),
        },
        FileOpKind::Flatten(a) => Op::Flatten { input: a.input },
        FileOpKind::FloatLinear(a) => {
            let (weight, bias) = float_params(name, a.out_features, a.bias, t)?;
            Op::FloatLinear {
                input: a.input,
                out_features: a.out_features,
                weight,
                bias,
            }
        }
        FileOpKind::FloatConv1x1(a) => {
            let (weight, bias) = float_params(name, a.out_channels, a.bias, t)?;
            Op::FloatConv1x1 {
                input: a.input,
                out_channels: a.out_channels,
                weight,
                bias,
            }
        }
        FileOpKind::FloatRelu(a) => Op::FloatRelu { input: a.input },
        FileOpKind::FloatHardswish(a) => Op::FloatHardswish { input: a.input },
        FileOpKind::FloatAdd(a) => Op::FloatAdd { a: a.a, b: a.b },
    })
}

type FloatParams = (Vec<f32>, Option<Vec<f32>>);

fn float_params(name: &str, n: usize, bias: bool, t: &mut Tensors<'_, '_>) -> Result<FloatParams> {
    let weight = t.f32(name, "weight", &[Some(n), None])?;
    let bias = if bias {
        Some(t.f32(name, "bias", &[Some(n)])?)
    } else {
        None
    };
    Ok((weight, bias))
}
