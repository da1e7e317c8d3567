"""Peak memory (resident set size) of stage 2 at ImageNet-LT scale and of the demo pipeline,
each beside a baseline measured in the same run.

    python benchmarks/memory.py [--n 115846 --dim 2048 --classes 1000] [--demo-epochs 2]

Stage 2: a synthetic long-tailed feature file of ImageNet-LT's shape (``--n`` training rows
x ``--dim``, float32, 20,000 validation and 50,000 test rows) WITHOUT a stage-1 classifier,
so that the cross-entropy warm start runs too, is written once; then, each in a fresh
process: (a) the baseline, a process that imports lort and torch; (b) ``lort retrain
--method lort`` (one setting); (c) ``lort compare --methods lort --seeds 1`` (6 settings side
by side). Printed: each peak, the bytes of the feature arrays and of the classifiers the
plan holds (weights, momentum, best epoch's copy), and the ratio
``peak / (features + classifiers)`` with and without the import baseline subtracted. The
features are memory-mapped from the file, so a bounded stage 2 stays near 1x.

Demo: ``lort run configs/demo.yaml`` (stage 1 shortened to ``--demo-epochs``; memory does
not grow with epochs) against the import baseline.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import run_main

LORT = [sys.executable, "-m", "lort"]


def peak_of(cmd: list[str]) -> tuple[float, float]:
    """Peak RSS (MiB) and wall time (s) of ``cmd`` run in a fresh child process."""
    wrapper = (
        "import resource, subprocess, sys, json, time\n"
        "t = time.perf_counter()\n"
        "rc = subprocess.run(sys.argv[1:]).returncode\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps({'rc': rc, 'peak': peak, 'time': time.perf_counter() - t}))\n"
    )
    res = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if out["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return out["peak"], out["time"]


def write_features(path: Path, n: int, dim: int, k: int, val: int, test: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    profile = 0.01 ** (np.arange(k) / (k - 1))  # exponential, imbalance ratio 100
    counts = np.maximum(1, np.floor(profile * n / profile.sum())).astype(int)
    counts[0] += n - counts.sum()  # the head class takes the rounding
    labels = np.repeat(np.arange(k), counts)
    centres = rng.standard_normal((k, dim), dtype=np.float32)

    def feats(y):
        x = rng.standard_normal((len(y), dim), dtype=np.float32)
        x += 0.5 * centres[y]
        return x

    yv, yt = np.arange(val) % k, np.arange(test) % k
    arrays = {
        "train_features": feats(labels), "train_labels": labels,
        "val_features": feats(yv), "val_labels": yv, "test_features": feats(yt), "test_labels": yt,
    }  # fmt: skip
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return sum(a.nbytes for a in arrays.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=115_846)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--val", type=int, default=20_000)
    ap.add_argument("--test", type=int, default=50_000)
    ap.add_argument("--epochs", type=int, default=1, help="stage-2 epochs (memory does not grow with them)")
    ap.add_argument("--demo-epochs", type=int, default=2, help="stage-1 epochs of the demo run (0 = skip the demo)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    from lort.data.features import load_features
    from lort.stage2.methods import resolve_methods
    from lort.stage2.plan import make_plan, setting_bytes
    from lort.stage2.schedule import DEFAULT_LRS, Schedule

    results = {"rss_unit": "MiB", "machine_ram_mib": None}
    with open("/proc/meminfo") as f:
        results["machine_ram_mib"] = int(f.readline().split()[1]) // 1024
    imp, _ = peak_of([sys.executable, "-c", "import torch, lort.cli, lort.pipeline"])
    print(f"baseline  import lort and torch:          peak {imp:7.0f} MiB")
    results["import_baseline_mib"] = imp
    with tempfile.TemporaryDirectory(prefix="lort-mem-") as tmp:
        tmp = Path(tmp)
        feats = tmp / "features.npz"
        t = time.perf_counter()
        nbytes = write_features(feats, args.n, args.dim, args.classes, args.val, args.test)
        print(f"feature file: {args.n} x {args.dim} train, {args.val} val, {args.test} test, {args.classes} classes, "
              f"no stage-1 classifier; {nbytes / 2**20:.0f} MiB of arrays (written in {time.perf_counter() - t:.0f} s)",
              flush=True)  # fmt: skip
        sched = Schedule(epochs=args.epochs)
        plan = make_plan(resolve_methods(["lort"]), load_features(feats), sched, DEFAULT_LRS, fits_per_method=6)
        per = setting_bytes(args.classes, args.dim, sched.batch_size) / 2**20
        results |= {"feature_bytes_mib": nbytes / 2**20, "setting_mib": per, "stage2_epochs": args.epochs}
        runs = {
            "g1": (
                "lort retrain --method lort (G=1)",
                ["retrain", "--method", "lort", "--smooth", "0.98", "--lr", "5e-4"],
                1,
            ),
            "g6": (
                "lort compare --methods lort (G=6)",
                ["compare", "--methods", "lort", "--seeds", "1"],
                plan.settings,
            ),
        }
        for key, (label, cmd, g) in runs.items():
            peak, secs = peak_of([*LORT, *cmd, "--features", str(feats), "--epochs", str(args.epochs),
                                  "--out", str(tmp / key)])  # fmt: skip
            held = nbytes / 2**20 + max(g, 3) * per  # the warm start trains 3 settings first
            print(f"stage 2   {label}: peak {peak:7.0f} MiB ({secs:.0f} s); features + classifiers {held:,.0f} MiB: "
                  f"{peak / held:.2f}x, {(peak - imp) / held:.2f}x without the import baseline")  # fmt: skip
            results |= {f"stage2_{key}_mib": peak, f"stage2_{key}_held_mib": held, f"stage2_{key}_ratio": peak / held,
                        f"stage2_{key}_ratio_less_import": (peak - imp) / held, f"stage2_{key}_s": secs}  # fmt: skip
        if args.demo_epochs:
            demo, td = peak_of([*LORT, "run", "configs/demo.yaml", "--epochs", str(args.demo_epochs),
                                "--out", str(tmp / "demo")])  # fmt: skip
            print(f"demo      lort run configs/demo.yaml ({args.demo_epochs} stage-1 epochs): peak {demo:7.0f} MiB "
                  f"({td:.0f} s) = {demo / imp:.2f}x the import baseline")  # fmt: skip
            results |= {"demo_mib": demo, "demo_stage1_epochs": args.demo_epochs}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    run_main(main)
