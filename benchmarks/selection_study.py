"""Which validation criterion chooses a method's setting and epoch best? Test regret of
each candidate criterion over feature sets, seeds and methods.

    python benchmarks/selection_study.py --out results/lort_default/selection FEATURES.npz [...]

For every feature set with a validation split, every stage-2 seed (``--seeds``, 3) and
every method that trains, the study fits ``lort compare``'s planned settings (its default
budget of fits per method and learning rates) and records after each epoch, for each
setting: the validation balanced accuracy, the validation class-balanced log-loss (the
mean over classes of the mean negative log-likelihood of their images) and the test
accuracy. Each criterion then picks one (setting, epoch) per method from the validation
figures alone; its regret is the best test accuracy among the candidates minus the test
accuracy of its pick. Test data only scores the picks: nothing is chosen on it.

Criteria:

- ``bal_acc``: the highest validation balanced accuracy, the first setting and epoch on
  ties (lort compare's criterion before this study);
- ``bal_acc, last epoch on ties``;
- ``bal_acc, log-loss on ties``: among the ties, the lowest balanced log-loss;
- ``log-loss``: the lowest balanced log-loss;
- ``bal_acc smoothed``: balanced accuracy averaged over the epoch and its neighbours, the
  log-loss on ties.

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


def logits_in_chunks(head, x: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    return torch.cat([head(x[i : i + rows]) for i in range(0, len(x), rows)], dim=1)


def record_set(path: Path, seeds: int) -> list[dict]:
    from lort.data.features import load_features
    from lort.stage2 import context, engine, plan, selection
    from lort.stage2.methods import METHODS
    from lort.stage2.schedule import DEFAULT_FITS_PER_METHOD, DEFAULT_LRS, Schedule

    fs = load_features(path)
    k = fs.num_classes
    xv, yv = (torch.as_tensor(a) for a in fs.splits["val"])
    xt, yt = (torch.as_tensor(a) for a in fs.splits["test"])
    methods = [m for m in METHODS.values() if m.trains]
    rows = []
    for seed in range(seeds):
        schedule = dataclasses.replace(Schedule(), seed=seed)
        ctx = context.context(fs, schedule, seed)
        records: dict[int, list[np.ndarray]] = {}

        def score_fn(head, records=records):
            with torch.no_grad():
                scores = selection.head_validation_scores(head, xv, yv, k)  # balanced accuracy, -log-loss
                test = (logits_in_chunks(head, xt).argmax(2) == yt).double().mean(1)
            bal, nll = scores[:, 0], -scores[:, 1]
            records.setdefault(id(head), []).append(torch.stack([bal, nll, test.to(bal.dtype)]).numpy())
            return bal

        jobs = [plan.plan_job(m, schedule, DEFAULT_LRS, None, True, DEFAULT_FITS_PER_METHOD) for m in methods]
        trained = engine.train_jobs(jobs, ctx, schedule, score_fn)
        for job in jobs:
            cells = trained[id(job)]
            # (settings, epochs) arrays of each figure
            figs = np.stack([np.asarray(records[id(head)])[:, :, g] for head, g, _ in cells])  # (S, E, 3)
            rows.append(
                {
                    "features": path.stem,
                    "seed": seed,
                    "method": job.method.name,
                    "settings": [dict(s) for s in job.settings],
                    "val_bal_acc": figs[:, :, 0].round(6).tolist(),
                    "val_nll": figs[:, :, 1].round(6).tolist(),
                    "test_acc": figs[:, :, 2].round(6).tolist(),
                }
            )
        print(f"{path.stem} seed {seed}: {len(jobs)} methods", file=sys.stderr, flush=True)
    return rows


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
    raise ValueError(criterion)


CRITERIA = ("bal_acc", "bal_acc, last epoch on ties", "bal_acc, log-loss on ties", "log-loss", "bal_acc smoothed")


def regrets(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        bal, nll, test = (np.asarray(r[k]) for k in ("val_bal_acc", "val_nll", "test_acc"))
        for c in CRITERIA:
            se = pick(c, bal, nll)
            out.append(
                {
                    "features": r["features"],
                    "seed": r["seed"],
                    "method": r["method"],
                    "criterion": c,
                    "test_acc": float(test[se]),
                    "regret": float(test.max() - test[se]),
                }
            )
    return out


def markdown(table: list[dict], sets: list[str]) -> str:
    def mean(c, **where):
        v = [t["regret"] for t in table if t["criterion"] == c and all(t[k] == w for k, w in where.items())]
        return 100 * float(np.mean(v)) if v else float("nan")

    def lort_acc(c, name):
        v = [t["test_acc"] for t in table if t["criterion"] == c and t["method"] == "lort" and t["features"] == name]
        return 100 * float(np.mean(v))

    header = ["| features | " + " | ".join(CRITERIA) + " |", "|---|" + "---|" * len(CRITERIA)]
    lines = [
        "# Selection on a small validation split: test regret of each criterion",
        "",
        "Regret: the best test accuracy among a method's fitted (setting, epoch) candidates minus the test",
        "accuracy of the criterion's pick, in points, averaged over seeds and methods that train. Command:",
        "`python benchmarks/selection_study.py --out results/lort_default/selection <features>`.",
        "",
        *header,
    ]
    for name in sets:
        lines.append(f"| {name} | " + " | ".join(f"{mean(c, features=name):.2f}" for c in CRITERIA) + " |")
    lines.append("| **all sets** | " + " | ".join(f"**{mean(c):.2f}**" for c in CRITERIA) + " |")
    lines += [
        "",
        "The default LORT alone: regret (test accuracy of the pick) per feature set.",
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
