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

Each recipe is one stage-1 seed. With ``--stage1-seed RUN[,COMPARE]`` (two or more, runs that
differ only in ``stage1.seed``) the script also reads how much a stage-1 seed alone moves stage 1
and each method (standard deviation over those runs), and sets each method's change between the
first and the last recipe against it: a change between two single-seed runs has a standard
deviation of about sqrt(2) sd, so a ratio under 2 is within what the seed alone moves.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import yaml
from _common import finished_stage1, read_run_json, run_main

from lort.config import TRAINS_THE_SAME, config_differences, load_config
from lort.errors import LortError
from lort.io import write_json, write_text

# ResNet-32, CIFAR-10-LT, the official (lossless) data, 200 epochs: test accuracy % by imbalance ratio
PUBLISHED = {
    100: (
        ("plain cross-entropy", 70.36, "Cao et al., LDAM-DRW, NeurIPS 2019, Table 2"),
        ("LDAM-DRW", 77.03, "Cao et al., LDAM-DRW, NeurIPS 2019, Table 2"),
        ("MiSLAS stage 1 alone (mixup 1.0; the best test epoch)", 72.8, "dvlab-research/MiSLAS, README"),
        ("MiSLAS (mixup stage 1 + label-aware smoothing)", 82.5, "dvlab-research/MiSLAS, README"),
        ("SADE", 83.8, "Zhang et al., NeurIPS 2022"),
        ("NCL", 84.7, "Li et al., CVPR 2022"),
    ),
    50: (
        ("MiSLAS stage 1 alone (mixup 1.0; the best test epoch)", 78.1, "dvlab-research/MiSLAS, README"),
        ("MiSLAS (mixup stage 1 + label-aware smoothing)", 85.7, "dvlab-research/MiSLAS, README"),
    ),
    10: (
        ("MiSLAS stage 1 alone (mixup 1.0; the best test epoch)", 87.6, "dvlab-research/MiSLAS, README"),
        ("MiSLAS (mixup stage 1 + label-aware smoothing)", 90.0, "dvlab-research/MiSLAS, README"),
    ),
}
# keys that say how a run was computed, not what it computed
HOW_KEYS = ("amp", "eval_every", "eval_batch_size", "channels_last", "deterministic", *TRAINS_THE_SAME)


def _run_config_path(run: Path) -> Path:
    """A run's config: ``RUN/config.yaml`` (``lort run``) or ``RUN/stage1/config.yaml`` (``lort train``)."""
    top = run / "config.yaml"
    return top if top.is_file() else run / "stage1" / "config.yaml"


