"""Leaderboards as Markdown, CSV and JSON, plus each method's logits and classifier."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..analysis.tables import format_cell, markdown_table
from ..data.features import FeatureSet
from ..io import save_npz, write_json, write_text
from ..layout import CompareRun
from .compare import MethodResult
from .heads import logit_blocks

COLUMNS = [
    "method",
    "test_acc",
    "test_acc_sd",
    "test_many",
    "test_medium",
    "test_few",
    "diff_to_reference",
    "diff_ci",
    "tier",
    "val_acc",
    "val_many",
    "val_medium",
    "val_few",
    "epoch",
    "hyperparameters",
    "fits",
    "seeds",
    "duplicate_of",
    "time_s",
]


def distinct(results: list[MethodResult]) -> list[MethodResult]:
    """The results that count as distinct methods: not a duplicate of another compared
    method at its chosen setting, not a variant of another compared method."""
    from .methods import METHODS

    names = {r.method for r in results}
    out = []
    for r in results:
        m = METHODS.get(r.method)
        if r.duplicate_of or (m is not None and m.variant_of in names):
            continue
        out.append(r)
    return out


def _ranked(results: list[MethodResult]) -> list[MethodResult]:
    return sorted(results, key=lambda r: -(r.row()["test_acc"] or 0.0))


def verdict(results: list[MethodResult], ours: str = "lort") -> str:
    """What the statistics support, as a reader wants it: the method validation would pick
    (the reference), the methods indistinguishable from it on test, those below and above
    it (simultaneous intervals over the whole table), where LORT stands, and what the
    intervals carry."""
    v = next((r.verdicts for r in results if r.verdicts is not None), None)
    if v is None:
        seeds = max((r.row()["seeds"] for r in results), default=1)
        return (
            "No validation split: every method ran at its defaults and nothing was chosen, so there is no "
            f"reference and no interval; test accuracies are {'means over ' + str(seeds) + ' seeds' if seeds > 1 else 'one seed'}."
        )
    counted = {r.method for r in distinct(results)}
    ranked = [r for r in _ranked(results) if r.difference is not None]

    def names(tier: str) -> str:
        found = [r.method for r in ranked if r.difference.tier == tier and r.method in counted]
        return ", ".join(found) if found else "none"

    ref = next(r for r in results if r.method == v.reference)
    val = ref.row()["val_acc"]
    on_val = v.selection == "validation"
    text = (
        (
            f"The method you would pick on validation is {v.reference} (validation balanced accuracy {val:.2f}%"
            if on_val
            else f"The method {v.selection} picks is {v.reference} (cross-validated balanced accuracy {val:.2f}%"
        )
        + (f", mean over {v.seeds} seeds" if v.seeds > 1 else ", one seed")
        + (f"; picked again in {100 * v.reference_share:.0f}% of the resamples). " if on_val else "). ")
        + (f"{v.reference_rule[0].upper()}{v.reference_rule[1:]}. " if v.reference_rule else "")
        + f"Indistinguishable from it on test: {names('indistinguishable')}. Below it: {names('below the reference')}. "
        f"Above it: {names('above the reference')}. ({len(results)} rows, {len(counted)} distinct methods; "
        "duplicates and variants are listed in the table but not counted here.)"
    )
    mine = next((r for r in results if r.method == ours), None)
    if mine is not None and mine.method != v.reference:
        d = mine.difference
        text += (
            f" LORT ({ours}): {mine.row()['test_acc']:.2f}%, {d.tier}, {100 * d.diff:+.2f} points "
            f"[{100 * d.low:+.2f}, {100 * d.high:+.2f}]."
        )
    if v.test_best != v.reference:
        text += f" Highest test accuracy, for information only (not a choice a user can make): {v.test_best}."
    return text + " " + v.describe()


def statistics(results: list[MethodResult]) -> dict | None:
    """The leaderboard's statistics as data: reference, test-best, procedure, what varied."""
    v = next((r.verdicts for r in results if r.verdicts is not None), None)
    if v is None:
        return None
    return {
        "reference": v.reference,
        "test_best": v.test_best,
        "procedure": v.procedure,
        "resamples": v.resamples,
        "seeds": v.seeds,
        "varied": v.varied,
        "not_varied": v.left_out,
        "reference_picked_again": round(v.reference_share, 4),
        "selection": v.selection,
        "reference_rule": v.reference_rule,
    }


def rows(results: list[MethodResult]) -> list[dict]:
    return sorted((r.row() for r in results), key=lambda row: -(row["test_acc"] or 0.0))


