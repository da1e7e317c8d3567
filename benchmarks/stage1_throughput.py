"""ResNet-32 stage-1 training throughput on 32x32 images: lort's input pipeline against
the reference-code style pipeline, measured in the same run on this machine.

lort:      uint8 array (memory-mapped cache) -> batched tensor crop/flip/normalise ->
           channels_last ResNet-32, in fp32 and with the default amp=auto (bf16 autocast where
           the CPU has native bf16 — AVX512_BF16 or AMX — fp32 elsewhere).
baseline:  per-sample PIL transforms (pad+random crop, flip, to-tensor, normalise) in a
           torch DataLoader (2 workers), NCHW ResNet-32 — how the public reference code
           feeds CIFAR.

Both train the same model (SGD, batch 64) for the same number of steps after warm-up;
the script prints the CPU's capability, images/s of each (medians of ``--rounds``
interleaved rounds, the order reversed every other round) and the ratios to the reference
(of the medians, and the median of each round's own ratio, which a drifting machine
disturbs less), and with ``--out FILE.json`` writes them to a file.

    python benchmarks/stage1_throughput.py [--steps 40] [--rounds 5] [--root DIR] [--out results/speed/stage1.json]

The data root is ``--root``, else ``LORT_DATA``, else ``../shared/data`` beside the repository.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from _common import default_root, run_main
from PIL import Image

from lort.data import DataConfig, build_dataset
from lort.data.augment import CIFAR_MEAN, CIFAR_STD, BatchAugment, iterate_batches
from lort.env_info import environment
from lort.io import write_json
from lort.models import create_model
from lort.runtime.precision import autocast, choose_precision, cpu_capability


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


def run(batches, model, steps, warmup, channels_last, precision=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-3)
    model.train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    seen, t0 = 0, None
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            t0 = time.perf_counter()
            seen = 0
        if i >= warmup + steps:
            break
        x = x.to(memory_format=fmt)
        with autocast(precision, "cpu"):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
    return seen / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=None, help="data root (default: LORT_DATA, else ../shared/data)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds (medians reported)")
    ap.add_argument("--out", help="also write the figures to this JSON file")
    args = ap.parse_args()
    ds = build_dataset(DataConfig(dataset="cifar10", root=args.root or default_root()))
    imgs, labels = ds.train.images, ds.train.labels
    cap = cpu_capability()
    print(f"CPU: {cap.describe()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(labels)} training images")

    precision = choose_precision("auto", "cpu")
    print(f"amp=auto chooses {precision.name}: {precision.reason}")

    def lort(amp):
        torch.manual_seed(0)
        model = create_model("resnet32", 10).to(memory_format=torch.channels_last)
        gen = torch.Generator().manual_seed(0)
        batches = iterate_batches(imgs, labels, args.batch_size, True, gen, BatchAugment(), drop_last=True)
        return run(batches, model, args.steps, args.warmup, channels_last=True, precision=choose_precision(amp, "cpu"))

    def reference():
        torch.manual_seed(0)
        model = create_model("resnet32", 10)
        loader = torch.utils.data.DataLoader(
            PilCifar(imgs, labels), batch_size=args.batch_size, shuffle=True, num_workers=2, drop_last=True
        )
        return run(iter(loader), model, args.steps, args.warmup, channels_last=False)

    # Interleaved rounds, the order reversed every other round: a machine whose speed drifts
    # affects the three alike within a round, so each round gives its own ratios, and the
    # medians over rounds are reported (of the rates and of the per-round ratios).
    runs = {"lort_fp32": lambda: lort("none"), "lort_default": lambda: lort("auto"), "reference_style": reference}
    rates = {k: [] for k in runs}
    for r in range(args.rounds):
        for k in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            rates[k].append(runs[k]())
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()) + " images/s")
    med = {k: float(np.median(v)) for k, v in rates.items()}
    paired = {
        k: float(np.median(np.asarray(rates[k]) / np.asarray(rates["reference_style"])))
        for k in ("lort_fp32", "lort_default")
    }
    print(f"lort pipeline (batched tensor aug, channels_last, fp32):            {med['lort_fp32']:8.1f} images/s")
    print(f"lort pipeline (batched tensor aug, channels_last, default amp=auto -> {precision.name}): "
          f"{med['lort_default']:8.1f} images/s")  # fmt: skip
    print(f"reference style (per-sample PIL, DataLoader, NCHW, fp32):          {med['reference_style']:8.1f} images/s")
    print(f"ratio lort fp32 / reference: {med['lort_fp32'] / med['reference_style']:.2f}x of the medians, "
          f"{paired['lort_fp32']:.2f}x median of the per-round ratios")  # fmt: skip
    print(f"ratio lort default (amp=auto -> {precision.name}) / reference: "
          f"{med['lort_default'] / med['reference_style']:.2f}x of the medians, "
          f"{paired['lort_default']:.2f}x median of the per-round ratios ({args.rounds} interleaved rounds)")  # fmt: skip
    if args.out:
        write_json(
            args.out,
            {
                "cpu": cap.to_dict(),
                "amp_auto": precision.to_dict(),
                "images_per_s_median": med,
                "images_per_s_rounds": rates,
                "ratio_fp32": med["lort_fp32"] / med["reference_style"],
                "ratio_default": med["lort_default"] / med["reference_style"],
                "ratio_fp32_paired": paired["lort_fp32"],
                "ratio_default_paired": paired["lort_default"],
                "steps": args.steps,
                "rounds": args.rounds,
                "batch_size": args.batch_size,
                "environment": environment(0),
            },
        )


if __name__ == "__main__":
    run_main(main)
