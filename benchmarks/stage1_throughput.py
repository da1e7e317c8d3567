"""ResNet-32 stage-1 training throughput on 32x32 images: lort's input pipeline against
the reference-code style pipeline, measured in the same run on this machine.

lort:      uint8 array (memory-mapped cache) -> batched tensor crop/flip/normalise ->
           channels_last ResNet-32 (in-place ReLUs), three ways: fp32 eager; the default of
           runs under 10,000 steps such as the demo (amp=auto: bf16 autocast where the CPU has
           native bf16 — AVX512_BF16 or AMX — fp32 elsewhere; eager); and the default of the
           standard 200-epoch schedule (amp=auto, compile=auto: torch.compile where a C++
           compiler is found), whose first step, compilation included, is printed apart.
baseline:  per-sample PIL transforms (pad+random crop, flip, to-tensor, normalise) in a
           torch DataLoader (2 workers), NCHW ResNet-32 with the reference code's block
           (ReLU out of place, residual added in place) — how the public reference code
           feeds and builds CIFAR ResNets.

All train the same model (SGD, batch 64) for the same number of steps after warm-up;
the script prints the CPU's capability, images/s of each (medians of ``--rounds``
interleaved rounds, the order reversed every other round) and the ratios to the reference
(of the medians, and the median of each round's own ratio, which a drifting machine
disturbs less), and with ``--out FILE.json`` writes them to a file.

    python benchmarks/stage1_throughput.py [--steps 40] [--rounds 9] [--root DIR] [--regularisers]
        [--out results/speed/stage1.json]

The data root is ``--root``, else ``LORT_DATA``, else ``../shared/data`` beside the repository.
"""

from __future__ import annotations

import argparse
import math
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from _common import default_root, run_main
from PIL import Image

from lort.data import DataConfig, build_dataset
from lort.data.augment import CIFAR_MEAN, CIFAR_STD, BatchAugment, BatchMix, iterate_batches
from lort.data.policies import BatchPolicy
from lort.env_info import environment
from lort.io import write_json
from lort.models import create_model
from lort.models.cifar_resnet import BasicBlock, CifarResNet
from lort.runtime.compilation import AUTO_MIN_STEPS, choose_compile, compiled
from lort.runtime.precision import autocast, choose_precision, cpu_capability
from lort.stage1.train import mixed_loss


class PilCifar(torch.utils.data.Dataset):
    """Per-sample PIL pipeline, as in torchvision-based reference code."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = images
        self.labels = labels
        self.mean = np.asarray(CIFAR_MEAN, np.float32)
        self.std = np.asarray(CIFAR_STD, np.float32)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        img = Image.fromarray(np.asarray(self.images[i]))
        padded = Image.new("RGB", (40, 40))
        padded.paste(img, (4, 4))
        x, y = random.randint(0, 8), random.randint(0, 8)
        img = padded.crop((x, y, x + 32, y + 32))
        if random.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        arr = (np.asarray(img, np.float32) / 255.0 - self.mean) / self.std
        return torch.from_numpy(arr.transpose(2, 0, 1).copy()), int(self.labels[i])


class ReferenceBlock(BasicBlock):
    """The public CIFAR ResNet code's block: ReLU out of place, the residual added in place."""

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self._identity(x)
        return F.relu(out)


