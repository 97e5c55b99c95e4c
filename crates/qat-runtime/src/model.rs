//! [`QuantizedModel`]: the packed plan and its execution.

use crate::builder::{InputSpec, MAX_VALUE_ELEMS};
use crate::error::op_err;
use crate::exec::{self, Io, Kernel, StepCtx};
use crate::op::{Node, Shape, ValueType};
use crate::plan::{Arena, Kind, Plan};
use crate::thread_policy;
use crate::{Result, RuntimeError};
use qat_core::QParams;
use qat_kernels::{isa, Isa};
use std::sync::Mutex;

/// How a model is packed and run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelOptions {
    /// Pack for this ISA instead of [`qat_kernels::isa::active`] (`Err` at build / load if the
    /// CPU cannot run it). Every ISA gives bit-identical results.
    pub isa: Option<Isa>,
    /// Threads per `run` call (0 or 1 = the calling thread only; more = a dedicated rayon pool
    /// of that size, splitting the kernels' tiles / rows). Results do not depend on it.
    pub threads: usize,
}

/// The canonical description of a model: what the builder collects and the file stores.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ModelSpec {
    pub input: InputSpec,
    pub nodes: Vec<Node>,
    pub output: String,
}

/// One step of the plan: a node, its packed kernel and its value ids.
#[derive(Debug)]
struct Step {
    kernel: Kernel,
    inputs: Vec<usize>,
    in_shape: Shape,
}

/// A value captured by [`QuantizedModel::run_traced`]: NHWC data of the whole batch.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueData {
    U8 { data: Vec<u8>, qparams: QParams },
    F32(Vec<f32>),
}

/// One value of a traced run.
#[derive(Debug, Clone, PartialEq)]
pub struct TracedValue {
    pub name: String,
    /// Per-sample shape; the data is `[batch][h][w][c]`.
    pub shape: Shape,
    pub data: ValueData,
}

/// The arenas not in use, one per concurrent caller (each sized for the batch it last ran).
const MAX_POOLED_ARENAS: usize = 64;

/// An int8 model: a plan of ops over named NHWC values, packed for one ISA.
///
/// `Send + Sync`: one model serves many threads; each concurrent `run` takes its own buffers
/// from a pool (allocated on the first call with a given batch size, reused afterwards).
///
/// Input: f32 NCHW `[batch, C, H, W]` (quantized on entry with the input's qparams; NaN
/// quantizes to 0, ±Inf to 255 / 0, as PyTorch's `quantize_per_tensor`), or u8 NHWC through
/// [`QuantizedModel::run_u8`]. Output: f32 NCHW `[batch, C, H, W]` of the output value
/// (dequantized if it is a u8 value).
pub struct QuantizedModel {
    spec: ModelSpec,
    steps: Vec<Step>,
    plan: Plan,
    output: usize,
    isa: Isa,
    threads: usize,
    /// See [`QuantizedModel::with_min_split_ns`].
    min_split_ns: u64,
    pool: Option<rayon::ThreadPool>,
    arenas: Mutex<Vec<Arena>>,
}

