"""``lort report RUN_DIR``: one self-contained HTML page (figures embedded) and a Markdown
summary of a run or comparison folder: dataset profile, backbone, leaderboard, metric
tables, figures, the resolved configuration and the exact commands."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from ..data.longtail import GROUP_NAMES
from ..errors import LortError
from ..io import write_json, write_text
from ..layout import CompareRun, PipelineRun
from . import plots
from .metrics import analyze
from .tables import format_cell, markdown_table


def _load_npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


def analyze_comparison(cmp_dir: Path) -> dict[str, dict]:
    """``analyze`` of every method's test logits (and classifier, when saved)."""
    cmp = CompareRun(cmp_dir)
    out = {}
    for f in sorted(cmp.logits_dir.glob("*.npz")):
        d = _load_npz(f)
        clf = cmp.classifier(f.stem)
        w = b = None
        if clf.is_file():
            c = _load_npz(clf)
            w, b = c["weight"], c["bias"]
        out[f.stem] = analyze(d["test_logits"], d["test_labels"], d["train_counts"], w, b)
    return out


def _pick_sample(cmp_dir: Path, a: str, b: str) -> tuple[int, int, dict] | None:
    """A test sample of the rarest class that ``a`` gets wrong and ``b`` right (else the first)."""
    pa, pb = CompareRun(cmp_dir).logits(a), CompareRun(cmp_dir).logits(b)
    if not (pa.is_file() and pb.is_file()):
        return None
    da, db = _load_npz(pa), _load_npz(pb)
    y = da["test_labels"]
    rare = int(np.argmin(da["train_counts"]))
    idx = np.flatnonzero(y == rare)
    if not len(idx):
        return None
    good = [i for i in idx if da["test_logits"][i].argmax() != rare and db["test_logits"][i].argmax() == rare]
    i = int(good[0] if good else idx[0])
    return i, rare, {a: da["test_logits"][i], b: db["test_logits"][i]}


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list]) -> tuple[str, str]:
    h = "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in header) + "</tr>"
    h += "".join("<tr>" + "".join(f"<td>{html.escape(format_cell(v))}</td>" for v in r) + "</tr>" for r in rows)
    h += "</table>"
    return h, markdown_table(header, rows)


