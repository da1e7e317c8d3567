"""The LORT suite: does the default LORT help on every feature set, with and without
validation data, over seeds? One command writes everything under --out:

    python benchmarks/lort_suite.py --out results/suite FEATURES.npz [FEATURES.npz ...]

For each feature file (named by its file name):

- ``<name>/compare/``: ``lort compare`` of every method with validation data (equal budget
  of 6 fits per method, 3 stage-2 seeds, paired bootstrap tiers);
- without validation data (the split removed; each method at its defaults, the schedule's
  learning rate 5e-4, the last of 20 epochs), over 3 seeds: CE re-training, cRT, the paper's
  LORT recipe (``lort_reference``) and the default LORT; and two ablations of the default:
  its head before any training (the centred equal-norm head alone) and that head trained
  with plain cross-entropy instead of LORT's target, at learning rates 5e-4 and 5e-2;
- ``summary.json`` and ``summary.md``: test accuracy (mean and sd over seeds) and the mean
  accuracy of the rarest 30% of classes, per feature set and setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import run_main

NO_VAL_METHODS = ("ce", "crt", "lort_reference", "lort")
SEEDS = 3


def rare_classes(counts: np.ndarray) -> np.ndarray:
    """The rarest 30% of classes (at least one)."""
    return np.argsort(counts, kind="stable")[: max(1, int(round(0.3 * len(counts))))]


def scores(logits: np.ndarray, labels: np.ndarray, rare: np.ndarray) -> tuple[float, float]:
    pred = logits.argmax(1)
    per_class = [float((pred[labels == c] == c).mean()) for c in rare if (labels == c).any()]
    return float((pred == labels).mean()), float(np.mean(per_class))


def without_validation(fs):
    from lort.data.features import FeatureSet

    return FeatureSet(
        splits={k: v for k, v in fs.splits.items() if k != "val"},
        classes=fs.classes,
        init_weight=fs.init_weight,
        init_bias=fs.init_bias,
        meta=dict(fs.meta),
    )


def ablations(fs, seed: int, rare) -> dict[str, tuple[float, float]]:
    """The default LORT head untrained, and trained with cross-entropy (lr 5e-4 and 5e-2)."""
    from lort.stage2.context import context
    from lort.stage2.heads import CentredHead, logits_of
    from lort.stage2.schedule import Schedule
    from lort.stage2.trainer import fit_head
    from lort.testing.oracles import grouped_cross_entropy

    schedule = Schedule(seed=seed)
    ctx = context(fs, schedule, seed)
    x, y = fs.splits["test"]
    out = {
        "centred head, untrained": scores(
            logits_of(CentredHead.from_classifier(ctx.class_directions, ctx.x), x), y, rare
        )
    }
    lrs = [5e-4, 5e-2]
    head, _ = fit_head(
        CentredHead.from_classifier(ctx.class_directions, ctx.x, len(lrs)),
        ctx.x,
        ctx.y,
        lambda logits, labels, epoch: grouped_cross_entropy(logits, labels),
        schedule,
        lr=lrs,
        num_classes=fs.num_classes,
    )
    for g, lr in enumerate(lrs):
        out[f"centred head + CE, lr {lr:g}"] = scores(logits_of(head.select(g), x), y, rare)
    return out


def run_set(path: Path, out: Path) -> dict:
    from lort.data.features import load_features
    from lort.stage2.compare import evaluate_test, fit_method
    from lort.stage2.heads import logits_of
    from lort.stage2.methods import METHODS
    from lort.stage2.schedule import Schedule
    from lort.stage2.workflow import run_compare

    name = path.stem
    fs = load_features(path)
    rare = rare_classes(fs.train_counts)
    record: dict = {
        "features": str(path),
        "num_classes": fs.num_classes,
        "dim": int(fs.splits["train"][0].shape[1]),
        "train_counts": fs.train_counts.tolist(),
        "rare_classes": rare.tolist(),
    }
    t0 = time.perf_counter()
    if fs.has_split("val"):
        results, _ = run_compare(fs, ["all"], out / name / "compare", Schedule(), source=str(path), seeds=SEEDS)
        record["with_validation"] = {
            r.method: {
                "test_acc": [s["test"]["acc"] for s in r.seeds],
                "val_acc": [s["val_balanced_acc"] for s in r.seeds],
                "tier": r.difference.tier,
                "diff_to_reference": r.difference.diff,
                "diff_ci": [r.difference.low, r.difference.high],
                "reference": r.difference.reference,
                "test_best": r.verdicts.test_best,
            }
            for r in results
        }
        record["statistics"] = results[0].verdicts.describe()
    bare = without_validation(fs)
    x, y = fs.splits["test"]
    rows: dict[str, list] = {}
    for seed in range(SEEDS):
        schedule = dataclasses.replace(Schedule(), seed=seed)
        for m in NO_VAL_METHODS:
            r = fit_method(METHODS[m], bare, schedule)
            evaluate_test(r, bare)
            rows.setdefault(m, []).append(scores(logits_of(r.head, x), y, rare))
        for label, value in ablations(bare, seed, rare).items():
            rows.setdefault(label, []).append(value)
    record["without_validation"] = {
        k: {"test_acc": [a for a, _ in v], "rare_acc": [b for _, b in v]} for k, v in rows.items()
    }
    record["seconds"] = round(time.perf_counter() - t0, 1)
    return record


def summary_markdown(records: dict, out: str = "results/suite") -> str:
    lines = [
        "# LORT suite: default LORT against CE, cRT and the paper's recipe",
        "",
        f"Test accuracy %, mean ± sd over {SEEDS} stage-2 seeds; `rare`: mean accuracy of the rarest 30% of classes. ",
        f"Command: `python benchmarks/lort_suite.py --out {out} <features>`.",
        "",
        "## Without validation data (defaults, last epoch)",
        "",
    ]
    keys = list(next(iter(records.values()))["without_validation"])
    lines.append("| features | K | " + " | ".join(keys) + " |")
    lines.append("|---|---|" + "---|" * len(keys))
    for name, rec in records.items():
        cells = []
        for k in keys:
            v = rec["without_validation"][k]
            a, r = 100 * np.array(v["test_acc"]), 100 * np.array(v["rare_acc"])
            cells.append(f"{a.mean():.2f} ± {a.std(ddof=1):.2f} (rare {r.mean():.1f})")
        lines.append(f"| {name} | {rec['num_classes']} | " + " | ".join(cells) + " |")
    with_val = {n: r for n, r in records.items() if "with_validation" in r}
    if with_val:
        lines += [
            "",
            "## With validation data (`lort compare`, 6 fits per method)",
            "",
            "The reference is the method validation picks; tiers and intervals are simultaneous over all 16 rows "
            "of each leaderboard (two-level paired bootstrap; see each leaderboard's statistics).",
            "",
            "| features | reference (validation's pick) | test-best (information) | LORT (default) | tier | "
            "LORT - reference [simultaneous 95% CI] | lort_reference | tier | CE | cRT |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, rec in with_val.items():
            w = rec["with_validation"]

            def acc(m, w=w):
                return 100 * float(np.mean(w[m]["test_acc"]))

            ref, best = w["lort"]["reference"], w["lort"]["test_best"]
            lo, hi = (100 * v for v in w["lort"]["diff_ci"])
            lines.append(
                f"| {name} | {ref} {acc(ref):.2f} | {best} {acc(best):.2f} | {acc('lort'):.2f} | {w['lort']['tier']} | "
                f"{100 * w['lort']['diff_to_reference']:+.2f} [{lo:+.2f}, {hi:+.2f}] | {acc('lort_reference'):.2f} | "
                f"{w['lort_reference']['tier']} | {acc('ce'):.2f} | {acc('crt'):.2f} |"
            )
        held = sum(
            r["with_validation"]["lort"]["tier"] in ("reference", "indistinguishable") for r in with_val.values()
        )
        lines += [
            "",
            f"Default LORT is the reference or indistinguishable from it on {held} of {len(with_val)} feature sets.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("features", nargs="+", help=".npz feature files")
    parser.add_argument("--out", required=True, help="folder for the suite's files")
    args = parser.parse_args()
    from lort.errors import LortError
    from lort.io import write_json, write_text

    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(args.out)
    paths = [Path(p) for p in args.features]
    for p in paths:
        if not p.is_file():
            raise LortError(f"{p}: no such feature file")
    out.mkdir(parents=True, exist_ok=True)
    done = out / "summary.json"
    records = json.loads(done.read_text()) if done.is_file() else {}
    for p in paths:
        if p.stem in records:
            continue
        print(f"{p.stem} ...", file=sys.stderr, flush=True)
        records[p.stem] = run_set(p, out)
        write_json(done, records)  # after each set: a killed run keeps what it finished
    write_text(out / "summary.md", summary_markdown(records, args.out))
    print((out / "summary.md").read_text())


if __name__ == "__main__":
    run_main(main)
