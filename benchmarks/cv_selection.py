"""Selection without a validation split: how close does cross-validation on the training
split come to selection on a real validation split, and to each method's defaults?

    python benchmarks/cv_selection.py --out results/crossval/cv_selection --folds 5 --seeds 3 FEATURES.npz [...]

For every feature file (its validation split removed for (a) and (c)), and every stage-2
seed: (a) every method at its defaults (no search, the last epoch), (b) ``method="auto"``
chosen on the real validation split, (c) ``method="auto"`` chosen by ``--folds``-fold
stratified cross-validation on the training split alone (:class:`RetrainingClassifierCV`).
Test accuracy of each, the method each selection picked, and the wall time of (b) and (c)
(the cost of k folds against one fit). Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import run_main

RULES = {"best": None, "one_se_lort": "lort"}  # crossval.choose_method's prefer= for each rule compared


def _correct(head, x, y) -> np.ndarray:
    from lort.stage2.heads import logits_of

    return logits_of(head, x).argmax(1) == np.asarray(y)


def _balanced(correct: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean([correct[y == c].mean() for c in np.unique(y)]))


def run_set(path: Path, folds: int, seeds: int) -> dict:
    from lort.analysis.uncertainty import Records, compare_to_reference
    from lort.data.features import FeatureSet, load_features
    from lort.estimator import RetrainingClassifierCV
    from lort.stage2.compare import evaluate_test, fit_method
    from lort.stage2.crossval import choose_method, cross_validate, refit, stratified_folds
    from lort.stage2.methods import METHODS
    from lort.stage2.schedule import DEFAULT_LRS, Schedule
    from lort.stage2.selection import better

    fs = load_features(path)
    x, y = fs.splits["train"]
    xv, yv = (np.asarray(a) for a in fs.splits["val"])
    xt, yt = (np.asarray(a) for a in fs.splits["test"])
    bare = FeatureSet({k: v for k, v in fs.splits.items() if k != "val"}, fs.classes, fs.init_weight, fs.init_bias)
    out: dict = {"defaults": {}, "defaults_val": {}, "validation": [], "cv": []}
    right: dict[str, list[np.ndarray]] = {}  # per entry, per seed: which test images it got right
    for seed in range(seeds):
        for name, m in METHODS.items():
            r = fit_method(m, bare, Schedule(seed=seed))
            evaluate_test(r, bare)
            out["defaults"].setdefault(name, []).append(r.test["acc"])
            out["defaults_val"].setdefault(name, []).append(_balanced(_correct(r.head, xv, yv), yv))
            right.setdefault(f"default {name}", []).append(r.correct[0])
        t0 = time.perf_counter()
        est = RetrainingClassifierCV(init_coef=fs.init_weight, init_intercept=fs.init_bias, random_state=seed)
        est.fit(x, y, X_val=xv, y_val=yv)
        pred = est.predict(xt)
        right.setdefault("auto, validation", []).append(pred == yt)
        out["validation"].append({"seed": seed, "method": est.best_method_, "params": est.best_params_,
                                  "test_acc": float(np.mean(pred == yt)),
                                  "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
        # cross-validation as RetrainingClassifierCV(cv=folds, random_state=seed) runs it, every
        # method refitted at its own choice so that each rule's pick can be scored
        t0 = time.perf_counter()
        schedule, lrs = Schedule.searching(DEFAULT_LRS, seed=seed)
        fold_of = stratified_folds(np.asarray(y), folds, seed)
        runs = [cross_validate(m, bare, schedule, lrs if m.trains else None, None, fold_of, None)
                for m in METHODS.values()]  # fmt: skip
        cv_seconds = time.perf_counter() - t0
        per_method, correct = {}, {}
        for m, run in zip(METHODS.values(), runs, strict=True):
            head, _ = refit(m, bare, schedule, dict(run.settings[run.best]), run.epoch)
            correct[m.name] = _correct(head, xt, yt)
            per_method[m.name] = {
                "params": dict(run.settings[run.best]) | {"epoch": run.epoch},
                "cv_folds": [float(a) for a in run.fold_accuracies],
                "cv_mean": float(np.nanmean(run.fold_accuracies)),
                "val_acc": _balanced(_correct(head, xv, yv), yv),
                "test_acc": float(correct[m.name].mean()),
            }
        picks = {}
        for rule, prefer in RULES.items():
            name = runs[choose_method(runs, prefer)].method
            picks[rule] = name
            right.setdefault(f"auto, CV ({rule})", []).append(correct[name])
        out["cv"].append({"seed": seed, "picks": picks, "methods": per_method, "seconds": round(cv_seconds, 1)})
        print(f"{path.stem} seed {seed}: validation picks {est.best_method_}; CV picks {picks}", flush=True)
    d = {m: float(np.mean(v)) for m, v in out["defaults"].items()}
    best = max(d, key=d.get)
    entries = {"best default": right[f"default {best}"], "default lort": right["default lort"]}
    entries |= {k: v for k, v in right.items() if k.startswith("auto")}
    records = {k: Records(np.zeros((seeds, 1, 0)), np.zeros((seeds, 1, 0)), np.stack(v)[:, None, :],
                          np.zeros(seeds, dtype=np.int64)) for k, v in entries.items()}  # fmt: skip
    out["verdicts"] = {}
    for ref in ("best default", "default lort"):
        v = compare_to_reference(records, np.zeros(0, dtype=np.int64), yt, better, reference=ref)
        out["verdicts"][ref] = {k: vars(x) for k, x in v.differences.items()}
        out["verdicts_procedure"] = v.describe()
    out["best_default"] = best
    return out


def _tier(rec: dict, ref: str, entry: str) -> str:
    v = rec["verdicts"][ref][entry]
    return f"{100 * v['diff']:+.2f} [{100 * v['low']:+.2f}, {100 * v['high']:+.2f}] {v['tier'].replace('the reference', 'it')}"


def markdown(records: dict, command: str, cpu: str = "") -> str:
    first = next(iter(records.values()))
    lines = [
        "# Selection without a validation split",
        "",
        f"Command: `{command}`. Machine: {cpu}. Stage 2 in fp32. Test accuracy %, mean over stage-2 seeds "
        "(each seed its own folds); the method each selection picked per seed. Selection by CV: the "
        "`best` rule takes the best fold-mean balanced accuracy; `one_se_lort` keeps LORT unless the "
        "best beats it by more than one standard error of the paired fold difference.",
        "",
        "| features | best default (method) | default LORT | auto on the validation split | picks | "
        + " | ".join(f"auto by CV, {r} | picks" for r in RULES)
        + " | time: validation / CV (s) |",
        "|---|---|---|---|---|" + "---|---|" * len(RULES) + "---|",
    ]
    for name, rec in records.items():
        d = {m: 100 * float(np.mean(v)) for m, v in rec["defaults"].items()}
        best = rec["best_default"]
        val = [r["test_acc"] for r in rec["validation"]]
        cells = []
        for rule in RULES:
            accs = [c["methods"][c["picks"][rule]]["test_acc"] for c in rec["cv"]]
            cells += [f"{100 * np.mean(accs):.2f}", ", ".join(c["picks"][rule] for c in rec["cv"])]
        tv = np.mean([r["seconds"] for r in rec["validation"]])
        tc = np.mean([r["seconds"] for r in rec["cv"]])
        lines.append(
            f"| {name} | {d[best]:.2f} ({best}) | {d['lort']:.2f} | {100 * np.mean(val):.2f} | "
            f"{', '.join(r['method'] for r in rec['validation'])} | {' | '.join(cells)} | {tv:.0f} / {tc:.0f} |"
        )
    lines += ["", "Differences in test accuracy (points) with simultaneous 95% intervals. "
              + first["verdicts_procedure"], ""]  # fmt: skip
    entries = [e for e in first["verdicts"]["best default"] if e.startswith("auto")]
    for ref in ("best default", "default lort"):
        lines += ["| features | " + " | ".join(f"{e} vs {ref}" for e in entries) + " |",
                  "|---|" + "---|" * len(entries)]  # fmt: skip
        for name, rec in records.items():
            lines.append(f"| {name} | " + " | ".join(_tier(rec, ref, e) for e in entries) + " |")
        lines.append("")
    lines += ["Design evidence (validation balanced accuracy %, the split no CV selection saw; 20 images a class):", "",
              "| features | default LORT | " + " | ".join(f"CV pick, {r}" for r in RULES) + " | CV-tuned LORT |",
              "|---|---|" + "---|" * len(RULES) + "---|"]  # fmt: skip
    for name, rec in records.items():
        cells = [f"{100 * np.mean(rec['defaults_val']['lort']):.1f}"]
        for rule in RULES:
            cells.append(f"{100 * np.mean([c['methods'][c['picks'][rule]]['val_acc'] for c in rec['cv']]):.1f}")
        cells.append(f"{100 * np.mean([c['methods']['lort']['val_acc'] for c in rec['cv']]):.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("features", nargs="+")
    ap.add_argument("--out", required=True, help="path prefix of the .json and .md written")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    import sys

    from lort.io import write_json, write_text
    from lort.runtime.precision import cpu_capability

    cpu = cpu_capability().describe()
    command = "python benchmarks/cv_selection.py " + " ".join(sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = {}
    for p in args.features:  # the files are rewritten after every set: a long run shows its sets as they finish
        records[Path(p).stem] = run_set(Path(p), args.folds, args.seeds)
        write_json(out.with_suffix(".json"), {"command": command, "cpu": cpu, "records": records})
        write_text(out.with_suffix(".md"), markdown(records, command, cpu))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    run_main(main)
