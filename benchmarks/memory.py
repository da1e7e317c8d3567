"""Peak memory (resident set size) of stage 2 at ImageNet-LT scale and of the demo pipeline,
each beside a baseline measured in the same run.

    python benchmarks/memory.py [--n 100000 --dim 2048 --classes 1000] [--demo-epochs 2]

Stage 2: a synthetic long-tailed feature file (``--n`` training rows x ``--dim``, float32,
with a stage-1 classifier to warm-start from, plus validation and test rows) is written
once; then, each in a fresh process, (a) the baseline: loading the file and converting it
to tensors, (b) ``lort retrain --method lort`` (one setting) and (c) ``lort retrain
--method lort`` searching 7 values of ``s`` side by side (G = 7). Printed: each peak and
its ratio to the baseline; a bounded stage 2 stays near 1x (no all-in-RAM copies).

Demo: ``lort run configs/demo.yaml`` (stage 1 shortened to ``--demo-epochs``; memory does
not grow with epochs) against the baseline of a process that imports lort and torch.
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
        "init_weight": 0.01 * centres, "init_bias": np.zeros(k, np.float32),
    }  # fmt: skip
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return sum(a.nbytes for a in arrays.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--val", type=int, default=10_000)
    ap.add_argument("--test", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=1, help="stage-2 epochs (memory does not grow with them)")
    ap.add_argument("--demo-epochs", type=int, default=2, help="stage-1 epochs of the demo run (0 = skip the demo)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    results = {"rss_unit": "MiB", "machine_ram_mib": None}
    with open("/proc/meminfo") as f:
        results["machine_ram_mib"] = int(f.readline().split()[1]) // 1024
    with tempfile.TemporaryDirectory(prefix="lort-mem-") as tmp:
        tmp = Path(tmp)
        feats = tmp / "features.npz"
        t = time.perf_counter()
        nbytes = write_features(feats, args.n, args.dim, args.classes, args.val, args.test)
        print(f"feature file: {args.n} x {args.dim} train, {args.val} val, {args.test} test, {args.classes} classes; "
              f"{nbytes / 2**20:.0f} MiB of arrays (written in {time.perf_counter() - t:.0f} s)", flush=True)  # fmt: skip
        load = ("import sys, torch; from lort.data.features import load_features; fs = load_features(sys.argv[1]); "
                "[torch.as_tensor(x) for x, _ in fs.splits.values()]")  # fmt: skip
        base, bt = peak_of([sys.executable, "-c", load, str(feats)])
        print(f"baseline  load the file into tensors:     peak {base:7.0f} MiB  ({bt:.0f} s)")
        results |= {"feature_bytes_mib": nbytes / 2**20, "baseline_load_mib": base}
        common = ["retrain", "--features", str(feats), "--method", "lort", "--epochs", str(args.epochs),
                  "--lr", "5e-4"]  # fmt: skip
        one, t1 = peak_of([*LORT, *common, "--smooth", "0.98", "--out", str(tmp / "one")])
        print(
            f"stage 2   lort, one setting (G=1):        peak {one:7.0f} MiB  ({t1:.0f} s)  = {one / base:.2f}x baseline"
        )
        grid, t7 = peak_of([*LORT, *common, "--out", str(tmp / "grid")])
        print(
            f"stage 2   lort, 7 values of s (G=7):      peak {grid:7.0f} MiB  ({t7:.0f} s)  = {grid / base:.2f}x baseline"
        )
        results |= {"stage2_g1_mib": one, "stage2_g7_mib": grid, "stage2_g1_ratio": one / base,
                    "stage2_g7_ratio": grid / base, "stage2_epochs": args.epochs}  # fmt: skip
        if args.demo_epochs:
            imp, _ = peak_of([sys.executable, "-c", "import torch, lort.cli, lort.pipeline"])
            demo, td = peak_of([*LORT, "run", "configs/demo.yaml", "--epochs", str(args.demo_epochs),
                                "--out", str(tmp / "demo")])  # fmt: skip
            print(f"baseline  import lort and torch:          peak {imp:7.0f} MiB")
            print(f"demo      lort run configs/demo.yaml ({args.demo_epochs} stage-1 epochs): peak {demo:7.0f} MiB "
                  f"({td:.0f} s) = {demo / imp:.2f}x the import baseline")  # fmt: skip
            results |= {"import_baseline_mib": imp, "demo_mib": demo, "demo_stage1_epochs": args.demo_epochs}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    run_main(main)