def read_run(paths: str, what: str) -> dict:
    """``RUN[,COMPARE]``: the run's config, stage-1 summary and leaderboard (default ``RUN/compare``)."""
    run, _, compare = paths.partition(",")
    if not run:
        raise LortError(f"{what}: expected RUN[,COMPARE]")
    run = Path(run)
    compare = Path(compare) if compare else run / "compare"
    stage1 = finished_stage1(run)
    board = read_run_json(compare / "leaderboard.json")
    config_path = _run_config_path(run)
    try:
        config = yaml.safe_load(config_path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise LortError(f"{config_path}: cannot read it ({type(exc).__name__})") from None
    return {
        "run": str(run),
        "compare": str(compare),
        "config": config,
        "stage1": stage1,
        "board": board,
        "stage2_from": _stage2_checkpoint(run),
    }


def _stage2_checkpoint(run: Path) -> str:
    """The stage-1 checkpoint of the run's stage 2, as ``RUN/features.json`` records it; runs
    made before it was recorded (and comparisons on extracted features) started from best.pt."""
    try:
        return json.loads((run / "features.json").read_text()).get("checkpoint") or "best.pt"
    except (OSError, ValueError):
        return "best.pt"


def read_recipe(spec: str) -> dict:
    label, sep, paths = spec.partition("=")
    if not sep or not label or not paths:
        raise LortError(f"{spec!r}: expected LABEL=RUN[,COMPARE]")
    return {"label": label} | read_run(paths, repr(spec))


def seed_spread(specs: list[str]) -> dict:
    """How much the stage-1 seed alone moves stage 1 and each method: runs of one recipe that
    differ only in ``stage1.seed``, each with its leaderboard. Sample standard deviations over
    the runs (of stage 1's test accuracy, of each method's test accuracy, mean over stage-2
    seeds, and of the default LORT's lead over CE re-training)."""
    if len(specs) < 2:
        raise LortError(f"--stage1-seed: give two or more runs of one recipe (got {len(specs)})")
    reps = [read_run(spec, f"--stage1-seed {spec!r}") for spec in specs]
    first = load_config(_run_config_path(Path(reps[0]["run"])))
    for rep in reps[1:]:
        diffs = config_differences(rep["config"], first, sections=("data", "stage1"), ignore=HOW_KEYS + ("seed",))
        if diffs:
            keys = ", ".join(key for key, _, _ in diffs)
            raise LortError(
                f"--stage1-seed {rep['run']}: differs from {reps[0]['run']} in {keys}, not in stage1.seed alone"
            )
    seeds = [(rep["config"].get("stage1") or {}).get("seed", 0) for rep in reps]
    if len(set(seeds)) < len(seeds):
        raise LortError(f"--stage1-seed: the runs share a stage-1 seed ({seeds}); give runs of distinct seeds")

    def sd(values: list[float]) -> float:
        return round(statistics.stdev(values), 2)

    stage1 = [round(100 * rep["stage1"]["test"]["acc"], 2) for rep in reps]
    methods = [r["method"] for r in reps[0]["board"]["results"]]
    per_method = {}
    for m in methods:
        values = [(_row(rep["board"], m) or {}).get("test_acc") for rep in reps]
        if None not in values:
            per_method[m] = {"values": values, "sd": sd(values)}
    lead = None
    if "lort" in per_method and "ce" in per_method:
        diffs = [round(a - b, 2) for a, b in zip(per_method["lort"]["values"], per_method["ce"]["values"], strict=True)]
        lead = {"values": diffs, "sd": sd(diffs)}
    return {
        "runs": [rep["run"] for rep in reps],
        "compares": [rep["compare"] for rep in reps],
        "seeds": seeds,
        "epochs": first.stage1.epochs,
        "stage1_test": {"values": stage1, "sd": sd(stage1)},
        "per_method": per_method,
        "lort_minus_ce": lead,
    }


def noise_ratio(change: float, sd: float) -> float | None:
    """``change`` over the standard deviation of a difference of two single-seed runs (sqrt(2) sd)."""
    return None if sd <= 0 else change / (math.sqrt(2.0) * sd)


def _row(board: dict, method: str) -> dict | None:
    return next((r for r in board["results"] if r["method"] == method), None)


def summarise(recipes: list[dict], spread: dict | None = None) -> dict:
    first = load_config(_run_config_path(Path(recipes[0]["run"])))
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
                "stage1_best_test_epoch": (  # information: the published codes' figure, chosen on test
                    round(100 * s1["test_trace_information"]["best_acc"], 2) if "test_trace_information" in s1 else None
                ),
                "stage1_medium": round(100 * s1["test"]["medium"], 2),
                "stage2_from": rec["stage2_from"],
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
    ratio = first.data.imbalance_ratio
    out = {
        "recipes": rows,
        "per_method": per_method,
        "imbalance_ratio": ratio,
        "published": [list(p) for p in PUBLISHED.get(int(ratio) if float(ratio).is_integer() else None, ())],
    }
    return out | ({"stage1_seed_spread": spread} if spread else {})


def _stage1_change(rows: list[dict], sd: float) -> str:
    change = rows[-1]["stage1_test"] - rows[0]["stage1_test"]
    return f"{change:+.2f} (ratio {_fmt(noise_ratio(change, sd), 1)})"


def _fmt(v, digits=2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def markdown(summary: dict, command: str, figure_file: str | None = None) -> str:
    rec = summary["recipes"]
    lines = [
        "# Stage-1 recipes side by side",
        "",
        f"Made by `{command}` from the run folders named below (nothing trained or chosen here).",
        "Accuracies in %, the JPEG copy of CIFAR-10; every choice on validation (20 images a class);",
        "stage-2 figures are means over the stage-2 seeds; tiers and intervals are each leaderboard's",
        "(simultaneous 95%, against the method validation picks). Stage 2 from: the stage-1 checkpoint",
        "whose features stage 2 re-trained on (best.pt, stage 1's best validation epoch, was `lort run`'s",
        "rule before `stage2.checkpoint: last`; see results/stage1_checkpoint_rule/). Stage 1's best",
        "test epoch: the highest of the test accuracies a run with `stage1.test_trace` recorded after",
        "each epoch, the figure the published CIFAR-LT codes report (information, chosen on test;",
        "– where the run did not record them).",
        "",
        "| recipe | stage 1 differs from the first row in | stage 1 val (balanced) | stage 1 test | many | medium "
        "| stage 1 best test epoch (information) "
        "| stage 2 from | validation's pick | its test | LORT (default) | LORT - pick [95% CI] | LORT tier "
        "| CE re-training | highest test (information) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rec:
        differs = ", ".join(f"{k}={v}" for k, v in r["differs"].items()) or "(the first row)"
        ci = "–" if r["lort_ci"] is None else f"{r['lort_diff']:+.2f} [{r['lort_ci'][0]:+.2f}, {r['lort_ci'][1]:+.2f}]"
        lines.append(
            f"| {r['label']} | {differs} | {_fmt(r['stage1_val_balanced'])} | {_fmt(r['stage1_test'])} "
            f"| {_fmt(r['stage1_many'])} | {_fmt(r['stage1_medium'])} | {_fmt(r.get('stage1_best_test_epoch'))} "
            f"| {r['stage2_from']} | {r['reference']} "
            f"| {_fmt(r['reference_test'])} "
            f"| {_fmt(r['lort_test'])} | {ci} | {r['lort_tier'] or '–'} | {_fmt(r['ce_test'])} "
            f"| {r['best_method']} {_fmt(r['best_test'])} |"
        )
    labels = [r["label"] for r in rec]
    spread = summary.get("stage1_seed_spread")
    extra = " | sd over stage-1 seeds | change / (sqrt 2 sd)" if spread else ""
    lines += [
        "",
        "## Each stage-2 method on each stage 1",
        "",
        *(
            [
                f"![Each method's test accuracy against its stage 1's, and LORT's lead]({figure_file})",
                "",
            ]
            if figure_file
            else []
        ),
        "Test accuracy (mean over stage-2 seeds); R marks the reference (validation's pick), "
        "v a row below it, ^ above it, nothing indistinguishable. The last column is the change "
        "from the first recipe to the last" + (", set against the stage-1 seed noise (below)." if spread else "."),
        "",
        "| method | " + " | ".join(labels) + " | last - first" + extra + " |",
        "|---|" + "---|" * (len(labels) + 1 + (2 if spread else 0)),
    ]
    marks = {"reference": " R", "below the reference": " v", "above the reference": " ^"}
    beyond = []  # methods whose change is at least twice the stage-1 seed noise
    for m, by in summary["per_method"].items():
        cells = ["–" if by[lbl] is None else f"{by[lbl]['test']:.2f}{marks.get(by[lbl]['tier'], '')}" for lbl in labels]
        a, b = by[labels[0]], by[labels[-1]]
        change = None if a is None or b is None else b["test"] - a["test"]
        row = f"| {m} | " + " | ".join(cells) + f" | {'–' if change is None else f'{change:+.2f}'}"
        if spread:
            noise = spread["per_method"].get(m)
            ratio = None if noise is None or change is None else noise_ratio(change, noise["sd"])
            row += f" | {_fmt(noise and noise['sd'])} | {_fmt(ratio, 1)}"
            if ratio is not None and abs(ratio) >= 2:
                beyond.append(m)
        lines.append(row + " |")
    if spread:
        s1, lead, n = spread["stage1_test"], spread["lort_minus_ce"], len(spread["runs"])
        lines += [
            "",
            f"Stage-1 seed noise: each recipe above is one stage-1 seed. {n} stage-1 seeds "
            f"({', '.join(map(str, spread['seeds']))}) of `{spread['runs'][0]}` ({spread['epochs']} epochs; "
            f"runs {', '.join(f'`{r}`' for r in spread['runs'])}), each with the same stage-2 comparison, gave "
            f"stage 1 {', '.join(f'{v:.2f}' for v in s1['values'])} (sd {s1['sd']:.2f}) and each method the "
            f"sd in its column; stage 1 itself changed by {_stage1_change(rec, s1['sd'])} from the first recipe to "
            "the last. A change between two single-seed runs has a standard deviation of about "
            "sqrt(2) sd, so a ratio under 2 is within what the stage-1 seed alone moves. "
            + (f"Beyond it (ratio 2 or more): {', '.join(beyond)}. " if beyond else "No method's change is beyond it. ")
            + f"The sd comes from {n} runs of another schedule, so it is a scale, not a test."
            + (
                f" Differences between methods on one stage 1 move less with the seed: the default "
                f"LORT's lead over CE re-training was {', '.join(f'{v:+.2f}' for v in lead['values'])} "
                f"(sd {lead['sd']:.2f})."
                if lead
                else ""
            ),
        ]
    lines += [
        "",
        "## Published, for the same task on the official data",
        "",
        f"ResNet-32, CIFAR-10-LT IR {summary.get('imbalance_ratio', 100):g}, 200 epochs, the official pickled "
        "CIFAR-10 (lossless). The runs",
        "above use a JPEG copy (quality about 75), which costs accuracy: no figure here is comparable",
        "to the decimal with these. The protocols differ too: the public LDAM-DRW code, whose CE",
        "and LDAM-DRW rows these are, trains with weight decay 2e-4 and a step schedule (x 0.01 after",
        "epoch 160, x 0.0001 after 180) and keeps the best test accuracy over the epochs (`best_acc1`",
        "in its `cifar_train.py`); every figure above is of the checkpoint validation chose.",
        "`configs/cifar10_lt_ir100_ldam_ce.yaml` runs that schedule here. MiSLAS's stage 1 is the",
        "same network with lr 0.1, batch 128, weight decay 2e-4, 5 warm-up epochs, lr x 0.1 after",
        "epoch 160 and x 0.01 after 180, mixup 1.0, and it too keeps the best test epoch (`best_acc1`",
        "in its `train_stage1.py`).",
        "",
    ]
    if summary["published"]:
        lines += ["| method | test accuracy | source |", "|---|---|---|"]
        lines += [f"| {name} | {acc:.2f} | {src} |" for name, acc, src in summary["published"]]
    else:
        lines += ["No published figure for this imbalance ratio is listed here."]
    return "\n".join(lines) + "\n"


def figure(summary: dict, path: Path) -> Path:
    """Each stage-2 method's test accuracy against its stage 1's (left), and the default LORT's
    lead over CE re-training and over validation's pick (right), one point a recipe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lort.analysis.plots import save_figure

    rows = sorted(summary["recipes"], key=lambda r: r["stage1_test"])
    x = [r["stage1_test"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    style = {"lort": dict(color="C3", lw=2.5, zorder=3), "ce": dict(color="C0", lw=2, zorder=2)}
    for method, by_label in summary["per_method"].items():
        ys = [(by_label.get(r["label"]) or {}).get("test") for r in rows]
        kw = style.get(method, dict(color="0.75", lw=1, zorder=1))
        left.plot(x, ys, "-o", ms=3, label=method if method in style else None, **kw)
    left.plot(x, [r["reference_test"] for r in rows], "k*", ms=11, label="validation's pick", zorder=4)
    left.plot(x, x, ":", color="0.4", lw=1, label="stage 1 itself")
    left.set_xlabel("stage 1 test accuracy (%)")
    left.set_ylabel("stage 2 test accuracy (%)")
    left.set_title("each stage-2 method (grey) on each stage 1, joined in stage-1 order")
    left.legend(loc="lower right", fontsize=8)
    left.grid(alpha=0.3)
    lead_ce = [
        r["lort_test"] - r["ce_test"] if r["lort_test"] is not None and r["ce_test"] is not None else None for r in rows
    ]
    lead_pick = [r["lort_test"] - r["reference_test"] if r["lort_test"] is not None else None for r in rows]
    right.axhline(0, color="0.4", lw=1)
    right.plot(x, lead_ce, "o-", color="C0", label="LORT - CE re-training")
    right.plot(x, lead_pick, "s-", color="k", label="LORT - validation's pick")
    lows = [r["lort_ci"][0] if r["lort_ci"] else None for r in rows]
    highs = [r["lort_ci"][1] if r["lort_ci"] else None for r in rows]
    for xi, lo, hi in zip(x, lows, highs, strict=True):
        if lo is not None:
            right.plot([xi, xi], [lo, hi], color="k", alpha=0.35, lw=1)
    right.set_xlabel("stage 1 test accuracy (%)")
    right.set_ylabel("points")
    right.set_title("LORT's lead (bars: its simultaneous 95% interval against the pick)")
    right.legend(loc="best", fontsize=8)
    right.grid(alpha=0.3)
    return save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output path without suffix (.md and .json are written)")
    ap.add_argument(
        "--stage1-seed",
        action="append",
        default=[],
        metavar="RUN[,COMPARE]",
        help="a run of one recipe at another stage-1 seed (repeat, two or more): the noise scale of the changes",
    )
    ap.add_argument("recipes", nargs="+", help="LABEL=RUN[,COMPARE]; the first is the baseline of the differences")
    args = ap.parse_args()
    spread = seed_spread(args.stage1_seed) if args.stage1_seed else None
    summary = summarise([read_recipe(s) for s in args.recipes], spread)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = (
        "python benchmarks/stage1_recipes.py --out "
        + args.out
        + "".join(f' --stage1-seed "{s}"' for s in args.stage1_seed)
        + " "
        + " ".join(f'"{s}"' for s in args.recipes)
    )
    write_json(out.with_suffix(".json"), summary | {"command": command})
    figure(summary, out.with_suffix(".png"))
    text = markdown(summary, command, out.with_suffix(".png").name)
    write_text(out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    run_main(main)
