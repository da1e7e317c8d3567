"""Which validation criterion chooses a method's setting and epoch best? The regret of
each candidate criterion over feature sets, seeds and methods, measured on held-out
validation images: the test split is never read.

    python benchmarks/selection_study.py --out results/lort_default/selection FEATURES.npz [...]

For every feature set with a validation split, every stage-2 seed (``--seeds``, 3) and
every method that trains, the study fits ``lort compare``'s planned settings (its default
budget of fits per method and learning rates) and records after each epoch, for each
setting, on each half of the validation split (the images of every class dealt
alternately into halves A and B): the balanced accuracy and the class-balanced log-loss
(the mean over classes of the mean negative log-likelihood of their images). Each
criterion picks one (setting, epoch) per method from half A's figures; its regret is the
best balanced accuracy on half B among the candidates minus half B's balanced accuracy of
its pick; then the halves swap roles and the two regrets are averaged. Nothing here
reads the test split, so the evidence is free of the splits the leaderboards report.

Criteria:

- ``bal_acc``: the highest validation balanced accuracy, the first setting and epoch on
  ties (lort compare's criterion before this study);
- ``bal_acc, last epoch on ties``;
- ``bal_acc, log-loss on ties``: among the ties, the lowest balanced log-loss;
- ``log-loss``: the lowest balanced log-loss;
- ``bal_acc smoothed``: balanced accuracy averaged over the epoch and its neighbours, the
  log-loss on ties;
- ``lort's rule``: :mod:`lort.stage2.selection` as ``lort compare`` applies it (each
  setting's epoch, then the setting; log-losses within the rule's tolerance are ties,
  which go to the earlier epoch or setting).

Writes ``<out>.json`` (every record) and ``<out>.md`` (mean regret per criterion, over all
methods and for the default LORT, per feature set and overall).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch
from _common import run_main


def record_set(path: Path, seeds: int) -> list[dict]:
    from lort.data.features import load_features
    from lort.stage2 import context, engine, plan, selection
    from lort.stage2.methods import METHODS
    from lort.stage2.schedule import DEFAULT_FITS_PER_METHOD, DEFAULT_LRS, Schedule

    fs = load_features(path)
    k = fs.num_classes
    xv, yv = (torch.as_tensor(a) for a in fs.splits["val"])
    halves = validation_halves(yv.numpy())
    parts = [(xv[h], yv[h]) for h in halves]
    methods = [m for m in METHODS.values() if m.trains]
    rows = []
    for seed in range(seeds):
        schedule = dataclasses.replace(Schedule(), seed=seed)
        ctx = context.context(fs, schedule, seed)
        records: dict[int, list[np.ndarray]] = {}

        def score_fn(head, records=records):
            with torch.no_grad():
                figs = []
                for x_h, y_h in parts:
                    s = selection.head_validation_scores(head, x_h, y_h, k)  # balanced accuracy, -log-loss
                    figs += [s[:, 0], -s[:, 1]]
                whole = selection.head_validation_scores(head, xv, yv, k)
            records.setdefault(id(head), []).append(torch.stack(figs).numpy())
            return whole

        jobs = [plan.plan_job(m, schedule, DEFAULT_LRS, None, True, DEFAULT_FITS_PER_METHOD) for m in methods]
        trained = engine.train_jobs(jobs, ctx, schedule, score_fn)
        for job in jobs:
            cells = trained[id(job)]
            # (settings, epochs) arrays of each figure
            figs = np.stack([np.asarray(records[id(head)])[:, :, g] for head, g, _ in cells])  # (S, E, 4)
            rows.append(
                {
                    "features": path.stem,
                    "seed": seed,
                    "method": job.method.name,
                    "settings": [dict(s) for s in job.settings],
                    "bal_a": figs[:, :, 0].round(6).tolist(),
                    "nll_a": figs[:, :, 1].round(6).tolist(),
                    "bal_b": figs[:, :, 2].round(6).tolist(),
                    "nll_b": figs[:, :, 3].round(6).tolist(),
                }
            )
        print(f"{path.stem} seed {seed}: {len(jobs)} methods", file=sys.stderr, flush=True)
    return rows


def validation_halves(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The validation images of every class dealt alternately into two halves."""
    a, b = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        a += members[0::2].tolist()
        b += members[1::2].tolist()
    return np.array(sorted(a)), np.array(sorted(b))


