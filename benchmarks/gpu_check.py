"""The GPU check: what a GPU owner runs to see lort's stage 1, tuning and stage 2 on CUDA.

One short command, about five minutes on a recent GPU:

1. the batched augmentation (crop, flip, AutoAugment, Cutout) on the GPU against the CPU
   for one seed: the share of equal values (the draws come from the CPU generator, so the
   two should agree but for rounding in the resampling) and each one's time per batch;
   then stage-1 throughput of ResNet-32 on CIFAR-10-LT (IR 100), one timed epoch after one
   warm-up epoch each, in fp32, bf16 and fp16 autocast, channels_last, bf16 with
   torch.compile, and bf16 with AutoAugment + Cutout; images/s and the ratio to fp32
   measured in the same run;
2. ``lort tune`` with two trials of two short epochs (Optuna), the study resumed once;
3. the whole pipeline (``lort run``: a three-epoch stage 1, features, every stage-2 method,
   one seed) with its wall time.

It writes ``OUT/gpu_check.json`` (the device, the versions and every figure) and prints a
summary. Data: CIFAR-10 from ``--root`` or ``LORT_DATA`` (the JPEG folder tree or the
official archive); without either, a generated archive in the official format (figures
then time the code, not accuracy).

    python benchmarks/gpu_check.py --out runs/gpu_check [--root DIR] [--steps 60]

Needs a CUDA device; exits 2 with one line where there is none.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from _common import default_root, run_main

from lort.config import load_config
from lort.env_info import environment
from lort.errors import LortError
from lort.io import write_json


def _augment_parity(device: torch.device, batch: int = 512, repeats: int = 20) -> dict:
    """AutoAugment + Cutout on ``device`` against the CPU, the same seed, and each one's time."""
    from lort.data.augment import BatchAugment
    from lort.data.policies import BatchPolicy

    aug = BatchAugment(policy=BatchPolicy("autoaugment"), cutout=16)
    images = torch.randint(0, 256, (batch, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    on_cpu = aug(images, torch.Generator().manual_seed(1))
    on_dev = aug(images.to(device), torch.Generator().manual_seed(1)).cpu()
    times = {}
    for where, imgs in (("cpu", images), ("device", images.to(device))):
        gen = torch.Generator().manual_seed(2)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            aug(imgs, gen)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times[f"{where}_ms_per_batch"] = round(1000 * (time.perf_counter() - start) / repeats, 2)
    return {
        "batch": batch,
        "equal_share": round(float((on_cpu == on_dev).float().mean()), 5),
        "max_abs_diff": round(float((on_cpu - on_dev).abs().max()), 4),
        **times,
    }


def _stage1(root, head: int, out: Path, amp: str, compile_: bool, steps: int, augment: dict | None = None) -> dict:
    from lort.stage1.train import train

    cfg = load_config(
        None,
        {
            **(augment or {}),
            "data.root": root,
            "data.max_per_class": head,
            "data.val_per_class": 20,
            "stage1.epochs": 2,
            "stage1.batch_size": 128,
            "stage1.lr": 0.1,
            "stage1.weight_decay": 5e-4,
            "stage1.amp": amp,
            "stage1.compile": compile_,
            "stage1.steps_per_epoch": steps,
        },
    )
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    train(cfg, out, evaluate_test=False)
    wall = time.perf_counter() - start
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    env = json.loads((out / "environment.json").read_text())
    return {
        "amp": amp,
        "precision": env["precision"],
        "compile": env["compile"],
        "images_per_s": records[-1]["images_per_s"],  # the second epoch: warm-up and compilation done
        "first_epoch_s": records[0]["epoch_time_s"],
        "wall_s": round(wall, 1),
        "train_loss": records[-1]["train_loss"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for gpu_check.json and the runs")
    p.add_argument("--root", default=default_root(), help="CIFAR-10 data folder (default: LORT_DATA)")
    p.add_argument("--steps", type=int, default=60, help="stage-1 steps per timed epoch (default 60)")
    p.add_argument("--max-per-class", type=int, help="head-class size (default 4980; 480 for generated data)")
    p.add_argument(
        "--cpu", action="store_true", help="run on the CPU anyway (to check the script itself; fp16 left out)"
    )
    args = p.parse_args()
    if not torch.cuda.is_available() and not args.cpu:
        raise LortError("no CUDA device: the GPU check needs one (the CPU benchmarks are stage1_throughput.py)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root, head = args.root, 4980  # the head class keeps 4980 of 5000: 20 per class for validation
    if root is None and not os.environ.get("LORT_DATA"):
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.conftest import make_cifar_archive

        root = str(out / "generated")
        make_cifar_archive(Path(root), "cifar10", 500, 100)
        head = 480
        print(f"no CIFAR-10 data given: a generated archive in {root} (timings only)")
    head = args.max_per_class or head
    cuda = torch.cuda.is_available()
    report = {
        "environment": environment(0),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "capability": list(torch.cuda.get_device_capability(0)) if cuda else None,
    }
    print(f"device: {report['device']} (capability {report['capability']}), torch {torch.__version__}")
    report["augment"] = _augment_parity(torch.device("cuda" if cuda else "cpu"))
    print(
        f"augmentation on the device: {report['augment']['equal_share']:.2%} of values equal to the CPU's, "
        f"{report['augment']['device_ms_per_batch']} ms per batch of 512 there, "
        f"{report['augment']['cpu_ms_per_batch']} ms on the CPU"
    )
    rows = []
    policy = {"stage1.augment": "autoaugment", "stage1.cutout": 16}
    variants = [("none", False, None), ("bf16", False, None), ("fp16", False, None), ("bf16", True, None)]
    variants.append(("bf16", False, policy))
    for amp, compile_, augment in variants if cuda else variants[:2]:
        name = f"stage1_{amp}{'_compiled' if compile_ else ''}{'_autoaugment' if augment else ''}"
        row = _stage1(root, head, out / name, amp, compile_, args.steps, augment)
        row["augment"] = "autoaugment + cutout 16" if augment else "standard"
        rows.append(row)
        print(f"{name}: {row['images_per_s']:.0f} images/s (first epoch {row['first_epoch_s']:.1f} s)")
    fp32 = rows[0]["images_per_s"]
    for row in rows:
        row["ratio_to_fp32"] = round(row["images_per_s"] / fp32, 3)
    report["stage1"] = rows

    try:
        import optuna  # noqa: F401
    except ImportError:
        report["tune"] = {"skipped": "optuna is not installed (pip install optuna)"}
        print("tune: skipped, optuna is not installed")
    else:
        from lort.stage1.tune import tune

        cfg = load_config(
            None,
            {
                "data.root": root,
                "data.max_per_class": head,
                "data.val_per_class": 20,
                "stage1.epochs": 8,
                "stage1.batch_size": 128,
                "stage1.steps_per_epoch": args.steps,
            },
        )
        start = time.perf_counter()
        first = tune(cfg, out / "tune", trials=2, epochs=2, pruner="none")
        resumed = tune(cfg, out / "tune", trials=2, epochs=2, pruner="none")  # resumes: no trial more
        report["tune"] = {
            "wall_s": round(time.perf_counter() - start, 1),
            "trial_counts": resumed["trial_counts"],
            "best": first["best"],
        }
        print(f"tune: {report['tune']['trial_counts']} in {report['tune']['wall_s']} s")

    from lort.pipeline import run_pipeline

    cfg = load_config(
        None,
        {
            "data.root": root,
            "data.max_per_class": head,
            "data.val_per_class": 20,
            "stage1.epochs": 3,
            "stage1.batch_size": 128,
            "stage1.lr": 0.1,
            "stage1.weight_decay": 5e-4,
            "stage1.steps_per_epoch": args.steps,
            "stage2.seeds": 1,
            "stage2.sweep": False,
        },
    )
    start = time.perf_counter()
    result = run_pipeline(cfg, out / "pipeline", "benchmarks/gpu_check.py")
    board = json.loads((out / "pipeline" / "compare" / "leaderboard.json").read_text())
    report["pipeline"] = {
        "wall_s": round(time.perf_counter() - start, 1),
        "methods": len(board["results"]),
        "report": str(result["report"]),
    }
    print(f"pipeline: {report['pipeline']['methods']} methods in {report['pipeline']['wall_s']} s")
    write_json(out / "gpu_check.json", report)
    print(f"written to {out / 'gpu_check.json'}")


if __name__ == "__main__":
    run_main(main)