def _acc_cell(row: dict):
    if row["test_acc_sd"] is None:
        return row["test_acc"]
    return f"{row['test_acc']:.2f} ± {row['test_acc_sd']:.2f}"


def _diff_cell(row: dict):
    if row["diff_ci"] is None:
        return None
    lo, hi = row["diff_ci"]
    return f"{row['diff_to_reference']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def _method_cell(row: dict):
    from .methods import METHODS

    m = METHODS.get(row["method"])
    if row["duplicate_of"]:
        return f"{row['method']} (= {row['duplicate_of']} here)"
    if m is not None and m.variant_of:
        return f"{row['method']} (variant of {m.variant_of})"
    return row["method"]


def markdown(results: list[MethodResult], title: str = "Stage-2 leaderboard", notes: list[str] = ()) -> str:
    v = next((r.verdicts for r in results if r.verdicts is not None), None)
    by_cv = v is not None and v.selection != "validation"
    header = [
        "method",
        "test acc",
        "many",
        "medium",
        "few",
        "diff to reference [simultaneous 95% CI]",
        "tier",
        "cv acc" if by_cv else "val acc",
        "epoch",
        "hyperparameters (chosen by cross-validation)" if by_cv else "hyperparameters (chosen on validation)",
        "fits",
        "time (s)",
    ]
    table = [
        [
            _method_cell(row),
            _acc_cell(row),
            row["test_many"],
            row["test_medium"],
            row["test_few"],
            _diff_cell(row),
            row["tier"],
            row["val_acc"],
            row["epoch"],
            row["hyperparameters"],
            row["fits"],
            row["time_s"],
        ]
        for row in rows(results)
    ]
    seeds = max((row["seeds"] for row in rows(results)), default=1)
    lines = [f"# {title}", ""]
    lines += [f"- {n}" for n in notes]
    lines += [
        "- Accuracies in %. Test: top-1 accuracy on the test split, evaluated once after every "
        "choice was made on validation (val: balanced accuracy)"
        + (f"; mean ± standard deviation over {seeds} stage-2 seeds" if seeds > 1 else "; one stage-2 seed")
        + ".",
        "- reference: the method with the best validation score (balanced accuracy, ties by the lower "
        "class-balanced log-loss, the mean over seeds), the method a user would pick. diff to reference: test "
        "accuracy minus the reference's, with simultaneous 95% intervals that hold for every row at once "
        "(the procedure is named under the table); below / above the reference when the whole interval is.",
        "- fits: settings each method trained (or evaluated) and chose among on validation; "
        "hyperparameters and epoch are the first seed's choice.",
        "",
    ]
    lines.append(markdown_table(header, table).rstrip("\n"))
    v = verdict(results)
    if v:
        lines += ["", v]
    return "\n".join(lines) + "\n"


def to_csv(results: list[MethodResult]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows(results):
        writer.writerow(
            row | {"hyperparameters": format_cell(row["hyperparameters"]), "diff_ci": format_cell(row["diff_ci"])}
        )
    return buf.getvalue()


def write_leaderboard(
    out: str | Path,
    results: list[MethodResult],
    fs: FeatureSet,
    meta: dict,
    title: str = "Stage-2 leaderboard",
    notes: list[str] = (),
) -> Path:
    """Write leaderboard.{md,csv,json}, logits/<method>.npz and classifiers/<method>.npz."""
    out = Path(out)
    run = CompareRun(out)
    out.mkdir(parents=True, exist_ok=True)
    for r in results:
        arrays = {}
        for split in ("val", "test"):
            if split in fs.splits:
                x, y = fs.splits[split]
                arrays[f"{split}_logits"] = ((len(x), fs.num_classes), np.float32, logit_blocks(r.head, x))
                arrays[f"{split}_labels"] = y
        arrays["train_counts"] = fs.train_counts
        save_npz(run.logits(r.method), **arrays)  # the logits written block by block
        if hasattr(r.head, "linear_params"):
            w, b = r.head.linear_params()
            save_npz(run.classifier(r.method), weight=w[0].cpu().numpy(), bias=b[0].cpu().numpy())
    payload = {
        **meta,
        "verdict": verdict(results),
        "statistics": statistics(results),
        "distinct_methods": len(distinct(results)),
        "results": [
            r.row() | {"title": r.title, "val": r.val, "test": r.test, "per_seed": r.seeds, "search": r.search}
            for r in results
        ],
    }
    write_json(run.leaderboard_json, payload)
    write_text(run.leaderboard_csv, to_csv(results))
    write_text(run.leaderboard_md, markdown(results, title, notes))
    return run.leaderboard_md
