"""Why the paper's LORT recipe helps early and fades, and the alternatives measured.

    python benchmarks/lort_transient.py --out results/lort_default/transient FEATURES.npz [...]

For each feature file, 20 epochs of the shared schedule (SGD, momentum 0.9, cosine,
batch 64) from the stage-1 classifier, the **validation** balanced accuracy after every
epoch: design evidence that never reads the test split (the test splits of these sets are
the ones the leaderboards report). Rows (each at learning rates
1e-4, 5e-4, 5e-3 unless named):

- ``ce``, ``lort_reference``: CE re-training and the paper's LORT recipe (s = 0.98) on the
  plain linear classifier; for LORT also the training-set Logits Magnitude (mean over
  classes) and its coefficient of variation across classes, for the rejected stopping
  rule "stop where the per-class Logits Magnitude is most balanced";
- ``bias_only``: LORT's target with only the class offsets trained (5e-4, 5e-2, 5e-1);
- ``centred_fixed_scale``: the centred unit-norm head with its logit scale frozen;
- ``centred`` (lort's default head) and ``centred_ce`` (the same head with cross-entropy),
  at 5e-4, 5e-3, 5e-2.

Writes ``<out>.json`` (every curve) and ``<out>.md`` (start, best epoch, last epoch).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from _common import run_main

EPOCHS = 20


def offsets_head(weight: torch.Tensor, bias: torch.Tensor, groups: int):
    """Stage-1 weights frozen, class offsets trained: ``x W^T + b``."""
    from lort.stage2.heads import LinearHead

    head = LinearHead(weight, bias, groups)
    head.weight.requires_grad_(False)
    return head


def curves(fs, head, loss, lrs, with_magnitude=False) -> dict:
    from lort.analysis.metrics import grouped_balanced_accuracy, logits_magnitude
    from lort.stage2.schedule import Schedule
    from lort.stage2.trainer import fit_head

    xv, yv = (torch.as_tensor(a) for a in fs.splits["val"])
    x, y = (torch.as_tensor(a) for a in fs.splits["train"])
    k = fs.num_classes
    rec: dict[str, list] = {"acc": [], "lm_mean": [], "lm_cv": []}

    def score(h):
        with torch.no_grad():
            rec["acc"].append(grouped_balanced_accuracy(h(xv).argmax(2), yv, k).tolist())
            if with_magnitude:
                z = h(x)
                lm = [logits_magnitude(z[g].numpy(), y.numpy(), k) for g in range(len(lrs))]
                rec["lm_mean"].append([float(m.mean()) for m in lm])
                rec["lm_cv"].append([float(m.std() / m.mean()) for m in lm])
        return torch.zeros(len(lrs))

    score(head)  # epoch 0: the starting classifier
    fit_head(head, x, y, loss, Schedule(epochs=EPOCHS), score_fn=score, lr=lrs, num_classes=k)
    return {"lrs": lrs} | {key: np.asarray(v).T.tolist() for key, v in rec.items() if v}


def run_set(path: Path) -> dict:
    from lort.data.features import load_features
    from lort.stage2 import losses as L
    from lort.stage2.context import context
    from lort.stage2.heads import CentredHead, LinearHead
    from lort.stage2.schedule import Schedule
    from lort.testing import oracles as O

    fs = load_features(path)
    ctx = context(fs, Schedule())
    k = fs.num_classes
    w, b = ctx.init_weight, ctx.init_bias

    def lort(g):
        target_s = torch.full((g,), 0.98)
        return lambda z, labels, e: O.grouped_soft_cross_entropy(z, L.grouped_lort_target(labels, k, target_s))

    def ce(z, labels, e):
        return O.grouped_cross_entropy(z, labels)

    gentle, fast = [1e-4, 5e-4, 5e-3], [5e-4, 5e-3, 5e-2]
    fixed = CentredHead.from_classifier(w, ctx.x, 3)
    fixed.log_scale.requires_grad_(False)
    return {
        "ce": curves(fs, LinearHead(w, b, 3), ce, gentle),
        "lort_reference": curves(fs, LinearHead(w, b, 3), lort(3), gentle, with_magnitude=True),
        "bias_only": curves(fs, offsets_head(w, b, 3), lort(3), [5e-4, 5e-2, 5e-1]),
        "centred_fixed_scale": curves(fs, fixed, lort(3), fast),
        "centred": curves(fs, CentredHead.from_classifier(w, ctx.x, 3), lort(3), fast),
        "centred_ce": curves(fs, CentredHead.from_classifier(w, ctx.x, 3), ce, fast),
    }


def markdown(records: dict) -> str:
    lines = [
        "# LORT over 20 epochs: the paper's recipe, the alternatives, lort's default head",
        "",
        "Validation balanced accuracy %: `start` (epoch 0, the starting classifier) / `best@epoch` / `last` "
        "(epoch 20). The test split is not read. "
        "Command: `python benchmarks/lort_transient.py --out results/lort_default/transient <features>`.",
        "",
        "| features | row | lr | start | best@epoch | last | LM-balance stop (epoch: acc) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rec in records.items():
        for row, c in rec.items():
            for g, lr in enumerate(c["lrs"]):
                acc = 100 * np.asarray(c["acc"][g])
                stop = ""
                if "lm_cv" in c:
                    e = int(np.argmin(c["lm_cv"][g]))
                    stop = f"{e}: {acc[e]:.1f}"
                lines.append(
                    f"| {name} | {row} | {lr:g} | {acc[0]:.1f} | {acc.max():.1f}@{int(acc.argmax())} | {acc[-1]:.1f} | {stop} |"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("features", nargs="+")
    parser.add_argument("--out", required=True, help="path prefix for .json and .md")
    args = parser.parse_args()
    from lort.errors import LortError
    from lort.io import write_json, write_text

    paths = [Path(p) for p in args.features]
    for p in paths:
        if not p.is_file():
            raise LortError(f"{p}: no such feature file")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = {p.stem: run_set(p) for p in paths}
    write_json(out.with_suffix(".json"), records)
    write_text(out.with_suffix(".md"), markdown(records))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    run_main(main)
