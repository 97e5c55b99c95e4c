#!/usr/bin/env python3
"""PyTorch's MobileNetV2 training step, the reference for `qat-bench train-step` (issue 4).

Measures milliseconds per training step (wall clock and process CPU) of the same network as
`models/mobilenet-v2` `MobileNetV2Config::small(1, 28, 0.5, 10)`: torchvision's MobileNetV2
class written out in torch.nn (no torchvision needed) with a 1-channel 28x28 input, stem 3x3
stride 1, the CIFAR-style setting (no downsampling in the second stage), width 0.5 rounded with
`_make_divisible`, ReLU6, last channel 1280, dropout 0.2, 10 classes; torchvision's init.

A step is zero_grad + forward (train mode) + cross-entropy + backward + SGD (lr 0.01, momentum
0.9, Nesterov, weight decay 5e-4 on conv / linear weights only, as qat-bench does), on a fixed
random batch of 32 images in [-1, 1) with random labels. After --warmup untimed steps, --steps
steps are timed; the JSON line gives median / min / mean wall ms and median / min process-CPU ms
(time.process_time: all threads of the process) per step.

--mode qat: PyTorch eager-mode QAT as torchvision's quantizable mobilenet_v2 does it: QuantStub /
DeQuantStub around the net, residual adds through FloatFunctional, fuse_modules with is_qat
(Conv+BN+ReLU -> ConvBnReLU2d, Conv+BN -> ConvBn2d), then prepare_qat with
get_default_qat_qconfig('x86'). Eager mode cannot fuse ReLU6, so by default (--qat-act relu) ReLU6
is replaced by ReLU before fusing, exactly as torchvision's quantizable model does (one fake-quant
per conv output). --qat-act relu6 keeps ReLU6: Conv+BN is fused and ReLU6 stays a separate module
that prepare_qat observes on its own (two fake-quants per conv: after BN and after ReLU6).

Run pinned to one core with an allocator that keeps freed memory. Debian's libjemalloc2 (5.3)
as it comes hands freed pages back after its decay time and then faults them in again every step
(measured here: 1.4 M minor faults, fp32 step 437-513 ms instead of 217-254 ms), so turn decay off:

    export LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
    export MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1
    taskset -c 1 python scripts/torch_train_step.py --mode fp32
    taskset -c 1 python scripts/torch_train_step.py --mode qat

The JSON line also gives minor page faults per step (median): a few means the allocator
kept its memory, tens of thousands mean it did not.

and compare with `taskset -c 1 qat-bench train-step --threads 1 --warmup 3 --steps 15`.
"""

import argparse
import json
import os
import resource
import statistics
import time

import torch
from torch import nn


def make_divisible(v, divisor, min_value=None):
    """torchvision's `_make_divisible` (never more than 10% below v)."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNAct(nn.Sequential):
    """torchvision's Conv2dNormActivation: `.0` conv (no bias), `.1` BN, `.2` activation.

    Its own class so fuse() can pick these out by exact type, as torchvision does (the fused
    ConvBnReLU2d is an nn.Sequential too, and fuse() meets it while walking the modules)."""


def conv_bn_act(inp, oup, kernel, stride=1, groups=1, act=nn.ReLU6):
    return ConvBNAct(
        nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(oup),
        act(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand, act):
        super().__init__()
        hidden = int(round(inp * expand))
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand != 1:
            layers.append(conv_bn_act(inp, hidden, 1, act=act))
        layers += [
            conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act=act),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        # FloatFunctional so QAT observes the residual sum, as torchvision's quantizable model.
        self.skip_add = torch.ao.nn.quantized.FloatFunctional()

    def forward(self, x):
        if self.use_res_connect:
            return self.skip_add.add(x, self.conv(x))
        return self.conv(x)

    def fuse(self):
        for i in range(len(self.conv)):
            if type(self.conv[i]) is nn.Conv2d:
                torch.ao.quantization.fuse_modules_qat(
                    self.conv, [str(i), str(i + 1)], inplace=True
                )


SMALL_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 1],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


class MobileNetV2(nn.Module):
    def __init__(self, in_channels=1, width=0.5, num_classes=10, dropout=0.2, act=nn.ReLU6):
        super().__init__()
        inp = make_divisible(32 * width, 8)
        last = make_divisible(1280 * max(1.0, width), 8)
        features = [conv_bn_act(in_channels, inp, 3, 1, act=act)]
        for t, c, n, s in SMALL_SETTING:
            oup = make_divisible(c * width, 8)
            for i in range(n):
                features.append(InvertedResidual(inp, oup, s if i == 0 else 1, t, act))
                inp = oup
        features.append(conv_bn_act(inp, last, 1, act=act))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last, num_classes))
        self.quant = torch.ao.quantization.QuantStub()
        self.dequant = torch.ao.quantization.DeQuantStub()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.quant(x)
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return self.dequant(x)

    def fuse(self):
        """torchvision's QuantizableMobileNetV2.fuse_model(is_qat=True)."""
        for m in self.modules():
            if type(m) is ConvBNAct:
                names = ["0", "1", "2"] if type(m[2]) is nn.ReLU else ["0", "1"]
                torch.ao.quantization.fuse_modules_qat(m, names, inplace=True)
            elif isinstance(m, InvertedResidual):
                m.fuse()


