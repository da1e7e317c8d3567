"""Where should LORT's centred head take its class directions when the features come
without a classifier? Candidates compared on each feature set with its classifier removed.

    python benchmarks/lort_init_study.py --out results/lort_default/init FEATURES.npz [...]

Candidates: the plain cross-entropy classifier fitted from zero that every warm-starting
method gets (lort's rule before this study), the class means about the mean feature, and
the shared-covariance discriminant directions of
:func:`lort.stage2.heads.discriminant_directions` at shrinkages 0.01, 0.1 and 1. For each:
the centred head untrained, and trained as the default LORT without validation data (its
defaults, the last epoch). The validation split of each set scores them (balanced
accuracy) and decides the rule: the candidate with the highest mean validation balanced
accuracy of the trained head over the sets. Test accuracy and the accuracy of the rarest
30% of classes are reported beside it, with CE re-training and cRT from the same
classifier-less features. Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from _common import run_main
from lort_suite import rare_classes, scores, without_validation

SHRINKS = (0.01, 0.1, 1.0)
EQUAL = False  # --estimates: pooled against equal-prior estimates at the default shrinkage only


def balanced_accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    from lort.analysis.metrics import per_class_accuracy

    return float(np.nanmean(per_class_accuracy(logits.argmax(1), y, logits.shape[1])))


def study_set(path: Path) -> dict:
    from lort.data.features import FeatureSet, load_features
    from lort.stage2.compare import fit_method
    from lort.stage2.context import context
    from lort.stage2.heads import DISCRIMINANT_SHRINK, CentredHead, discriminant_directions, logits_of
    from lort.stage2.methods import METHODS
    from lort.stage2.schedule import Schedule

    full = load_features(path)
    bare = without_validation(full)
    bare = FeatureSet(bare.splits, bare.classes, None, None, dict(bare.meta))  # no classifier
    rare = rare_classes(bare.train_counts)
    xv, yv = full.splits["val"]
    xt, yt = full.splits["test"]
    schedule = Schedule()
    ctx = context(bare, schedule)
    x = ctx.x
    means = torch.stack([x[ctx.y == c].mean(0) for c in range(bare.num_classes)]) - x.mean(0)
    candidates = {"CE fit from zero": ctx.init_weight, "class means": means}
    for shrink in SHRINKS:
        candidates[f"discriminant, shrink {shrink:g}"] = discriminant_directions(x, ctx.y, bare.num_classes, shrink)
    if EQUAL:
        candidates = {k: v for k, v in candidates.items() if k == f"discriminant, shrink {DISCRIMINANT_SHRINK:g}"}
        candidates[f"discriminant, shrink {DISCRIMINANT_SHRINK:g}, equal-prior estimates"] = discriminant_directions(
            x, ctx.y, bare.num_classes, DISCRIMINANT_SHRINK, estimates="equal"
        )
    out = {}
    for name, weight in candidates.items():
        untrained = CentredHead.from_classifier(weight, x)
        ctx.__dict__["class_directions"] = weight  # what the default LORT's head starts from
        trained = fit_method(METHODS["lort"], bare, schedule, ctx=ctx).head
        for label, head in (("untrained", untrained), ("LORT", trained)):
            acc, rare_acc = scores(logits_of(head, xt), yt, rare)
            out[f"{name}: {label}"] = {
                "val_bal_acc": balanced_accuracy(logits_of(head, xv), yv),
                "test_acc": acc,
                "rare_acc": rare_acc,
            }
    for m in ("ce", "crt"):
        acc, rare_acc = scores(logits_of(fit_method(METHODS[m], bare, schedule).head, xt), yt, rare)
        out[m] = {"val_bal_acc": None, "test_acc": acc, "rare_acc": rare_acc}
    print(f"{path.stem} done", file=sys.stderr, flush=True)
    return out


def markdown(records: dict, chosen: str) -> str:
    names = list(next(iter(records.values())))
    lines = [
        "# LORT's class directions when the features come without a classifier",
        "",
        "Each feature set with its classifier removed; the default LORT without validation data (defaults, last",
        "epoch, stage-2 seed 0). Cells: validation balanced accuracy / test accuracy (rarest 30% of classes), in %.",
        "Command: `python benchmarks/lort_init_study.py "
        + ("--estimates --out results/lort_default/init_estimates" if EQUAL else "--out results/lort_default/init")
        + " <features>`.",
        "",
        "| candidate | " + " | ".join(records) + " | mean validation |",
        "|---|" + "---|" * (len(records) + 1),
    ]
    for n in names:
        cells = []
        for rec in records.values():
            v = rec[n]
            val = "-" if v["val_bal_acc"] is None else f"{100 * v['val_bal_acc']:.2f}"
            cells.append(f"{val} / {100 * v['test_acc']:.2f} ({100 * v['rare_acc']:.1f})")
        vals = [rec[n]["val_bal_acc"] for rec in records.values()]
        mean = "-" if None in vals else f"{100 * float(np.mean(vals)):.2f}"
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {mean} |")
    lines += ["", f"Highest mean validation balanced accuracy of the trained head: **{chosen}**."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("features", nargs="+", help=".npz feature files with a validation split")
    ap.add_argument("--out", required=True, help="path prefix of the .json and .md written")
    ap.add_argument(
        "--estimates", action="store_true", help="compare the pooled and the equal-prior estimates of the discriminant"
    )
    args = ap.parse_args()
    global EQUAL
    EQUAL = args.estimates
    from lort.io import write_json, write_text

    records = {Path(p).stem: study_set(Path(p)) for p in args.features}
    trained = [n for n in next(iter(records.values())) if n.endswith(": LORT")]
    chosen = max(trained, key=lambda n: np.mean([rec[n]["val_bal_acc"] for rec in records.values()]))
    out = Path(args.out)
    write_json(out.with_suffix(".json"), {"records": records, "chosen": chosen})
    write_text(out.with_suffix(".md"), markdown(records, chosen))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    run_main(main)