impl std::fmt::Debug for QuantizedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantizedModel")
            .field("input", &self.spec.input)
            .field("ops", &self.spec.nodes.len())
            .field("output", &self.spec.output)
            .field("isa", &self.isa)
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl QuantizedModel {
    /// Pack a validated spec.
    pub(crate) fn new(spec: ModelSpec, options: ModelOptions) -> Result<Self> {
        let isa = options.isa.unwrap_or_else(isa::active);
        if !isa.is_supported() {
            return Err(RuntimeError::Model(format!(
                "ISA {isa} is not supported on this CPU"
            )));
        }
        let mut ids = std::collections::HashMap::new();
        ids.insert(spec.input.name.as_str(), 0usize);
        let mut shapes = vec![spec.input.shape];
        let mut types = vec![ValueType::U8(spec.input.qparams)];
        let mut steps = Vec::with_capacity(spec.nodes.len());
        let mut cols = 0usize;
        let threads = options.threads.max(1);
        let (mut dw_scratch, mut pool_sums) = (0usize, 0usize);
        for (i, node) in spec.nodes.iter().enumerate() {
            let inputs = node
                .op
                .inputs()
                .iter()
                .map(|n| {
                    ids.get(n)
                        .copied()
                        .ok_or_else(|| op_err(&node.name, format!("input `{n}` is not defined")))
                })
                .collect::<Result<Vec<_>>>()?;
            let (in_shape, in_ty) = (shapes[inputs[0]], types[inputs[0]]);
            let kernel = match inputs.as_slice() {
                [a, b] if matches!(node.op, crate::Op::Add { .. }) => {
                    let q = |v: usize| match types[v] {
                        ValueType::U8(q) => Ok(q),
                        ValueType::F32 => Err(op_err(&node.name, "add of an f32 value")),
                    };
                    exec::pack_add(node, q(*a)?, q(*b)?)?
                }
                _ => exec::pack(node, in_ty, in_shape, isa)?,
            };
            let c = exec::cols_per_sample(&kernel, node.shape);
            if c > 4 * MAX_VALUE_ELEMS {
                return Err(op_err(
                    &node.name,
                    format!("im2col matrix of {c} bytes per sample is too large"),
                ));
            }
            cols = cols.max(c);
            let (d, p) = exec::kernel_scratch(&node.name, &kernel, in_shape, isa, threads)?;
            dw_scratch = dw_scratch.max(d);
            pool_sums = pool_sums.max(p);
            if ids.insert(node.name.as_str(), i + 1).is_some() {
                return Err(op_err(&node.name, "duplicate value name"));
            }
            shapes.push(node.shape);
            types.push(node.ty);
            steps.push(Step {
                kernel,
                inputs,
                in_shape,
            });
        }
        let output = *ids
            .get(spec.output.as_str())
            .ok_or_else(|| RuntimeError::Model(format!("output `{}` undefined", spec.output)))?;
        let inputs: Vec<Vec<usize>> = steps.iter().map(|s| s.inputs.clone()).collect();
        let in_elems = spec.input.shape.numel().unwrap_or(0);
        let mut plan = Plan::new(in_elems, &spec.nodes, &inputs, output, cols);
        plan.dw_scratch = dw_scratch;
        plan.pool_sums = pool_sums;
        let pool = if threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .map_err(|e| RuntimeError::Model(format!("thread pool: {e}")))?,
            )
        } else {
            None
        };
        Ok(QuantizedModel {
            spec,
            steps,
            plan,
            output,
            isa,
            threads,
            min_split_ns: thread_policy::MIN_NS_PER_THREAD,
            pool,
            arenas: Mutex::new(Vec::new()),
        })
    }

    /// The model's input: name, per-sample shape `[C, H, W]`, qparams.
    pub fn input(&self) -> &InputSpec {
        &self.spec.input
    }

    /// The ops of the plan, in execution order (canonical, unpacked form).
    pub fn ops(&self) -> &[Node] {
        &self.spec.nodes
    }

    /// Name of the output value.
    pub fn output_name(&self) -> &str {
        &self.spec.output
    }

    /// Per-sample shape and type of the output value.
    pub fn output_shape(&self) -> (Shape, ValueType) {
        self.value_info(self.output)
    }

    fn value_info(&self, v: usize) -> (Shape, ValueType) {
        if v == 0 {
            (
                self.spec.input.shape,
                ValueType::U8(self.spec.input.qparams),
            )
        } else {
            let n = &self.spec.nodes[v - 1];
            (n.shape, n.ty)
        }
    }

    /// The ISA the weights are packed for.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Threads per call.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Run a call on the pool (every op split over all [`QuantizedModel::threads`]) only when
    /// at least one of its ops would give each thread `ns` nanoseconds or more of its
    /// estimated single-thread time (default 10 µs); else on the calling thread alone, since
    /// smaller ops lose more to the fork-join than they gain (every op of a batch-1 28×28
    /// MobileNetV2). `0` always uses the pool. Results do not depend on it.
    ///
    /// ```no_run
    /// # fn f(m: qat_runtime::QuantizedModel) {
    /// let m = m.with_min_split_ns(0); // split every op, however small
    /// # }
    /// ```
    pub fn with_min_split_ns(mut self, ns: u64) -> Self {
        self.min_split_ns = ns;
        self
    }

    /// The kernel each op runs, e.g. `("conv1", "im2col+avx512vnni_gemm_i32_8x48c4")`.
    pub fn kernel_names(&self) -> Vec<(String, String)> {
        let ew = qat_kernels::elementwise::kernel_isa(self.isa);
        self.spec
            .nodes
            .iter()
            .zip(&self.steps)
            .map(|(n, s)| {
                let k = match &s.kernel {
                    Kernel::Depthwise(dw) => match dw.kernel_name(self.isa, s.in_shape.w) {
                        Ok(k) => format!("dwconv_{k}"),
                        Err(_) => format!("dwconv_{}", dw.kernel_isa(self.isa)),
                    },
                    Kernel::ConvGemm { gemms, direct, .. } => format!(
                        "{}{}",
                        if *direct { "1x1+" } else { "im2col+" },
                        gemms[0].kernel_name()
                    ),
                    Kernel::Stem(st) => format!("direct_{}", st.kernel_name()),
                    Kernel::Linear(g) => g.kernel_name().to_string(),
                    Kernel::Add(_) => format!(
                        "elementwise_{}",
                        qat_kernels::elementwise::QuantizedAdd::kernel_isa(self.isa)
                    ),
                    Kernel::Pool { .. } => format!(
                        "elementwise_{}",
                        qat_kernels::elementwise::pool_kernel_isa(self.isa)
                    ),
                    Kernel::Quantize(_) | Kernel::Dequantize(_) => format!("elementwise_{ew}"),
                    Kernel::Flatten => "none".into(),
                    _ => "f32_scalar".into(),
                };
                (n.name.clone(), k)
            })
            .collect()
    }

    /// Elements of the output for `batch` samples.
    pub fn output_len(&self, batch: usize) -> Result<usize> {
        self.output_shape()
            .0
            .numel()
            .and_then(|n| n.checked_mul(batch))
            .ok_or_else(|| RuntimeError::Input(format!("batch {batch} overflows the output")))
    }

    /// Elements of the input for `batch` samples.
    pub fn input_len(&self, batch: usize) -> Result<usize> {
        self.spec
            .input
            .shape
            .numel()
            .and_then(|n| n.checked_mul(batch))
            .ok_or_else(|| RuntimeError::Input(format!("batch {batch} overflows the input")))
    }

    /// Run on f32 NCHW `input` (`batch · C · H · W` values); f32 NCHW output.
    ///
    /// `Err` when `batch` is 0 or `input` has the wrong length. NaN inputs quantize to 0,
    /// ±Inf to 255 / 0 (PyTorch's rule); the call does not fail on them.
    pub fn run(&self, input: &[f32], batch: usize) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.output_len(batch)?];
        self.run_into(input, batch, &mut out)?;
        Ok(out)
    }

    /// [`QuantizedModel::run`] into a caller's buffer: no allocation after the first call
    /// with this batch size (per concurrent caller).
    pub fn run_into(&self, input: &[f32], batch: usize, out: &mut [f32]) -> Result<()> {
        self.execute(Entry::F32(input), batch, out, None, None)
    }

    /// Run on u8 NHWC `input` (`batch · H · W · C` values, already quantized with the input's
    /// qparams); f32 NCHW output.
    pub fn run_u8(&self, input: &[u8], batch: usize) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.output_len(batch)?];
        self.run_u8_into(input, batch, &mut out)?;
        Ok(out)
    }

    /// [`QuantizedModel::run_u8`] into a caller's buffer.
    pub fn run_u8_into(&self, input: &[u8], batch: usize, out: &mut [f32]) -> Result<()> {
        self.execute(Entry::U8(input), batch, out, None, None)
    }

    /// Run and capture every value (input included) after its op: for per-layer comparisons
    /// with the fake-quant graph. Allocates (a debugging path).
    pub fn run_traced(&self, input: &[f32], batch: usize) -> Result<Vec<TracedValue>> {
        let mut out = vec![0f32; self.output_len(batch)?];
        let mut trace = Vec::with_capacity(self.steps.len() + 1);
        self.execute(Entry::F32(input), batch, &mut out, Some(&mut trace), None)?;
        Ok(trace)
    }

    /// [`QuantizedModel::run_into`] that also adds each step's wall seconds to `seconds[i]`
    /// (step `i` = [`QuantizedModel::ops`]`()[i]`; the entry quantize / transpose and the output
    /// write are not counted). See [`QuantizedModel::profile`].
    pub(crate) fn run_timed(
        &self,
        input: &[f32],
        batch: usize,
        out: &mut [f32],
        seconds: &mut [f64],
    ) -> Result<()> {
        if seconds.len() != self.steps.len() {
            return Err(RuntimeError::Input(format!(
                "{} step timings requested for {} steps",
                seconds.len(),
                self.steps.len()
            )));
        }
        self.execute(Entry::F32(input), batch, out, None, Some(seconds))
    }

    fn execute(
        &self,
        entry: Entry<'_>,
        batch: usize,
        out: &mut [f32],
        trace: Option<&mut Vec<TracedValue>>,
        seconds: Option<&mut [f64]>,
    ) -> Result<()> {
        if batch == 0 {
            return Err(RuntimeError::Input("batch is 0".into()));
        }
        let (in_len, out_len) = (self.input_len(batch)?, self.output_len(batch)?);
        let got = match entry {
            Entry::F32(x) => x.len(),
            Entry::U8(x) => x.len(),
        };
        if got != in_len {
            return Err(RuntimeError::Input(format!(
                "input has {got} values, batch {batch} × {} needs {in_len}",
                self.spec.input.shape
            )));
        }
        if out.len() != out_len {
            return Err(RuntimeError::Input(format!(
                "output buffer has {} values, {out_len} needed",
                out.len()
            )));
        }
        let mut arena = self.take_arena(batch)?;
        // Handing the call to the pool costs a thread switch each way: skip it when no op of
        // this batch is worth splitting (e.g. every op of a batch-1 28×28 MobileNetV2). When
        // one is, every op splits: between ops the pool's workers stay awake, and splitting
        // only the big ops measured slower (waking a parked worker costs more than a small
        // op gains; 224×224 batch 1 on 2 threads: 1.27 ms splitting all, 1.42 some).
        let result = match &self.pool {
            Some(pool) if self.splits_any(batch) => pool.install(|| {
                self.execute_in(&mut arena, entry, batch, self.threads, out, trace, seconds)
            }),
            _ => self.execute_in(&mut arena, entry, batch, 1, out, trace, seconds),
        };
        self.give_back(arena);
        result
    }

    /// Whether any op of a `batch` call (the input quantization too) runs on more than one
    /// thread; when none does, the call runs on the caller's thread without the pool.
    fn splits_any(&self, batch: usize) -> bool {
        let s = self.spec.input.shape;
        let n_in = batch * s.c * s.h * s.w;
        thread_policy::elementwise_threads(n_in, self.threads, self.min_split_ns) > 1
            || self.steps.iter().zip(&self.spec.nodes).any(|(step, node)| {
                let t = thread_policy::step_threads(
                    &step.kernel,
                    node,
                    step.in_shape,
                    batch,
                    self.threads,
                    self.min_split_ns,
                );
                t > 1
            })
    }

    fn take_arena(&self, batch: usize) -> Result<Arena> {
        let found = {
            let mut arenas = self.arenas.lock().unwrap_or_else(|e| e.into_inner());
            arenas
                .iter()
                .position(|a| a.batch == batch)
                .map(|i| arenas.swap_remove(i))
        };
        match found {
            Some(a) => Ok(a),
            None => Arena::new(&self.plan, batch),
        }
    }

    fn give_back(&self, arena: Arena) {
        let mut arenas = self.arenas.lock().unwrap_or_else(|e| e.into_inner());
        if arenas.len() < MAX_POOLED_ARENAS {
            arenas.push(arena);
        }
    }

    /// Bytes held by pooled buffers (for `inspect` and tests).
    pub fn arena_bytes(&self) -> usize {
        let arenas = self.arenas.lock().unwrap_or_else(|e| e.into_inner());
        arenas.iter().map(Arena::bytes).sum()
    }

    // The two optional sinks (trace, per-op seconds) and the run's shape are separate
    // arguments on purpose: a struct for them would be built per call on the hot path.
    #[allow(clippy::too_many_arguments)]
    fn execute_in(
        &self,
        arena: &mut Arena,
        entry: Entry<'_>,
        batch: usize,
        threads: usize,
        out: &mut [f32],
        mut trace: Option<&mut Vec<TracedValue>>,
        mut seconds: Option<&mut [f64]>,
    ) -> Result<()> {
        let s = self.spec.input.shape;
        let (_, in_slot) = self.plan.slot[0];
        let n_in = batch * s.c * s.h * s.w;
        {
            let dst = &mut arena.u8[in_slot][..n_in];
            match entry {
                Entry::U8(x) => dst.copy_from_slice(x),
                Entry::F32(x) => {
                    let q = self.spec.input.qparams;
                    if s.c == 1 || s.h * s.w == 1 {
                        quantize(x, q, dst, self.isa, threads)?;
                    } else {
                        let staging = &mut arena.staging[..n_in];
                        quantize(x, q, staging, self.isa, threads)?;
                        nchw_to_nhwc(staging, dst, batch, s);
                    }
                }
            }
        }
        if let Some(t) = trace.as_deref_mut() {
            t.push(self.capture(arena, 0, batch));
        }
        for (i, step) in self.steps.iter().enumerate() {
            let started = seconds.is_some().then(std::time::Instant::now);
            let v = i + 1;
            let node = &self.spec.nodes[i];
            let (ko, so) = self.plan.slot[v];
            let n_out = batch * node.shape.numel().unwrap_or(0);
            let in_len = |v: usize| batch * self.value_info(v).0.numel().unwrap_or(0);
            let cx = StepCtx {
                node,
                kernel: &step.kernel,
                in_shape: step.in_shape,
                batch,
                isa: self.isa,
                threads,
                cols: &mut arena.cols,
                dw_scratch: &mut arena.dw_scratch,
                pool_sums: &mut arena.pool_sums,
            };
            if matches!(step.kernel, Kernel::Flatten) {
                exec::run_step(cx, Io::None)?;
            } else {
                // (kind, slot, length) of each input (one or two), without allocating.
                let at = |iv: usize| {
                    let (k, s) = self.plan.slot[iv];
                    (k, s, in_len(iv))
                };
                let first = at(step.inputs[0]);
                let second = step.inputs.get(1).map(|&iv| at(iv));
                let ins = (first, second);
                match ko {
                    Kind::U8 => {
                        let mut y = std::mem::take(&mut arena.u8[so]);
                        let r = {
                            let yo = &mut y[..n_out];
                            let (a, b) = ins;
                            let io = match a.0 {
                                Kind::U8 => Io::U8ToU8(
                                    &arena.u8[a.1][..a.2],
                                    b.map(|b| &arena.u8[b.1][..b.2]),
                                    yo,
                                ),
                                Kind::F32 => Io::F32ToU8(&arena.f32[a.1][..a.2], yo),
                            };
                            exec::run_step(cx, io)
                        };
                        arena.u8[so] = y;
                        r?;
                    }
                    Kind::F32 => {
                        let mut y = std::mem::take(&mut arena.f32[so]);
                        let r = {
                            let yo = &mut y[..n_out];
                            let (a, b) = ins;
                            let io = match a.0 {
                                Kind::U8 => Io::U8ToF32(&arena.u8[a.1][..a.2], yo),
                                Kind::F32 => Io::F32ToF32(
                                    &arena.f32[a.1][..a.2],
                                    b.map(|b| &arena.f32[b.1][..b.2]),
                                    yo,
                                ),
                            };
                            exec::run_step(cx, io)
                        };
                        arena.f32[so] = y;
                        r?;
                    }
                }
            }
            if let (Some(t0), Some(s)) = (started, seconds.as_deref_mut()) {
                s[i] += t0.elapsed().as_secs_f64();
            }
            if let Some(t) = trace.as_deref_mut() {
                t.push(self.capture(arena, v, batch));
            }
        }
        self.write_output(arena, batch, out);
        Ok(())
    }

    fn capture(&self, arena: &Arena, v: usize, batch: usize) -> TracedValue {
        let (shape, ty) = self.value_info(v);
        let n = batch * shape.numel().unwrap_or(0);
        let (_, slot) = self.plan.slot[v];
        let data = match ty {
            ValueType::U8(qparams) => ValueData::U8 {
                data: arena.u8[slot][..n].to_vec(),
                qparams,
            },
            ValueType::F32 => ValueData::F32(arena.f32[slot][..n].to_vec()),
        };
        let name = if v == 0 {
            self.spec.input.name.clone()
        } else {
            self.spec.nodes[v - 1].name.clone()
        };
        TracedValue { name, shape, data }
    }

    /// NHWC output value → f32 NCHW (dequantized with `qat_core::dequantize` if u8).
    fn write_output(&self, arena: &Arena, batch: usize, out: &mut [f32]) {
        let (s, ty) = self.value_info(self.output);
        let (_, slot) = self.plan.slot[self.output];
        let hw = s.h * s.w;
        let get = |i: usize| -> f32 {
            match ty {
                ValueType::U8(q) => qat_core::dequantize(arena.u8[slot][i] as i32, q),
                ValueType::F32 => arena.f32[slot][i],
            }
        };
        for b in 0..batch {
            for p in 0..hw {
                for c in 0..s.c {
                    out[(b * s.c + c) * hw + p] = get((b * hw + p) * s.c + c);
                }
            }
        }
    }
}

/// The two ways in.
#[derive(Clone, Copy)]
enum Entry<'a> {
    F32(&'a [f32]),
    U8(&'a [u8]),
}

fn quantize(x: &[f32], q: QParams, out: &mut [u8], isa: Isa, threads: usize) -> Result<()> {
    qat_kernels::elementwise::quantize_u8(x, q, out, isa, threads)
        .map(|_| ())
        .map_err(|e| RuntimeError::Input(format!("quantizing the input: {e}")))
}

fn nchw_to_nhwc(src: &[u8], dst: &mut [u8], batch: usize, s: Shape) {
    let hw = s.h * s.w;
    for b in 0..batch {
        let (src, dst) = (&src[b * s.c * hw..], &mut dst[b * s.c * hw..]);
        for c in 0..s.c {
            for p in 0..hw {
                dst[p * s.c + c] = src[c * hw + p];
            }
        }
    }
}
