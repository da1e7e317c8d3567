"""Stage-2 comparison speed against the machine: every method on a K = 10 / 64-d and a
K = 100 / 1,280-d long-tailed feature set, beside the rate ``torch.mm`` reaches for the same
shapes in the same process.

For each feature set it prints the plan (settings, passes, FLOP), the wall time of
``lort.stage2.compare`` with ``--methods all`` (``lort compare``'s default budget of 6 fits
per method, one stage-2 seed), the FLOP rate achieved, the same-shape ``torch.mm`` rate (the
higher of two measurements, before and after the comparison: this machine's speed drifts)
and their ratio, and the time outside the training passes (the
cross-entropy warm start, post-hoc methods, validation and test scoring).

    python benchmarks/stage2_throughput.py [--features FILE.npz ...] [--out results/speed/stage2.json]

The synthetic sets are seeded class-conditional Gaussians with an exponential long tail
(imbalance ratio 100) and a stage-1-like classifier (scaled class means), so that
warm-started methods start from a converged classifier as they do on real features.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _common import run_main

from lort.data.features import FeatureSet, load_features
from lort.env_info import environment
from lort.io import write_json
from lort.runtime.precision import cpu_capability
from lort.stage2.compare import compare
from lort.stage2.methods import resolve_methods
from lort.stage2.plan import make_plan, matmul_rate, step_costs
from lort.stage2.schedule import DEFAULT_FITS_PER_METHOD, DEFAULT_LRS, Schedule


def synthetic(k: int, d: int, n_max: int, seed: int = 0) -> FeatureSet:
    rng = np.random.default_rng(seed)
    counts = [max(1, int(n_max * 100 ** (-i / (k - 1)))) for i in range(k)]
    means = rng.normal(size=(k, d)).astype(np.float32)

    def split(per_class):
        y = np.repeat(np.arange(k), per_class)
        x = means[y] * 0.6 + rng.normal(size=(len(y), d)).astype(np.float32)
        return np.maximum(x, 0).astype(np.float32), y  # post-ReLU-like features

    w = (means / np.linalg.norm(means, axis=1, keepdims=True) * 3.0).astype(np.float32)
    return FeatureSet(
        splits={"train": split(counts), "val": split([20] * k), "test": split([50] * k)},
        classes=[f"c{i}" for i in range(k)],
        init_weight=w,
        init_bias=np.zeros(k, np.float32),
        meta={"synthetic": f"K={k}, D={d}, n_max={n_max}, IR 100, seed {seed}"},
    )


def measure(name: str, fs: FeatureSet) -> dict:
    methods = resolve_methods(["all"])
    schedule = Schedule()
    plan = make_plan(
        methods, fs, schedule, DEFAULT_LRS, fits_per_method=DEFAULT_FITS_PER_METHOD
    )  # lort compare's default
    before, costs = matmul_rate(plan, rounds=5), step_costs()
    t0 = time.perf_counter()
    results = compare(fs, methods, schedule, DEFAULT_LRS, plan=plan, fits_per_method=DEFAULT_FITS_PER_METHOD)
    total = time.perf_counter() - t0
    rate = max(before, matmul_rate(plan, rounds=5))  # the machine's speed drifts: the higher of before and after
    achieved = plan.flop / total
    in_methods = sum(r.time_s for r in results)
    out = {
        "features": name,
        "K": plan.num_classes,
        "D": plan.dim,
        "train_rows": plan.train_rows,
        "settings": plan.settings,
        "passes": len(plan.passes),
        "flop": plan.flop,
        "compare_s": total,
        "achieved_gflop_s": achieved / 1e9,
        "mm_gflop_s": rate / 1e9,
        "ratio_to_mm": achieved / rate,
        "outside_methods_s": total - in_methods,
        "predicted_at_least_s": plan.predicted_seconds(rate, costs),
    }
    print(f"\n{name}")
    print(plan.describe(rate, costs))
    print(
        f"  compare --methods all: {total:.1f} s; achieved {achieved / 1e9:.1f} GFLOP/s vs torch.mm same shapes "
        f"{rate / 1e9:.1f} GFLOP/s -> {100 * achieved / rate:.0f}% of the same-shape rate; time outside the "
        f"methods' passes (warm start, data to tensors, test scoring): {total - in_methods:.1f} s "
        f"({100 * (total - in_methods) / total:.0f}%)"
    )
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--features", nargs="*", default=[], help="also measure these feature files")
    ap.add_argument("--out", help="write the figures to this JSON file")
    ap.add_argument("--sets", nargs="*", choices=["k10", "k100"], default=["k10", "k100"], help="synthetic sets to run")
    args = ap.parse_args()
    cap = cpu_capability()
    print(f"CPU: {cap.describe()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    sets = {
        "k10": ("synthetic K=10, D=64 (CIFAR-10-LT-sized)", lambda: synthetic(10, 64, 4980)),
        "k100": (
            "synthetic K=100, D=1280 (CIFAR-100-LT-sized, pretrained-network width)",
            lambda: synthetic(100, 1280, 500),
        ),
    }
    runs = [measure(sets[s][0], sets[s][1]()) for s in args.sets]
    runs += [measure(path, load_features(path)) for path in args.features]
    if args.out:
        write_json(args.out, {"cpu": cap.to_dict(), "runs": runs, "environment": environment(0)})


if __name__ == "__main__":
    run_main(main)
