"""The files of a run folder, named in one place.

``lort run`` writes a :class:`PipelineRun`; its ``stage1/`` folder is a :class:`Stage1Run`
(also what ``lort train`` writes) and its ``compare/`` folder a :class:`CompareRun` (also
what ``lort compare`` and ``lort retrain`` write). Every module that reads or writes a run
asks these objects for the paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class _Folder:
    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    def __truediv__(self, name: str) -> Path:
        return self.root / name


class Stage1Run(_Folder):
    """``lort train``: the config, the environment, the dataset profile, the per-epoch
    metrics log, the last and best checkpoints, and the summary (test evaluated once)."""

    @property
    def config(self) -> Path:
        return self / "config.yaml"

    @property
    def environment(self) -> Path:
        return self / "environment.json"

    @property
    def dataset(self) -> Path:
        return self / "dataset.json"

    @property
    def metrics(self) -> Path:
        return self / "metrics.jsonl"

    @property
    def last(self) -> Path:
        return self / "last.pt"

    @property
    def best(self) -> Path:
        return self / "best.pt"

    @property
    def summary(self) -> Path:
        return self / "summary.json"


class CompareRun(_Folder):
    """``lort compare`` / ``lort retrain``: the leaderboard in three formats, each method's
    logits and classifier, and (retrain) the summary and the full model."""

    @property
    def leaderboard_json(self) -> Path:
        return self / "leaderboard.json"

    @property
    def leaderboard_md(self) -> Path:
        return self / "leaderboard.md"

    @property
    def leaderboard_csv(self) -> Path:
        return self / "leaderboard.csv"

    def logits(self, method: str) -> Path:
        return self / "logits" / f"{method}.npz"

    @property
    def logits_dir(self) -> Path:
        return self / "logits"

    def classifier(self, method: str) -> Path:
        return self / "classifiers" / f"{method}.npz"

    @property
    def summary(self) -> Path:
        return self / "summary.json"

    @property
    def model(self) -> Path:
        return self / "model.pt"


class PipelineRun(_Folder):
    """``lort run``: everything of the pipeline, one folder per stage, the report at the top."""

    @property
    def config(self) -> Path:
        return self / "config.yaml"

    @property
    def commands(self) -> Path:
        return self / "commands.json"

    @property
    def environment(self) -> Path:
        return self / "environment.json"

    @property
    def dataset(self) -> Path:
        return self / "dataset.json"

    @property
    def stage1(self) -> Stage1Run:
        return Stage1Run(self / "stage1")

    @property
    def features(self) -> Path:
        return self / "features.npz"

    @property
    def features_meta(self) -> Path:
        return self / "features.json"

    @property
    def compare(self) -> CompareRun:
        return CompareRun(self / "compare")

    @property
    def sweep(self) -> Path:
        return self / "sweep.json"

    @property
    def sweep_meta(self) -> Path:
        return self / "sweep.meta.json"

    @property
    def sensitivity(self) -> Path:
        return self / "sensitivity.json"

    @property
    def analysis(self) -> Path:
        return self / "analysis.json"

    @property
    def figures(self) -> Path:
        return self / "figures"

    @property
    def report_html(self) -> Path:
        return self / "report.html"

    @property
    def report_md(self) -> Path:
        return self / "report.md"
