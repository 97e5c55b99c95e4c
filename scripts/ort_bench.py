#!/usr/bin/env python3
"""ONNX Runtime's static QDQ per-channel int8 MobileNetV2, timed like `qat-bench model`.

What it measures: the latency of the same two MobileNetV2 networks that `qat-bench model`
runs through qat-runtime (28x28x1 width 0.5, 10 classes, batch 1 and 32; 224x224x3 width 1.0,
1000 classes, batch 1), as ONNX Runtime runs them after `onnxruntime.quantization.
quantize_static` (QuantFormat.QDQ, per-channel, activations QUInt8, weights QInt8, MinMax
calibration on 16 random normal images). The reference figures in issue 5 are this setup.

The float graph is built with `onnx.helper` to match `models/mobilenet-v2/src/lib.rs`:
torchvision's inverted residuals and `_make_divisible`, ReLU6 (Clip 0..6), BatchNorm folded
into each conv's bias (ORT's quantizer folds it anyway), global average pool, flatten, linear.
Weights are He-initialised with a fixed seed; timing does not depend on their values.

Output, one JSON line each:
  {"bench": "ort_graph", ...}  the optimized graph's op histogram (what ORT really runs: QDQ
                               pairs fused into QLinearConv & co at session creation), and the
                               MAC count per image, computed from the graph's conv / Gemm shapes.
  {"bench": "model", "impl": "ort", ...}  best and median wall ms over --runs calls (after
                               20 warm-up calls), the best mean of 20 consecutive slices of them
                               (like qat-bench's `ms`), ms per image, median process-CPU ms per
                               call, GMAC/s and % of --peak-gmacs per thread (from the best).

Run (needs `pip install onnxruntime==1.32.0 onnx numpy`; no torch):
  taskset -c 1 python3 scripts/ort_bench.py --threads 1
  python3 scripts/ort_bench.py --threads 2
The quantized models are cached in --cache (built on first use, ~10 s), so a timed run only
loads them; --prepare builds them and prints the graph lines without timing anything.
"""

import argparse
import collections
import json
import logging
import os
import statistics
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)

OPSET = 17

IMAGENET_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]
# Small images: no downsampling in the second stage (`SMALL_SETTING` in lib.rs).
SMALL_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 1],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]

# name -> (in_channels, input_size, width, classes, stem_stride, setting, batches)
CONFIGS = {
    "mnv2-28-w0.5": (1, 28, 0.5, 10, 1, SMALL_SETTING, [1, 32]),
    "mnv2-224-w1.0": (3, 224, 1.0, 1000, 2, IMAGENET_SETTING, [1]),
}