def build_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.html``, ``report.md``, ``analysis.json`` and ``figures/*.png`` into ``run_dir``."""
    layout = PipelineRun(run_dir)
    run = layout.root
    cmp = layout.compare if layout.compare.leaderboard_json.is_file() else CompareRun(run)
    cmp_dir = cmp.root
    if not cmp.leaderboard_json.is_file():
        raise LortError(f"{run}: no leaderboard.json (run `lort compare` or `lort run` first)")
    board = json.loads(cmp.leaderboard_json.read_text())
    per_method = analyze_comparison(cmp_dir)
    if not per_method:
        raise LortError(f"{cmp_dir}/logits: no logits files to analyse")
    write_json(layout.analysis, per_method)
    figs = layout.figures
    counts = next(iter(per_method.values()))["train_counts"]
    dataset = {}
    for candidate in (layout.dataset, layout.stage1.dataset):
        if candidate.is_file():
            dataset = json.loads(candidate.read_text())
            break
    classes = [str(i) for i in range(len(counts))]
    stats = board.get("statistics")
    figures = []
    if stats:
        figures.append(
            (
                f"Every method against {stats['reference']}, the method validation picks (simultaneous intervals)",
                plots.plot_forest(
                    board["results"], stats["reference"], figs / "forest.png", stats.get("procedure", "")
                ),
            )
        )
    figures += [
        (
            "Per-class test accuracy, every method (classes from the most to the fewest training images)",
            plots.plot_per_class_accuracy(per_method, counts, figs / "per_class_accuracy.png"),
        ),
        (
            "Logits Magnitude and Regularized Standard Deviation by class group",
            plots.plot_magnitude_and_rsd(per_method, counts, figs / "logits_magnitude_rsd.png"),
        ),
    ]
    sample = _pick_sample(cmp_dir, "ce", "lort")
    if sample:
        i, label, logits = sample
        figures.append(
            (
                "One test sample: positive vs negative logits",
                plots.plot_sample_logits(logits, label, i, figs / "sample_logits.png"),
            )
        )
    if layout.sweep.is_file():
        figures.append(
            (
                "Accuracy against the smoothing value",
                plots.plot_smoothing_sweep(json.loads(layout.sweep.read_text()), figs / "smoothing_sweep.png"),
            )
        )
    if layout.sensitivity.is_file():
        figures.append(
            (
                "Sensitivity to learning rate and weight decay",
                plots.plot_sensitivity(json.loads(layout.sensitivity.read_text()), figs / "sensitivity.png"),
            )
        )
    figures.append(
        (
            "Training images per class",
            plots.plot_class_counts(
                counts,
                dataset.get("classes", classes) if isinstance(dataset.get("classes"), list) else classes,
                figs / "class_counts.png",
            ),
        )
    )

    results = board["results"]
    order = sorted(results, key=lambda r: -(r["test_acc"] or 0))
    lb_rows = [
        [
            r["method"],
            r["test_acc"] if r.get("test_acc_sd") is None else f"{r['test_acc']:.2f} ± {r['test_acc_sd']:.2f}",
            r["test_many"],
            r["test_medium"],
            r["test_few"],
            None
            if r.get("diff_ci") is None
            else f"{r['diff_to_reference']:+.2f} [{r['diff_ci'][0]:+.2f}, {r['diff_ci'][1]:+.2f}]",
            r.get("tier"),
            r["val_acc"],
            ", ".join(f"{k}={v}" for k, v in r["hyperparameters"].items()),
            r["epoch"],
        ]
        for r in order
    ]
    lb_html, lb_md = _table(
        [
            "method",
            "test acc",
            "many",
            "medium",
            "few",
            "diff to reference [simultaneous 95% CI]",
            "tier",
            "val acc",
            "hyperparameters (val)",
            "epoch",
        ],
        lb_rows,
    )
    metric_rows = []
    for r in order:
        a = per_method.get(r["method"])
        if a is None:
            continue
        gm = a["group_means"]
        metric_rows.append(
            [r["method"]]
            + [gm["logits_magnitude_normalized"][g] for g in GROUP_NAMES]
            + [gm["rsd_positive"][g] for g in GROUP_NAMES]
            + [None if a["ece"] is None else 100 * a["ece"], None if a["top5_acc"] is None else 100 * a["top5_acc"]]
        )
    mt_html, mt_md = _table(
        ["method", "LM many", "LM medium", "LM few", "RSD+ many", "RSD+ medium", "RSD+ few", "ECE (%)", "top-5 (%)"],
        metric_rows,
    )
    profile = ""
    if dataset:
        profile = (
            f"{dataset.get('dataset')}: {dataset.get('num_classes')} classes, {dataset.get('train_size')} training images, "
            f"imbalance ratio {dataset.get('imbalance_ratio', 0):.1f}, groups {dataset.get('groups')}, "
            f"validation {dataset.get('val_size')}, test {dataset.get('test_size')}"
        )
    stage1 = layout.stage1.summary
    backbone = ""
    if stage1.is_file():
        s1 = json.loads(stage1.read_text())
        backbone = (
            f"{s1['model']}, {s1['epochs']} epochs, checkpoint {s1['selected_checkpoint']} (epoch {s1['selected_epoch']}, "
            f"{s1['selected_by']}); stage-1 test accuracy {100 * s1['test']['acc']:.2f}%"
        )
        trace = s1.get("test_trace_information")
        if trace:  # stage1.test_trace: the published codes' figure, chosen on test
            backbone += (
                f" (its best test epoch, information only: {100 * trace['best_acc']:.2f}% at epoch "
                f"{trace['best_epoch']} of the {trace['epochs']} traced)"
            )
        started = (
            json.loads(layout.features_meta.read_text()).get("checkpoint") if layout.features_meta.is_file() else None
        )
        if started:
            backbone += f"; stage 2 re-trains on the features of stage1/{started}"
    config = layout.config.read_text() if layout.config.is_file() else ""
    commands = json.loads(layout.commands.read_text()) if layout.commands.is_file() else []
    notes = [
        f"Mode: {board.get('mode', 'cache')}. Test-time augmentation: {'on' if board.get('tta') else 'off'}.",
        board.get("selection", ""),
        board.get("verdict", ""),
    ]

    md = ["# lort report", ""]
    md += [f"- Dataset: {profile}"] if profile else []
    md += [f"- Backbone: {backbone}"] if backbone else []
    md += [f"- {n}" for n in notes if n]
    md += [
        "",
        "## Leaderboard (accuracy %)",
        "",
        lb_md,
        "## Logits Magnitude (normalised) and Regularized Std (test)",
        "",
        mt_md,
    ]
    md += ["## Figures", ""] + [f"![{t}](figures/{p.name})" for t, p in figures]
    md += ["", "## Commands", "", "```", *commands, "```"] if commands else []
    md += ["", "## Configuration", "", "```yaml", config.rstrip(), "```"] if config else []
    md_path = layout.report_md
    write_text(md_path, "\n".join(md) + "\n")

    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f2f2f2}img{max-width:100%;margin:.5em 0}"
        "pre{background:#f6f6f6;padding:1em;overflow-x:auto}"
    )
    body = ["<h1>lort report</h1>", "<ul>"]
    body += [f"<li>Dataset: {html.escape(profile)}</li>"] if profile else []
    body += [f"<li>Backbone: {html.escape(backbone)}</li>"] if backbone else []
    body += [f"<li>{html.escape(n)}</li>" for n in notes if n] + ["</ul>"]
    body += [
        "<h2>Leaderboard (accuracy %)</h2>",
        lb_html,
        "<h2>Logits Magnitude (normalised) and Regularized Std (test)</h2>",
        mt_html,
    ]
    body += ["<h2>Figures</h2>"] + [
        f"<figure>{_img(p)}<figcaption>{html.escape(t)}</figcaption></figure>" for t, p in figures
    ]
    body += ["<h2>Commands</h2><pre>" + html.escape("\n".join(commands)) + "</pre>"] if commands else []
    body += ["<h2>Configuration</h2><pre>" + html.escape(config) + "</pre>"] if config else []
    page = f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>lort report</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    html_path = layout.report_html
    write_text(html_path, page)
    return html_path, md_path
