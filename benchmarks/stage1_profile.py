"""Where a ResNet-32 stage-1 step spends its time on this CPU, fp32 (``stage1.amp: none``).

Prints the CPU's capability, then:

1. the step (batch 64, SGD) split into forward, backward and optimiser, in channels_last (lort's
   layout) and NCHW (the reference code's), on a fixed batch, so no input pipeline is timed;
2. the three convolution kernels of each stage's 3x3 convolution (forward, backward to the
   input, backward to the weights, called apart through ``aten.convolution_backward``'s output
   mask) with their GFLOP/s, beside a large fp32 matrix product's as the machine's practical peak;
3. the elementwise work of the widest stage (batch norm, ReLU and its backward) and lort's
   batched augmentation of one batch from the uint8 cache (``--root``; skipped without data).

Medians of ``--repeats`` timings after a warm-up. Use it to see whether a CPU's stage 1 is
bound by the convolutions (then only faster kernels, bf16 where native, or a compiler help) or
by what surrounds them.

    python benchmarks/stage1_profile.py [--repeats 15] [--root DIR] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from _common import default_root, run_main

from lort.data.augment import BatchAugment
from lort.env_info import environment
from lort.io import write_json
from lort.models import create_model
from lort.runtime.precision import cpu_capability

BATCH = 64
STAGES = ((16, 32), (32, 16), (64, 8))  # (channels, side) of ResNet-32's three stages


def median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def step_split(channels_last: bool, repeats: int) -> dict:
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model("resnet32", 10).to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-3)
    x = torch.randn(BATCH, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (BATCH,))
    parts = {"forward": [], "backward": [], "optimiser": []}
    for i in range(repeats + 3):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if i >= 3:
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                parts[k].append(v)
    out = {k: 1000 * statistics.median(v) for k, v in parts.items()}
    out["images_per_s"] = BATCH / (sum(out.values()) / 1000)
    return out


def conv_kernels(channels: int, side: int, repeats: int) -> dict:
    x = torch.randn(BATCH, channels, side, side).contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels, channels, 3, 3).contiguous(memory_format=torch.channels_last)
    g = torch.randn(BATCH, channels, side, side).contiguous(memory_format=torch.channels_last)
    flop = 2 * BATCH * side * side * channels * channels * 9

    def backward(mask):
        return lambda: torch.ops.aten.convolution_backward(
            g, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask
        )

    ms = {
        "forward": median_ms(lambda: F.conv2d(x, w, padding=1), repeats),
        "backward_data": median_ms(backward([True, False, False]), repeats),
        "backward_weights": median_ms(backward([False, True, False]), repeats),
    }
    return {k: {"ms": v, "gflops": flop / v / 1e6} for k, v in ms.items()}


def elementwise(repeats: int) -> dict:
    c, s = STAGES[0]
    a = torch.randn(BATCH, c, s, s).contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(a)
    bn = torch.nn.BatchNorm2d(c).train()
    return {
        "batch_norm_forward": median_ms(lambda: bn(a), repeats),
        "relu": median_ms(lambda: torch.relu(a), repeats),
        "relu_backward": median_ms(lambda: torch.ops.aten.threshold_backward(g, a, 0.0), repeats),
    }


def augment_ms(root, repeats: int) -> float | None:
    from lort.data import DataConfig, build_dataset

    try:
        ds = build_dataset(DataConfig(dataset="cifar10", root=root))
    except Exception as exc:  # no local data: the other figures stand alone
        print(f"augmentation not timed: {exc}")
        return None
    images = ds.train.images
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    augment = BatchAugment()

    def one():
        idx = np.sort(rng.choice(len(images), BATCH, replace=False))
        augment(torch.from_numpy(np.ascontiguousarray(images[idx])), gen)

    return median_ms(one, repeats)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--root")
    ap.add_argument("--out", help="also write the figures to this JSON file")
    args = ap.parse_args()
    cap = cpu_capability()
    print(f"CPU: {cap.describe()}; torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 throughout")
    a = torch.randn(2048, 2048)
    b = torch.randn(2048, 2048)
    peak = 2 * 2048**3 / median_ms(lambda: a @ b, 5) / 1e6
    print(f"fp32 2048x2048 matrix product: {peak:.0f} GFLOP/s (the practical peak the kernels below are read against)")
    steps = {name: step_split(cl, args.repeats) for name, cl in (("channels_last", True), ("nchw", False))}
    for name, s in steps.items():
        print(f"step, {name}: forward {s['forward']:.1f} ms, backward {s['backward']:.1f} ms, optimiser "
              f"{s['optimiser']:.1f} ms -> {s['images_per_s']:.0f} images/s (no input pipeline)")  # fmt: skip
    kernels = {f"{c}x{s}x{s}": conv_kernels(c, s, args.repeats) for c, s in STAGES}
    conv_total = 0.0
    for shape, ks in kernels.items():
        row = ", ".join(f"{k} {v['ms']:.2f} ms ({v['gflops']:.0f} GFLOP/s)" for k, v in ks.items())
        print(f"3x3 convolution, {shape} channels_last: {row}")
        conv_total += 10 * sum(v["ms"] for v in ks.values())  # 10 of ResNet-32's 31 convolutions per stage
    s = steps["channels_last"]
    step_ms = s["forward"] + s["backward"] + s["optimiser"]
    print(f"the 30 stage convolutions' kernels: {conv_total:.0f} ms of a {step_ms:.0f} ms step "
          f"({100 * conv_total / step_ms:.0f}%; their kernels timed apart, so an estimate)")  # fmt: skip
    elem = elementwise(args.repeats)
    print("widest stage (64x16x32x32): " + ", ".join(f"{k} {v:.2f} ms" for k, v in elem.items()))
    aug = augment_ms(args.root or default_root(), args.repeats)
    if aug is not None:
        print(
            f"batched augmentation of one batch from the uint8 cache: {aug:.2f} ms ({100 * aug / step_ms:.1f}% of a step)"
        )
    if args.out:
        write_json(
            args.out,
            {
                "environment": environment(),
                "cpu": cap.to_dict(),
                "matmul_gflops": peak,
                "step": steps,
                "conv_kernels": kernels,
                "conv_share_estimate": conv_total / step_ms,
                "elementwise_ms": elem,
                "augment_ms": aug,
            },
        )


if __name__ == "__main__":
    run_main(main)
