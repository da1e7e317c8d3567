"""Leaderboards as Markdown, CSV and JSON, plus each method's logits and classifier."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..analysis.tables import format_cell, markdown_table
from ..data.features import FeatureSet
from ..io import save_npz, write_json, write_text
from ..layout import CompareRun
from .compare import MethodResult, logits_of

COLUMNS = [
    "method",
    "test_acc",
    "test_many",
    "test_medium",
    "test_few",
    "val_acc",
    "val_many",
    "val_medium",
    "val_few",
    "epoch",
    "hyperparameters",
    "time_s",
]


def verdict(results: list[MethodResult], ours: str = "lort") -> str:
    """A plain sentence on where LORT stands against the baselines, on test and validation."""
    by_test = sorted(results, key=lambda r: -(r.test or {}).get("acc", 0.0))
    mine = [r for r in results if r.method == ours]
    if not mine:
        return ""
    me = mine[0]
    beat_test = [r.method for r in by_test if r.method != ours and r.test["acc"] > me.test["acc"]]
    rank = 1 + len(beat_test)
    text = f"LORT ranks {rank} of {len(results)} on test accuracy ({100 * me.test['acc']:.2f}%)."
    if beat_test:
        text += f" Methods that beat it on this representation: {', '.join(beat_test)}."
    else:
        text += " No baseline beats it on this representation."
    return text


def rows(results: list[MethodResult]) -> list[dict]:
    return sorted((r.row() for r in results), key=lambda row: -(row["test_acc"] or 0.0))


def markdown(results: list[MethodResult], title: str = "Stage-2 leaderboard", notes: list[str] = ()) -> str:
    header = [
        "method",
        "test acc",
        "many",
        "medium",
        "few",
        "val acc",
        "val many",
        "val medium",
        "val few",
        "epoch",
        "hyperparameters (chosen on validation)",
        "time (s)",
    ]
    lines = [f"# {title}", ""]
    lines += [f"- {n}" for n in notes]
    lines += [
        "- Accuracies in %. Test: top-1 accuracy on the test split, evaluated once after every "
        "choice was made on validation (val: balanced accuracy).",
        "",
    ]
    lines.append(markdown_table(header, [[row[c] for c in COLUMNS] for row in rows(results)]).rstrip("\n"))
    v = verdict(results)
    if v:
        lines += ["", v]
    return "\n".join(lines) + "\n"


def to_csv(results: list[MethodResult]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows(results):
        writer.writerow(row | {"hyperparameters": format_cell(row["hyperparameters"])})
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
                arrays[f"{split}_logits"] = logits_of(r.head, x)
                arrays[f"{split}_labels"] = y
        arrays["train_counts"] = fs.train_counts
        save_npz(run.logits(r.method), **arrays)
        if hasattr(r.head, "linear_params"):
            w, b = r.head.linear_params()
            save_npz(run.classifier(r.method), weight=w[0].cpu().numpy(), bias=b[0].cpu().numpy())
    payload = {
        **meta,
        "verdict": verdict(results),
        "results": [r.row() | {"title": r.title, "val": r.val, "test": r.test, "search": r.search} for r in results],
    }
    write_json(run.leaderboard_json, payload)
    write_text(run.leaderboard_csv, to_csv(results))
    write_text(run.leaderboard_md, markdown(results, title, notes))
    return run.leaderboard_md