def make_divisible(v, divisor=8):
    """torchvision's `_make_divisible` (same integer truncation as lib.rs)."""
    rounded = max(int(v + divisor / 2) // divisor * divisor, divisor)
    if rounded < 0.9 * v:
        rounded += divisor
    return rounded


class GraphBuilder:
    """Accumulates nodes and initializers; every conv carries its folded-BN bias."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes = []
        self.inits = []
        self.count = 0

    def _name(self, stem):
        self.count += 1
        return f"{stem}_{self.count}"

    def _const(self, name, arr):
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def conv(self, x, cin, cout, k, stride=1, groups=1, act=True, name="conv"):
        fan_in = cin // groups * k * k
        w = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), (cout, cin // groups, k, k))
        b = self.rng.normal(0.0, 0.1, cout)
        n = self._name(name)
        y = n + "_out"
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, self._const(n + ".weight", w.astype(np.float32)),
                 self._const(n + ".bias", b.astype(np.float32))],
                [y],
                name=n,
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[k // 2] * 4,
                group=groups,
            )
        )
        if not act:
            return y
        lo = self._const(n + ".clip_min", np.array(0.0, np.float32))
        hi = self._const(n + ".clip_max", np.array(6.0, np.float32))
        self.nodes.append(helper.make_node("Clip", [y, lo, hi], [n + "_relu6"], name=n + "_relu6"))
        return n + "_relu6"

    def add(self, a, b):
        n = self._name("skip_add")
        self.nodes.append(helper.make_node("Add", [a, b], [n + "_out"], name=n))
        return n + "_out"

    def inverted_residual(self, x, inp, oup, stride, expand):
        hidden = inp * expand
        y = x
        if expand != 1:
            y = self.conv(y, inp, hidden, 1, name="expand")
        y = self.conv(y, hidden, hidden, 3, stride=stride, groups=hidden, name="dw")
        y = self.conv(y, hidden, oup, 1, act=False, name="project")
        if stride == 1 and inp == oup:
            y = self.add(x, y)
        return y


def build_float(name, seed=7):
    cin, size, width, classes, stem_stride, setting, _ = CONFIGS[name]
    g = GraphBuilder(seed)
    inp = make_divisible(32 * width)
    last = make_divisible(1280 * max(width, 1.0))
    x = g.conv("x", cin, inp, 3, stride=stem_stride, name="stem")
    for t, c, n, s in setting:
        oup = make_divisible(c * width)
        for i in range(n):
            x = g.inverted_residual(x, inp, oup, s if i == 0 else 1, t)
            inp = oup
    x = g.conv(x, inp, last, 1, name="last")
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
    g.nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1))
    # Dropout is the identity at inference: not in the graph.
    fw = g.rng.normal(0.0, np.sqrt(1.0 / last), (classes, last)).astype(np.float32)
    fb = g.rng.normal(0.0, 0.1, classes).astype(np.float32)
    g.nodes.append(
        helper.make_node(
            "Gemm",
            ["flat", g._const("fc.weight", fw), g._const("fc.bias", fb)],
            ["logits"],
            name="classifier.1",
            transB=1,
        )
    )
    graph = helper.make_graph(
        g.nodes,
        f"mobilenet_v2_{name}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model)


def macs_per_image(model):
    """MACs of the convolutions and the Gemm, from the inferred shapes (batch 1)."""
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 1
                           for d in vi.type.tensor_type.shape.dim]
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    total = 0
    for n in model.graph.node:
        if n.op_type == "Conv":
            w = weights[n.input[1]]  # [cout, cin/groups, kh, kw]
            out = shapes[n.output[0]]  # [1, cout, oh, ow]
            total += int(np.prod(out)) * w[1] * w[2] * w[3]
        elif n.op_type == "Gemm":
            w = weights[n.input[1]]
            total += w[0] * w[1]
    return total


class RandomReader(CalibrationDataReader):
    """16 random normal images, one per calibration batch."""

    def __init__(self, shape, count=16, seed=3):
        rng = np.random.default_rng(seed)
        self.data = iter([{"x": rng.standard_normal((1, *shape)).astype(np.float32)}
                          for _ in range(count)])

    def get_next(self):
        return next(self.data, None)


def quantized_path(name, cache):
    """Build (once) the float model and its QDQ quantization; return (path, macs)."""
    os.makedirs(cache, exist_ok=True)
    fpath = os.path.join(cache, f"{name}.float.onnx")
    qpath = os.path.join(cache, f"{name}.qdq.onnx")
    model = build_float(name)
    macs = macs_per_image(model)
    if not (os.path.exists(qpath) and os.path.exists(fpath)):
        onnx.save(model, fpath)
        cin, size = CONFIGS[name][0], CONFIGS[name][1]
        quantize_static(
            fpath,
            qpath,
            RandomReader((cin, size, size)),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    return qpath, macs


def op_histogram(model):
    return dict(sorted(collections.Counter(
        (f"{n.domain}." if n.domain not in ("", "ai.onnx") else "") + n.op_type
        for n in model.graph.node).items()))


def session_options(threads, optimized_path=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return so


def top1_agreement(name, qpath, cache, count=64):
    """Sanity check of the int8 graph: top-1 agreement with the float graph on random images."""
    cin, size = CONFIGS[name][0], CONFIGS[name][1]
    x = np.random.default_rng(5).standard_normal((count, cin, size, size)).astype(np.float32)
    so = session_options(1)
    fl = ort.InferenceSession(os.path.join(cache, f"{name}.float.onnx"), so,
                              providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    q = ort.InferenceSession(qpath, so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return float(np.mean(fl.argmax(1) == q.argmax(1)))


def graph_line(name, qpath, macs, cache):
    qmodel = onnx.load(qpath)
    opt = os.path.join(cache, f"{name}.qdq.optimized.onnx")
    # A separate session writes the optimized graph, so the timed one does no extra work.
    so = session_options(1, opt)
    so.log_severity_level = 3  # the "hardware specific optimizations" warning is expected
    ort.InferenceSession(qpath, so, providers=["CPUExecutionProvider"])
    print(json.dumps({
        "bench": "ort_graph",
        "model": name,
        "ort_version": ort.__version__,
        "macs_per_image": macs,
        "quantized_ops": op_histogram(qmodel),
        "optimized_ops": op_histogram(onnx.load(opt)),
        "top1_agreement_int8_vs_float": top1_agreement(name, qpath, cache),
    }), flush=True)


def time_session(sess, x, runs, warmup=20):
    feed = {"x": x}
    for _ in range(warmup):
        sess.run(None, feed)
    wall, cpu = [], []
    for _ in range(runs):
        c = time.process_time()
        t = time.perf_counter()
        sess.run(None, feed)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return wall, cpu


def profile(name, qpath, threads, batch, x, runs=200):
    """ORT's own per-node timings (`enable_profiling`), summed per op type, per call."""
    so = session_options(threads)
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(os.path.dirname(qpath), f"profile_{name}_b{batch}")
    sess = ort.InferenceSession(qpath, so, providers=["CPUExecutionProvider"])
    time_session(sess, x, runs)
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    per_kind = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            kind = e["args"]["op_name"]
            if kind == "QLinearConv":
                # The fused node keeps our conv's name: stem / expand / dw / project / last.
                kind += ":" + e["name"].split("_")[0]
            per_kind[kind] += e["dur"]
    total = sum(per_kind.values())
    # Warm-up calls are profiled too: divide by every call the session made.
    calls = runs + 20
    for kind, us in sorted(per_kind.items(), key=lambda kv: -kv[1]):
        print(json.dumps({
            "bench": "ort_op_kind", "threads": threads, "model": name, "batch": batch,
            "op": kind, "ms_profiled": round(us / calls / 1e3, 4),
            "pct": round(100 * us / total, 1),
        }), flush=True)


def best_chunk_mean(wall, chunks=20):
    """Best mean over `chunks` consecutive slices of the calls: `qat-bench model`'s `ms` is
    this kind of figure (best of --reps batches of calls), a single call's best is not."""
    size = len(wall) // chunks
    return min(statistics.fmean(wall[i * size:(i + 1) * size]) for i in range(chunks))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--model", nargs="+", default=list(CONFIGS))
    ap.add_argument("--runs-b1", type=int, default=1000, help="timed calls at batch 1")
    ap.add_argument("--runs-b32", type=int, default=100, help="timed calls at batch 32")
    ap.add_argument("--peak-gmacs", type=float, default=228.6,
                    help="VNNI peak of one core (GMAC/s) that peak_pct divides by")
    ap.add_argument("--cache", default="/tmp/ort_bench")
    ap.add_argument("--profile", action="store_true",
                    help="also print ORT's per-op-kind time per call (its profiler, 200 calls; "
                    "the profiler inflates the sum: read the pct)")
    ap.add_argument("--prepare", action="store_true",
                    help="only build / quantize the models and print the graph lines")
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's pre-processing advice
    for m in args.model:
        if m not in CONFIGS:
            sys.exit(f"unknown --model {m!r} (expected one of {list(CONFIGS)})")
    if any(t < 1 for t in args.threads):
        sys.exit("--threads must be at least 1")
    if args.runs_b1 < 200 or args.runs_b32 < 50:
        sys.exit("need at least 200 timed calls at batch 1 and 50 at batch 32")

    for name in args.model:
        qpath, macs = quantized_path(name, args.cache)
        graph_line(name, qpath, macs, args.cache)
        if args.prepare:
            continue
        cin, size, batches = CONFIGS[name][0], CONFIGS[name][1], CONFIGS[name][6]
        for threads in args.threads:
            sess = ort.InferenceSession(qpath, session_options(threads),
                                        providers=["CPUExecutionProvider"])
            for batch in batches:
                x = np.random.default_rng(11).uniform(
                    -2.5, 2.5, (batch, cin, size, size)).astype(np.float32)
                runs = args.runs_b1 if batch == 1 else args.runs_b32
                wall, cpu = time_session(sess, x, runs)
                best, med = min(wall), statistics.median(wall)
                gmacs = macs * batch / best / 1e9
                print(json.dumps({
                    "bench": "model",
                    "impl": "ort",
                    "ort_version": ort.__version__,
                    "quant": "static QDQ per-channel, act QUInt8, weight QInt8, MinMax",
                    "threads": threads,
                    "model": name,
                    "batch": batch,
                    "runs": runs,
                    "macs_per_image": macs,
                    "ms": round(best * 1e3, 4),
                    "ms_median": round(med * 1e3, 4),
                    "ms_best_chunk_mean": round(best_chunk_mean(wall) * 1e3, 4),
                    "ms_per_image": round(best * 1e3 / batch, 4),
                    "cpu_ms_median": round(statistics.median(cpu) * 1e3, 4),
                    "gmacs": round(gmacs, 1),
                    "peak_pct": round(100 * gmacs / args.peak_gmacs / threads, 1),
                }), flush=True)
                if args.profile:
                    profile(name, qpath, threads, batch, x)


if __name__ == "__main__":
    main()
