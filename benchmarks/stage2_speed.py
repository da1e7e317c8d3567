"""Stage-2 speed: `compare` of every method on cached features against the reference
protocol (augmented images through the frozen backbone every epoch), in the same run.

    python benchmarks/stage2_speed.py --checkpoint RUN/best.pt [--ref-method lort]

Prints the time to extract features once, to fit and select every method (each with its
whole validation grid), the time of the reference protocol for ONE method at ONE
setting (20 epochs, lr 5e-4, batch 64), and the per-method ratio.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import default_root, run_main

from lort.stage2 import Schedule
from lort.stage2.compare import compare, fit_method
from lort.stage2.full import BackboneFeatures
from lort.stage2.methods import get_method, resolve_methods
from lort.stage2.workflow import features_from_checkpoint


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--root")
    ap.add_argument("--ref-method", default="lort")
    ap.add_argument("--ref-epochs", type=int, default=20)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    t0 = time.perf_counter()
    got = features_from_checkpoint(args.checkpoint, args.root or default_root())
    fs, model, ds = got.features, got.model, got.dataset
    t_extract = time.perf_counter() - t0
    methods = resolve_methods(["all"])
    t0 = time.perf_counter()
    results = compare(fs, methods)
    t_fit = time.perf_counter() - t0
    n = len(methods)
    settings = sum(len(r.search) for r in results)
    print(f"feature extraction (once, {len(fs.splits['train'][1])} train + val + test images): {t_extract:.1f} s")
    print(f"compare, {n} methods, {settings} settings searched on validation, 20 epochs each: {t_fit:.1f} s")
    print(f"compare total (extraction + all methods): {t_extract + t_fit:.1f} s")

    method = get_method(args.ref_method)
    fixed = {p.name: p.default for p in method.params if p.default is not None}  # one setting: the defaults
    source = BackboneFeatures(model, ds.train.images, "eval", seed=0)
    t0 = time.perf_counter()
    fit_method(method, fs, Schedule(epochs=args.ref_epochs), lrs=(5e-4,), fixed=fixed, train_source=source)
    t_ref = time.perf_counter() - t0
    print(
        f"reference protocol, {args.ref_method}, one setting, {args.ref_epochs} epochs of backbone forward: {t_ref:.1f} s"
    )
    per_method = (t_extract + t_fit) / n
    print(f"per method: lort cache mode {per_method:.2f} s (extraction shared, whole grid) vs reference {t_ref:.1f} s"
          f" (one setting) -> {t_ref / per_method:.0f}x")  # fmt: skip


if __name__ == "__main__":
    run_main(main)
