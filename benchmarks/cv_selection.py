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


def run_set(path: Path, folds: int, seeds: int) -> dict:
    from lort.data.features import FeatureSet, load_features
    from lort.estimator import RetrainingClassifierCV
    from lort.stage2.compare import evaluate_test, fit_method
    from lort.stage2.methods import METHODS
    from lort.stage2.schedule import Schedule

    fs = load_features(path)
    x, y = fs.splits["train"]
    xv, yv = fs.splits["val"]
    xt, yt = fs.splits["test"]
    bare = FeatureSet({k: v for k, v in fs.splits.items() if k != "val"}, fs.classes, fs.init_weight, fs.init_bias)
    out: dict = {"defaults": {}, "validation": [], "cv": []}
    for seed in range(seeds):
        for name, m in METHODS.items():
            r = fit_method(m, bare, Schedule(seed=seed))
            evaluate_test(r, bare)
            out["defaults"].setdefault(name, []).append(r.test["acc"])
        for key, val in (("validation", {"X_val": xv, "y_val": yv}), ("cv", {})):
            t0 = time.perf_counter()
            est = RetrainingClassifierCV(cv=folds, init_coef=fs.init_weight, init_intercept=fs.init_bias,
                                         random_state=seed).fit(x, y, **val)  # fmt: skip
            out[key].append(
                {
                    "seed": seed,
                    "method": est.best_method_,
                    "params": est.best_params_,
                    "test_acc": float(np.mean(est.predict(xt) == yt)),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
        print(f"{path.stem} seed {seed}: validation {out['validation'][-1]}, cv {out['cv'][-1]}", flush=True)
    return out


def markdown(records: dict, command: str, cpu: str = "") -> str:
    lines = [
        "# Selection without a validation split",
        "",
        f"Command: `{command}`. Machine: {cpu}. Stage 2 in fp32. Test accuracy %, mean over stage-2 seeds; "
        "the method each selection picked per seed.",
        "",
        "| features | best default (method) | default LORT | auto on the validation split | picks | "
        "auto by CV on the training split | picks | time: validation / CV (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rec in records.items():
        d = {m: 100 * float(np.mean(v)) for m, v in rec["defaults"].items()}
        best = max(d, key=d.get)
        val = [r["test_acc"] for r in rec["validation"]]
        cv = [r["test_acc"] for r in rec["cv"]]
        tv = np.mean([r["seconds"] for r in rec["validation"]])
        tc = np.mean([r["seconds"] for r in rec["cv"]])
        lines.append(
            f"| {name} | {d[best]:.2f} ({best}) | {d['lort']:.2f} | {100 * np.mean(val):.2f} | "
            f"{', '.join(r['method'] for r in rec['validation'])} | {100 * np.mean(cv):.2f} | "
            f"{', '.join(r['method'] for r in rec['cv'])} | {tv:.0f} / {tc:.0f} |"
        )
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
    records = {Path(p).stem: run_set(Path(p), args.folds, args.seeds) for p in args.features}
    command = "python benchmarks/cv_selection.py " + " ".join(sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), {"command": command, "cpu": cpu, "records": records})
    write_text(out.with_suffix(".md"), markdown(records, command, cpu))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    run_main(main)
