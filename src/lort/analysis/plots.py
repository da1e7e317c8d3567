"""Figures (matplotlib, Agg backend), written atomically as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..data.longtail import FEW_BELOW, MANY_ABOVE  # noqa: E402
from ..io import atomic_path  # noqa: E402

GROUP_COLORS = ("#3b6fb6", "#e0a030", "#c8413b")


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_class_counts(counts, classes: list[str], path: str | Path, title: str = "") -> Path:
    """Bar chart of training images per class (head first), coloured by Many/Medium/Few."""
    counts = np.asarray(counts)
    order = np.argsort(-counts, kind="stable")
    colors = [
        GROUP_COLORS[0] if c > MANY_ABOVE else GROUP_COLORS[2] if c < FEW_BELOW else GROUP_COLORS[1]
        for c in counts[order]
    ]
    fig, ax = plt.subplots(figsize=(max(6.0, min(16.0, 0.12 * len(counts) + 4)), 4))
    ax.bar(np.arange(len(counts)), counts[order], color=colors, width=0.85)
    ax.set_yscale("log")
    ax.set_xlabel("class (sorted by training count)")
    ax.set_ylabel("training images (log scale)")
    if len(counts) <= 20:
        ax.set_xticks(np.arange(len(counts)), [classes[i] for i in order], rotation=45, ha="right")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in GROUP_COLORS]
    ax.legend(
        handles,
        [f"Many (>{MANY_ABOVE})", f"Medium ({FEW_BELOW}-{MANY_ABOVE})", f"Few (<{FEW_BELOW})"],
    )
    ax.set_title(title or f"{len(counts)} classes, {int(counts.sum())} images, IR {counts.max() / counts.min():.0f}")
    return save_figure(fig, path)


def _method_order(results: dict[str, dict]) -> list[str]:
    """Methods in ascending order of test accuracy (the paper's legend order)."""
    return sorted(results, key=lambda m: results[m]["acc"] or 0.0)


def plot_per_class_accuracy(per_method: dict[str, dict], train_counts, path: str | Path) -> Path:
    """Per-class test accuracy as a heat map: one row per method (best test accuracy on
    top), one column per class from the largest training count to the smallest (sets of
    more than 20 classes in 10 bins of classes by count, the bin's mean). Readable with
    every method at once, unlike one line per method."""
    counts = np.asarray(train_counts)
    order = np.argsort(-counts, kind="stable")
    methods = _method_order(per_method)[::-1]
    acc = np.array(
        [[np.nan if a is None else 100 * a for a in per_method[m]["per_class"]] for m in methods], dtype=float
    )[:, order]
    if len(counts) > 20:
        bins = np.array_split(np.arange(len(counts)), 10)
        acc = np.stack([np.nanmean(acc[:, b], axis=1) for b in bins], axis=1)
        labels = [f"{int(counts[order][b].max())}-{int(counts[order][b].min())}" for b in bins]
        xlabel = "classes in 10 bins by training count (images a class: most to fewest)"
    else:
        labels = [str(int(c)) for c in counts[order]]
        xlabel = "classes by training count (images a class: most to fewest)"
    fig, ax = plt.subplots(figsize=(max(7.0, 0.55 * acc.shape[1] + 3.5), 0.38 * len(methods) + 1.8))
    im = ax.imshow(acc, aspect="auto", cmap="viridis", vmin=0, vmax=100)
    ax.set_yticks(np.arange(len(methods)), [f"{m} ({100 * per_method[m]['acc']:.1f}%)" for m in methods], fontsize=8)
    ax.set_xticks(np.arange(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    if acc.shape[1] * len(methods) <= 400:
        for i in range(acc.shape[0]):
            for j in range(acc.shape[1]):
                if np.isfinite(acc[i, j]):
                    ax.text(j, i, f"{acc[i, j]:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if acc[i, j] < 60 else "black")  # fmt: skip
    ax.set_xlabel(xlabel)
    ax.set_title("Per-class test accuracy (%), methods by test accuracy")
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
    return save_figure(fig, path)


TIER_COLORS = {
    "reference": "#000000",
    "indistinguishable": "#1f77b4",
    "below the reference": "#d62728",
    "above the reference": "#2ca02c",
}


def plot_forest(rows: list[dict], reference: str, path: str | Path, procedure: str = "") -> Path:
    """Each method's test accuracy minus the reference's with its simultaneous interval,
    coloured by tier (a forest plot); ``rows`` are leaderboard rows with
    ``diff_to_reference`` and ``diff_ci`` in points."""
    rows = [r for r in rows if r.get("diff_ci") is not None]
    rows = sorted(rows, key=lambda r: r["diff_to_reference"])
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.6))
    for i, r in enumerate(rows):
        lo, hi = r["diff_ci"]
        color = TIER_COLORS.get(r["tier"], "#777777")
        ax.plot([lo, hi], [i, i], color=color, lw=2)
        ax.plot(r["diff_to_reference"], i, "o", color=color, ms=5)
    ax.axvline(0, color="#555555", lw=1, ls="--")
    ax.set_yticks(np.arange(len(rows)), [r["method"] + (" (reference)" if r["method"] == reference else "") for r in rows],
                  fontsize=8)  # fmt: skip
    ax.set_xlabel(f"test accuracy minus {reference}'s (points), simultaneous 95% intervals")
    handles = [plt.Line2D([0], [0], color=c, lw=2) for c in TIER_COLORS.values()]
    ax.legend(handles, list(TIER_COLORS), fontsize=7, loc="lower right")
    ax.set_title("Every method against the one validation would pick")
    if procedure:
        fig.text(0.01, 0.005, procedure, fontsize=6, wrap=True)
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def _group_axis(train_counts) -> tuple[list[str], str]:
    if len(train_counts) > 20:
        n = (len(train_counts) + 9) // 10
        return [f"{10 * i}-{min(10 * i + 9, len(train_counts) - 1)}" for i in range(n)], "bins"
    return ["many", "medium", "few"], "groups"


def plot_magnitude_and_rsd(per_method: dict[str, dict], train_counts, path: str | Path) -> Path:
    """Normalised Logits Magnitude and Regularized Standard Deviation (positive and
    negative samples) by class group, one line per method (legend: ascending accuracy)."""
    labels, kind = _group_axis(train_counts)
    metrics = [
        ("logits_magnitude_normalized", "Logits Magnitude (1-norm normalised)"),
        ("rsd_positive", "Regularized Std (positive samples)"),
        ("rsd_negative", "Regularized Std (negative samples)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    cmap = plt.get_cmap("tab20")
    for ax, (key, title) in zip(axes, metrics, strict=True):
        for i, m in enumerate(_method_order(per_method)):
            gm = per_method[m]["group_means"][key]
            ys = gm["bins"] if kind == "bins" else [gm[g] for g in labels]
            ys = [np.nan if v is None else v for v in ys]
            ax.plot(
                labels,
                ys,
                marker="o",
                ms=3,
                lw=2.2 if m.startswith("lort") else 1.0,
                color=cmap(i % 20),
                label=m,
            )
        ax.set_title(title)
        ax.set_xlabel("classes (head to tail)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle("Logits Magnitude and Regularized Standard Deviation on the test split")
    return save_figure(fig, path)


def plot_sample_logits(logits_by_method: dict[str, np.ndarray], label: int, index: int, path: str | Path) -> Path:
    """One test sample's logits under two methods: the true class (blue) against the others (red)."""
    fig, axes = plt.subplots(1, len(logits_by_method), figsize=(5 * len(logits_by_method), 4), sharey=False)
    axes = np.atleast_1d(axes)
    for ax, (m, z) in zip(axes, logits_by_method.items(), strict=True):
        colors = ["#3b6fb6" if c == label else "#c8413b" for c in range(len(z))]
        ax.bar(np.arange(len(z)), z, color=colors)
        pred = int(np.argmax(z))
        ax.set_title(f"{m}: predicts {pred} ({'right' if pred == label else 'wrong'})")
        ax.set_xlabel("class")
        ax.set_ylabel("logit")
        ax.axhline(0, color="k", lw=0.5)
    fig.suptitle(f"Test sample {index} of class {label}: positive (blue) vs negative (red) logits")
    return save_figure(fig, path)


def plot_smoothing_sweep(points: list[dict], path: str | Path) -> Path:
    """Accuracy (overall, Many, Medium, Few) against the smoothing value ``s``."""
    points = sorted(points, key=lambda p: p["smooth"])
    s = [p["smooth"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, style in (("acc", "-o"), ("many", "--s"), ("medium", "--^"), ("few", "--v")):
        ys = [np.nan if p["test"].get(key) is None else 100 * p["test"][key] for p in points]
        if not np.isnan(ys).all():
            ax.plot(s, ys, style, label=key)
    ax.set_xlabel("smoothing value s (target ratio r = 1 + K(1-s)/s)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("LORT: accuracy against the smoothing value (analysis sweep; s is chosen on validation)")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_sensitivity(grid: dict, path: str | Path) -> Path:
    """Heat-maps of test accuracy over learning rate x weight decay, one per method."""
    methods = list(grid["methods"])
    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 4))
    axes = np.atleast_1d(axes)
    for ax, m in zip(axes, methods, strict=True):
        acc = 100 * np.asarray(grid["methods"][m], dtype=float)
        im = ax.imshow(acc, cmap="viridis", origin="lower", vmin=np.nanmin(acc), vmax=np.nanmax(acc))
        ax.set_xticks(range(len(grid["weight_decays"])), [f"{v:g}" for v in grid["weight_decays"]])
        ax.set_yticks(range(len(grid["lrs"])), [f"{v:g}" for v in grid["lrs"]])
        ax.set_xlabel("weight decay")
        ax.set_ylabel("learning rate")
        for (i, j), v in np.ndenumerate(acc):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="w", fontsize=8)
        ax.set_title(f"{m}: test acc (%), {grid['epochs']} epochs")
        fig.colorbar(im, ax=ax)
    return save_figure(fig, path)


def plot_tune_history(rows: list[dict], space: dict[str, dict], path: str | Path) -> Path:
    """A tune study: each trial's validation score and the best so far (left), and the score
    against each searched hyperparameter over its searched range (right; log axes where the
    space is log); pruned trials at their last reported score, the best trial starred."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    keys = list(space)
    numeric = [k for k in keys if all(isinstance(r["params"].get(k, 0.0), (int, float)) for r in rows)][:2]
    fig, axes = plt.subplots(1, 1 + len(numeric), figsize=(6 + 4.5 * len(numeric), 4.2))
    axes = np.atleast_1d(axes)
    ax = axes[0]
    done = [r for r in rows if r["state"] == "complete"]
    pruned = [r for r in rows if r["state"] == "pruned" and r.get("last_reported") is not None]
    top = max(done, key=lambda r: r["val_balanced_acc"]) if done else None
    ax.plot([r["number"] for r in done], [100 * r["val_balanced_acc"] for r in done], "o", label="complete")
    if pruned:
        ax.plot(
            [r["number"] for r in pruned], [100 * r["last_reported"] for r in pruned], "x", color="0.5", label="pruned"
        )
    best, xs, ys = -np.inf, [], []
    for r in sorted(done, key=lambda r: r["number"]):
        best = max(best, 100 * r["val_balanced_acc"])
        xs.append(r["number"])
        ys.append(best)
    if xs:
        last = max(r["number"] for r in rows)
        ax.step(xs + [last], ys + [ys[-1]], where="post", color="k", label="best so far")
    if top is not None:
        ax.plot([top["number"]], [100 * top["val_balanced_acc"]], "*", color="C3", ms=13, label="chosen")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("validation balanced accuracy (%)")
    ax.set_title("study history (pruned: the best score before the stop)")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for ax, key in zip(axes[1:], numeric, strict=True):
        spec = space.get(key, {})
        xs = [r["params"][key] for r in done]
        ax.plot(xs, [100 * r["val_balanced_acc"] for r in done], "o")
        ax.plot([r["params"][key] for r in pruned], [100 * r["last_reported"] for r in pruned], "x", color="0.5")
        if top is not None:
            ax.plot([top["params"][key]], [100 * top["val_balanced_acc"]], "*", color="C3", ms=13)
        lo, hi = (float(spec["low"]), float(spec["high"])) if "low" in spec and "high" in spec else (None, None)
        if spec.get("log"):
            ax.set_xscale("log")
            decades = np.log10(hi / lo) if lo else 2.0
            subs = (1.0, 2.0, 5.0) if decades <= 1.5 else (1.0, 3.0) if decades <= 2.5 else (1.0,)
            ax.xaxis.set_major_locator(LogLocator(subs=subs))
            ax.xaxis.set_major_formatter(plain)
            ax.xaxis.set_minor_formatter(NullFormatter())
        if lo is not None:  # the axis spans the searched range, so a winner at its edge shows
            pad = (hi / lo) ** 0.03 if spec.get("log") and lo > 0 else None
            ax.set_xlim((lo / pad, hi * pad) if pad else (lo - 0.03 * (hi - lo), hi + 0.03 * (hi - lo)))
        ax.set_xlabel(key)
        ax.set_ylabel("validation balanced accuracy (%)")
        ax.set_title(f"score against {key.split('.', 1)[-1]}")
        ax.grid(alpha=0.3)
    return save_figure(fig, path)
