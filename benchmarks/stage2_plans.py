"""The plan of ``lort compare --methods all`` for the paper's datasets, without their data:
settings, passes, FLOP, peak memory under a memory budget, and the time of that work at
the matrix-multiply rate THIS machine reaches for the same shapes.

    python benchmarks/stage2_plans.py [--budget-gib 20] [--out results/speed/stage2_plans.json]

Shapes: ResNet-50 / ResNeXt-50 features (D = 2,048) and the standard splits — ImageNet-LT
115,846 train / 20,000 val (K = 1,000), iNaturalist 2018 437,513 train (K = 8,142; its
official validation set is the test set, so lort holds out 20 images a class of training
data for validation: 162,840), Places-LT 62,500 train / 7,300 val (K = 365).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch
from _common import run_main

from lort.io import write_json
from lort.runtime.precision import cpu_capability
from lort.stage2.methods import resolve_methods
from lort.stage2.plan import make_plan, matmul_rate
from lort.stage2.schedule import DEFAULT_FITS_PER_METHOD, DEFAULT_LRS, DEFAULT_SEEDS, Schedule

DATASETS = {
    "ImageNet-LT": (1000, 115_846, 20_000, 50_000),
    "iNaturalist 2018": (8142, 437_513 - 162_840, 162_840, 24_426),
    "Places-LT": (365, 62_500, 7_300, 36_500),
}


@dataclass
class Shapes:
    """Feature-set shapes only: arrays that take no memory (``np.broadcast_to`` views, whose
    ``nbytes`` is the logical size, as the real array's would be)."""

    splits: dict
    num_classes: int

    def has_split(self, name: str) -> bool:
        return name in self.splits and len(self.splits[name][1]) > 0


def shapes(k: int, train: int, val: int, test: int, dim: int = 2048) -> Shapes:
    def split(n):
        return np.broadcast_to(np.float32(0), (n, dim)), np.broadcast_to(np.int64(0), (n,))

    return Shapes({"train": split(train), "val": split(val), "test": split(test)}, k)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget-gib", type=float, default=20.0, help="memory budget for stage 2 (GiB)")
    ap.add_argument("--out", help="write the plans to this JSON file")
    args = ap.parse_args()
    print(f"CPU: {cpu_capability().describe()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    methods, schedule, out = resolve_methods(["all"]), Schedule(), []
    for name, (k, train, val, test) in DATASETS.items():
        fs = shapes(k, train, val, test)
        plan = make_plan(  # what `lort compare --methods all` plans by default: 6 fits per method, 3 seeds
            methods, fs, schedule, DEFAULT_LRS, budget_bytes=int(args.budget_gib * 2**30),
            fits_per_method=DEFAULT_FITS_PER_METHOD, seeds=DEFAULT_SEEDS,
        )  # fmt: skip
        rate = matmul_rate(plan, rounds=5)
        print(f"\n{name}\n{plan.describe(rate)}")
        out.append(
            {
                "dataset": name,
                "K": k,
                "train_rows": train,
                "settings": plan.settings,
                "passes": len(plan.passes),
                "max_settings_at_once": plan.max_settings,
                "flop": plan.flop,
                "peak_gib": plan.peak_bytes / 2**30,
                "cpu_mm_gflop_s": rate / 1e9,
                "cpu_matrix_hours": plan.flop / rate / 3600,
            }
        )
    if args.out:
        write_json(args.out, {"cpu": cpu_capability().to_dict(), "budget_gib": args.budget_gib, "plans": out})


if __name__ == "__main__":
    run_main(main)
