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
    ax.set_title(
        title
        or f"{len(counts)} classes, {int(counts.sum())} images, IR {counts.max() / counts.min():.0f}"
    )
    return save_figure(fig, path)
