"""Stage-1 recipes side by side: what each recipe gives alone and after the stage-2 comparison.

    python benchmarks/stage1_recipes.py --out results/stage1_recipes/cifar10_lt_ir100 \\
        "seeds' recipe=results/cifar10_lt_ir100_e200,results/suite/cifar10_lt_ir100_e200/compare" \\
        "field CE=results/cifar10_lt_ir100_ce_e200" ...

Each argument is ``LABEL=RUN[,COMPARE]``: a ``lort run`` folder (its ``config.yaml`` and
``stage1/summary.json``) and the folder of the leaderboard to read (default ``RUN/compare``).
Nothing is trained or chosen here: the figures are read from the runs, where every choice
(the stage-1 checkpoint, each method's setting and epoch, the reference) was made on
validation. Writes ``<out>.md`` and ``<out>.json``:

- one row per recipe: the stage-1 keys that differ from the first recipe, stage 1's
  validation and test accuracy, the method validation picks (the reference) and its test
  accuracy, the default LORT with its tier and simultaneous interval against the reference,
  CE re-training, and the highest test accuracy (for information: no user can pick on test);
- one row per stage-2 method: its test accuracy on each recipe (mean over stage-2 seeds) and
  its tier there, so that a reader sees which methods gain or lose on a stronger stage 1;
- the published figures for the same task, with their sources, beside them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml
from _common import finished_stage1, read_run_json, run_main

from lort.config import config_differences, load_config
from lort.errors import LortError
from lort.io import write_json, write_text

# ResNet-32, CIFAR-10-LT IR 100, the official (lossless) data, 200 epochs: test accuracy %
PUBLISHED_IR100 = (
    ("plain cross-entropy", 70.36, "Cao et al., LDAM-DRW, NeurIPS 2019, Table 2"),
    ("LDAM-DRW", 77.03, "Cao et al., LDAM-DRW, NeurIPS 2019, Table 2"),
    ("MiSLAS (mixup stage 1 + label-aware smoothing)", 82.5, "dvlab-research/MiSLAS, README"),
    ("SADE", 83.8, "Zhang et al., NeurIPS 2022"),
    ("NCL", 84.7, "Li et al., CVPR 2022"),
)
# keys that say how a run was computed, not what it computed
HOW_KEYS = ("amp", "compile", "workers", "eval_every", "eval_batch_size", "channels_last", "deterministic")


def read_recipe(spec: str) -> dict:
    label, sep, paths = spec.partition("=")
    if not sep or not label or not paths:
        raise LortError(f"{spec!r}: expected LABEL=RUN[,COMPARE]")
    run, _, compare = paths.partition(",")
    run = Path(run)
    compare = Path(compare) if compare else run / "compare"
    stage1 = finished_stage1(run)
    board = read_run_json(compare / "leaderboard.json")
    config = yaml.safe_load((run / "config.yaml").read_text())
    return {
        "label": label,
        "run": str(run),
        "compare": str(compare),
        "config": config,
        "stage1": stage1,
        "board": board,
    }


def _row(board: dict, method: str) -> dict | None:
    return next((r for r in board["results"] if r["method"] == method), None)


def summarise(recipes: list[dict]) -> dict:
    first = load_config(Path(recipes[0]["run"]) / "config.yaml")
    rows, methods = [], []
    for rec in recipes:
        if rec["config"].get("data") != recipes[0]["config"].get("data"):
            raise LortError(
                f"{rec['run']}: its data section differs from {recipes[0]['run']}'s; compare like with like"
            )
        diffs = config_differences(rec["config"], first, sections=("stage1",), ignore=HOW_KEYS)
        board, s1 = rec["board"], rec["stage1"]
        ref = board["statistics"]["reference"]
        lort, ce, ref_row = _row(board, "lort"), _row(board, "ce"), _row(board, ref)
        best = max(board["results"], key=lambda r: r["test_acc"])
        rows.append(
            {
                "label": rec["label"],
                "run": rec["run"],
                "differs": {key.split(".", 1)[1]: mine for key, mine, _ in diffs},
                "stage1_val_balanced": round(100 * s1["val_balanced_acc"], 2),
                "stage1_test": round(100 * s1["test"]["acc"], 2),
                "stage1_many": round(100 * s1["test"]["many"], 2),
                "stage1_medium": round(100 * s1["test"]["medium"], 2),
                "reference": ref,
                "reference_test": ref_row["test_acc"],
                "lort_test": lort["test_acc"] if lort else None,
                "lort_tier": lort["tier"] if lort else None,
                "lort_diff": lort["diff_to_reference"] if lort else None,
                "lort_ci": lort["diff_ci"] if lort else None,
                "ce_test": ce["test_acc"] if ce else None,
                "best_method": best["method"],
                "best_test": best["test_acc"],
                "seeds": board["seeds"],
            }
        )
        methods += [r["method"] for r in board["results"] if r["method"] not in methods]
    per_method = {
        m: {
            rec["label"]: (lambda r: r and {"test": r["test_acc"], "tier": r["tier"]})(_row(rec["board"], m))
            for rec in recipes
        }
        for m in methods
    }
    return {"recipes": rows, "per_method": per_method, "published": [list(p) for p in PUBLISHED_IR100]}


def _fmt(v, digits=2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def markdown(summary: dict, command: str) -> str:
    rec = summary["recipes"]
    lines = [
        "# Stage-1 recipes side by side",
        "",
        f"Made by `{command}` from the run folders named below (nothing trained or chosen here).",
        "Accuracies in %, the JPEG copy of CIFAR-10; every choice on validation (20 images a class);",
        "stage-2 figures are means over the stage-2 seeds; tiers and intervals are each leaderboard's",
        "(simultaneous 95%, against the method validation picks).",
        "",
        "| recipe | stage 1 differs from the first row in | stage 1 val (balanced) | stage 1 test | many | medium "
        "| validation's pick | its test | LORT (default) | LORT - pick [95% CI] | LORT tier | CE re-training "
        "| highest test (information) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rec:
        differs = ", ".join(f"{k}={v}" for k, v in r["differs"].items()) or "(the first row)"
        ci = "–" if r["lort_ci"] is None else f"{r['lort_diff']:+.2f} [{r['lort_ci'][0]:+.2f}, {r['lort_ci'][1]:+.2f}]"
        lines.append(
            f"| {r['label']} | {differs} | {_fmt(r['stage1_val_balanced'])} | {_fmt(r['stage1_test'])} "
            f"| {_fmt(r['stage1_many'])} | {_fmt(r['stage1_medium'])} | {r['reference']} | {_fmt(r['reference_test'])} "
            f"| {_fmt(r['lort_test'])} | {ci} | {r['lort_tier'] or '–'} | {_fmt(r['ce_test'])} "
            f"| {r['best_method']} {_fmt(r['best_test'])} |"
        )
    labels = [r["label"] for r in rec]
    lines += [
        "",
        "## Each stage-2 method on each stage 1",
        "",
        "Test accuracy (mean over stage-2 seeds); R marks the reference (validation's pick), "
        "v a row below it, ^ above it, nothing indistinguishable. The last column is the change "
        "from the first recipe to the last.",
        "",
        "| method | " + " | ".join(labels) + " | last - first |",
        "|---|" + "---|" * (len(labels) + 1),
    ]
    marks = {"reference": " R", "below the reference": " v", "above the reference": " ^"}
    for m, by in summary["per_method"].items():
        cells = ["–" if by[lbl] is None else f"{by[lbl]['test']:.2f}{marks.get(by[lbl]['tier'], '')}" for lbl in labels]
        a, b = by[labels[0]], by[labels[-1]]
        change = "–" if a is None or b is None else f"{b['test'] - a['test']:+.2f}"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {change} |")
    lines += [
        "",
        "## Published, for the same task on the official data",
        "",
        "ResNet-32, CIFAR-10-LT IR 100, 200 epochs, the official pickled CIFAR-10 (lossless). The runs",
        "above use a JPEG copy (quality about 75), which costs accuracy: no figure here is comparable",
        "to the decimal with these.",
        "",
        "| method | test accuracy | source |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {acc:.2f} | {src} |" for name, acc, src in summary["published"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output path without suffix (.md and .json are written)")
    ap.add_argument("recipes", nargs="+", help="LABEL=RUN[,COMPARE]; the first is the baseline of the differences")
    args = ap.parse_args()
    summary = summarise([read_recipe(s) for s in args.recipes])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/stage1_recipes.py --out " + args.out + " " + " ".join(f'"{s}"' for s in args.recipes)
    write_json(out.with_suffix(".json"), summary | {"command": command})
    write_text(out.with_suffix(".md"), markdown(summary, command))
    print(markdown(summary, command))


if __name__ == "__main__":
    run_main(main)