def pick(criterion: str, bal: np.ndarray, nll: np.ndarray) -> tuple[int, int]:
    """(setting, epoch) chosen by ``criterion`` from ``(S, E)`` validation figures."""
    s_count, e_count = bal.shape
    order = [(s, e) for s in range(s_count) for e in range(e_count)]  # the first setting, then epoch
    if criterion == "bal_acc":
        return max(order, key=lambda se: (bal[se], -order.index(se)))
    if criterion == "bal_acc, last epoch on ties":
        return max(order, key=lambda se: (bal[se], -se[0], se[1]))
    if criterion == "bal_acc, log-loss on ties":
        return max(order, key=lambda se: (bal[se], -nll[se]))
    if criterion == "log-loss":
        return min(order, key=lambda se: nll[se])
    if criterion == "bal_acc smoothed":
        padded = np.pad(bal, ((0, 0), (1, 1)), mode="edge")
        smooth = (padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]) / 3
        return max(order, key=lambda se: (round(float(smooth[se]), 9), -nll[se]))
    if criterion == "lort's rule":
        from lort.stage2.selection import best_index

        rows = np.stack([bal, -nll], axis=-1)  # (S, E, 2)
        epochs = [best_index(rows[s]) for s in range(s_count)]
        s = best_index(np.stack([rows[s, e] for s, e in enumerate(epochs)]))
        return s, epochs[s]
    raise ValueError(criterion)


CRITERIA = (
    "bal_acc",
    "bal_acc, last epoch on ties",
    "bal_acc, log-loss on ties",
    "log-loss",
    "bal_acc smoothed",
    "lort's rule",
)


def regrets(rows: list[dict]) -> list[dict]:
    """Per record and criterion: pick on one validation half, score on the other, both ways."""
    out = []
    for r in rows:
        a = (np.asarray(r["bal_a"]), np.asarray(r["nll_a"]))
        b = (np.asarray(r["bal_b"]), np.asarray(r["nll_b"]))
        for c in CRITERIA:
            held, regret = [], []
            for (bal, nll), (other, _) in ((a, b), (b, a)):
                se = pick(c, bal, nll)
                held.append(float(other[se]))
                regret.append(float(other.max() - other[se]))
            out.append(
                {
                    "features": r["features"],
                    "seed": r["seed"],
                    "method": r["method"],
                    "criterion": c,
                    "held_out_bal_acc": float(np.mean(held)),
                    "regret": float(np.mean(regret)),
                }
            )
    return out


def markdown(table: list[dict], sets: list[str]) -> str:
    def mean(c, **where):
        v = [t["regret"] for t in table if t["criterion"] == c and all(t[k] == w for k, w in where.items())]
        return 100 * float(np.mean(v)) if v else float("nan")

    def lort_acc(c, name):
        v = [
            t["held_out_bal_acc"]
            for t in table
            if t["criterion"] == c and t["method"] == "lort" and t["features"] == name
        ]
        return 100 * float(np.mean(v))

    header = ["| features | " + " | ".join(CRITERIA) + " |", "|---|" + "---|" * len(CRITERIA)]
    lines = [
        "# Selection on a small validation split: held-out regret of each criterion",
        "",
        "Regret: each criterion picks a method's (setting, epoch) on one half of the validation split; the best",
        "balanced accuracy on the other half among the candidates minus the other half's balanced accuracy of the",
        "pick, in points, both ways round, averaged over seeds and methods that train. The test split is not read.",
        "Command:",
        "`python benchmarks/selection_study.py --seeds 2 --out results/lort_default/selection <features>`.",
        "",
        *header,
    ]
    for name in sets:
        lines.append(f"| {name} | " + " | ".join(f"{mean(c, features=name):.2f}" for c in CRITERIA) + " |")
    lines.append("| **all sets** | " + " | ".join(f"**{mean(c):.2f}**" for c in CRITERIA) + " |")
    lines += [
        "",
        "The default LORT alone: regret (held-out balanced accuracy of the pick) per feature set.",
        "",
        *header,
    ]
    for name in sets:
        cells = [f"{mean(c, features=name, method='lort'):.2f} ({lort_acc(c, name):.2f})" for c in CRITERIA]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| **all sets** | " + " | ".join(f"**{mean(c, method='lort'):.2f}**" for c in CRITERIA) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("features", nargs="+", help=".npz feature files with a validation split")
    ap.add_argument("--out", required=True, help="path prefix of the .json and .md written")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    import json

    from lort.errors import LortError
    from lort.io import write_json, write_text
    from lort.stage2 import engine

    # Every pass in this process: the recording score function must see each epoch.
    engine.concurrent_passes = lambda *a, **kw: 1
    out = Path(args.out)
    done = out.with_suffix(".json")
    rows = json.loads(done.read_text())["records"] if done.is_file() else []
    have = {r["features"] for r in rows}
    for p in map(Path, args.features):
        if not p.is_file():
            raise LortError(f"{p}: no such feature file")
        if p.stem in have:
            continue
        rows += record_set(p, args.seeds)
        write_json(done, {"records": rows})  # after each set: a killed run keeps what it finished
    table = regrets(rows)
    sets = list(dict.fromkeys(r["features"] for r in rows))
    write_json(done, {"records": rows, "regrets": table})
    write_text(out.with_suffix(".md"), markdown(table, sets))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    run_main(main)