def macs_per_image(model, size):
    """Conv + linear multiply-accumulates per image, from forward hooks."""
    total = [0]

    def hook(m, _inp, out):
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
            total[0] += out[0].numel() * k
        elif isinstance(m, nn.Linear):
            total[0] += m.in_features * m.out_features

    hs = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if type(m) in (nn.Conv2d, nn.Linear)
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 1, size, size))
    for h in hs:
        h.remove()
    model.train()
    return total[0]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=["fp32", "qat"], default="fp32")
    p.add_argument("--qat-act", choices=["relu", "relu6"], default="relu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--lr", type=float, default=0.01)
    a = p.parse_args()
    if a.batch < 1 or a.steps < 1 or a.threads < 1:
        p.error("--batch, --steps and --threads must be at least 1")

    torch.set_num_threads(a.threads)
    torch.manual_seed(7)
    act = nn.ReLU if a.mode == "qat" and a.qat_act == "relu" else nn.ReLU6
    model = MobileNetV2(1, a.width, 10, 0.2, act)
    macs = macs_per_image(model, a.size)
    if a.mode == "qat":
        model.fuse()
        model.qconfig = torch.ao.quantization.get_default_qat_qconfig("x86")
        torch.ao.quantization.prepare_qat(model, inplace=True)
    model.train()

    # Weight decay on conv / linear weights only (qat-bench's WeightDecay::Coupled set).
    decay = [q for q in model.parameters() if q.ndim > 1]
    no_decay = [q for q in model.parameters() if q.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=a.lr,
        momentum=0.9,
        nesterov=True,
    )
    g = torch.Generator().manual_seed(1)
    x = torch.rand(a.batch, 1, a.size, a.size, generator=g) * 2 - 1
    y = torch.randint(0, 10, (a.batch,), generator=g)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        c0, t0 = time.process_time(), time.perf_counter()
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        t1, c1 = time.perf_counter(), time.process_time()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        if not torch.isfinite(loss):
            raise SystemExit(f"loss is {loss.item()}")
        return (t1 - t0) * 1e3, (c1 - c0) * 1e3, faults

    for _ in range(a.warmup):
        step()
    wall, cpu, faults = zip(*[step() for _ in range(a.steps)])
    med = statistics.median(wall)
    print(
        json.dumps(
            {
                "bench": "train-step",
                "impl": "pytorch",
                "torch": torch.__version__,
                "mode": a.mode,
                "qat_act": a.qat_act if a.mode == "qat" else None,
                "threads": torch.get_num_threads(),
                "ld_preload": os.environ.get("LD_PRELOAD", ""),
                "malloc_conf": os.environ.get("MALLOC_CONF", ""),
                "net": "mobilenet_v2",
                "batch": a.batch,
                "size": a.size,
                "width": a.width,
                "macs_per_image": macs,
                "steps": a.steps,
                "median_ms": med,
                "min_ms": min(wall),
                "mean_ms": statistics.fmean(wall),
                "images_per_s": a.batch / med * 1e3,
                "cpu_median_ms": statistics.median(cpu),
                "cpu_min_ms": min(cpu),
                "minor_faults_per_step": statistics.median(faults),
            }
        )
    )


if __name__ == "__main__":
    main()