class ReferenceResNet(CifarResNet):
    def forward_features(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.adaptive_avg_pool2d(self.layers(out), 1).flatten(1)


def reference_resnet32(num_classes: int) -> torch.nn.Module:
    """lort's ResNet-32 (same weights for a seed) with the reference code's forward pass."""
    model = create_model("resnet32", num_classes)
    model.__class__ = ReferenceResNet
    for block in model.layers:
        block.__class__ = ReferenceBlock
    return model


def run(batches, model, steps, warmup, channels_last, precision=None, step_fn=None, mix=None):
    """Images/s over ``steps`` steps after ``warmup``, and the seconds of the first step
    (which includes compiling, for a compiled ``step_fn``); ``mix`` mixes each batch as
    stage 1 does (mixup / CutMix)."""
    rng = np.random.default_rng(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-3)
    model.train()
    step_fn = model if step_fn is None else step_fn
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    seen, t0, first = 0, None, None
    start = time.perf_counter()
    for i, (x, y) in enumerate(batches):
        if i == 1:
            first = time.perf_counter() - start
        if i == warmup:
            t0 = time.perf_counter()
            seen = 0
        if i >= warmup + steps:
            break
        x = x.to(memory_format=fmt)
        partner, lam = y, 1.0
        if mix is not None:
            x, partner, lam = mix(x, y, rng)
        with autocast(precision, "cpu"):
            logits = step_fn(x)
        loss = mixed_loss(logits.float(), y, partner, lam, 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
    return seen / (time.perf_counter() - t0), first


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=None, help="data root (default: LORT_DATA, else ../shared/data)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=9, help="interleaved measurement rounds (medians reported)")
    ap.add_argument("--out", help="also write the figures to this JSON file")
    ap.add_argument(
        "--regularisers",
        action="store_true",
        help="also the eager default with mixup (alpha 1) and with RandAugment (N 2, M 9)",
    )
    args = ap.parse_args()
    ds = build_dataset(DataConfig(dataset="cifar10", root=args.root or default_root()))
    imgs, labels = ds.train.images, ds.train.labels
    cap = cpu_capability()
    print(f"CPU: {cap.describe()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(labels)} training images")

    precision = choose_precision("auto", "cpu")
    print(f"amp=auto chooses {precision.name}: {precision.reason}")
    # What `lort train` does by default for the standard schedule: 200 epochs of this set.
    standard_steps = 200 * math.ceil(len(labels) / args.batch_size)
    compiling = choose_compile("auto", "cpu", standard_steps)
    print(f"compile=auto for the standard {standard_steps}-step schedule: {'on' if compiling.enabled else 'off'} "
          f"({compiling.reason}); runs under {AUTO_MIN_STEPS:,} steps, such as the demo, stay eager")  # fmt: skip

    def lort(amp, compile_choice=None, policy=None, mixup=0.0):
        torch.manual_seed(0)
        model = create_model("resnet32", 10).to(memory_format=torch.channels_last)
        gen = torch.Generator().manual_seed(0)
        augment = BatchAugment(policy=BatchPolicy(policy) if policy else None)
        batches = iterate_batches(imgs, labels, args.batch_size, True, gen, augment, drop_last=True)
        step_fn = compiled(model, compile_choice) if compile_choice is not None else model
        mix = BatchMix(mixup_alpha=mixup) if mixup else None
        return run(batches, model, args.steps, args.warmup, True, choose_precision(amp, "cpu"), step_fn, mix)

    def reference():
        torch.manual_seed(0)
        model = reference_resnet32(10)
        loader = torch.utils.data.DataLoader(
            PilCifar(imgs, labels), batch_size=args.batch_size, shuffle=True, num_workers=2, drop_last=True
        )
        return run(iter(loader), model, args.steps, args.warmup, channels_last=False)

    # Interleaved rounds, the order reversed every other round: a machine whose speed drifts
    # affects all alike within a round, so each round gives its own ratios, and the medians
    # over rounds are reported (of the rates and of the per-round ratios).
    runs = {
        "lort_fp32": lambda: lort("none"),
        "lort_default_eager": lambda: lort("auto"),
        "lort_default": lambda: lort("auto", compiling),
        "reference_style": reference,
    }
    if args.regularisers:
        runs["lort_default_eager_mixup"] = lambda: lort("auto", mixup=1.0)
        runs["lort_default_eager_randaugment"] = lambda: lort("auto", policy="randaugment")
    labels_of = {
        "lort_fp32": "lort, fp32, eager",
        "lort_default_eager": f"lort, default for runs under {AUTO_MIN_STEPS:,} steps (amp=auto -> {precision.name}, eager)",
        "lort_default": f"lort, default for the standard schedule (amp=auto -> {precision.name}, "
        f"compile={'on' if compiling.enabled else 'off'})",
        "reference_style": "reference style (per-sample PIL, DataLoader, NCHW, fp32)",
        "lort_default_eager_mixup": f"lort, eager default (amp=auto -> {precision.name}) with mixup",
        "lort_default_eager_randaugment": f"lort, eager default (amp=auto -> {precision.name}) with RandAugment",
    }
    rates = {k: [] for k in runs}
    first_step = {k: [] for k in runs}
    for r in range(args.rounds):
        for k in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            rate, first = runs[k]()
            rates[k].append(rate)
            first_step[k].append(first)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()) + " images/s")
    med = {k: float(np.median(v)) for k, v in rates.items()}
    lorts = [k for k in runs if k != "reference_style"]
    paired = {k: float(np.median(np.asarray(rates[k]) / np.asarray(rates["reference_style"]))) for k in lorts}
    for k in runs:
        print(f"{labels_of[k]}: {med[k]:.1f} images/s")
    for k in lorts:
        print(f"ratio {labels_of[k]} / reference: {med[k] / med['reference_style']:.2f}x of the medians, "
              f"{paired[k]:.2f}x median of the per-round ratios ({args.rounds} interleaved rounds)")  # fmt: skip
    print(f"first step of the compiled default (compilation included): {first_step['lort_default'][0]:.1f} s "
          f"in round 1, {np.median(first_step['lort_default'][1:] or [np.nan]):.1f} s median later "
          f"(eager: {np.median(first_step['lort_default_eager']):.2f} s)")  # fmt: skip
    if args.out:
        write_json(
            args.out,
            {
                "cpu": cap.to_dict(),
                "amp_auto": precision.to_dict(),
                "compile_auto_standard_schedule": compiling.to_dict(),
                "images_per_s_median": med,
                "images_per_s_rounds": rates,
                "first_step_s_rounds": first_step,
                "ratios_of_medians": {k: med[k] / med["reference_style"] for k in lorts},
                "ratios_paired": paired,
                "steps": args.steps,
                "rounds": args.rounds,
                "batch_size": args.batch_size,
                "environment": environment(0),
            },
        )


if __name__ == "__main__":
    run_main(main)
