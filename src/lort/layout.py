"""The files of a run folder, named in one place.

``lort run`` writes a :class:`PipelineRun`; its ``stage1/`` folder is a :class:`Stage1Run`
(also what ``lort train`` writes) and its ``compare/`` folder a :class:`CompareRun` (also
what ``lort compare`` and ``lort retrain`` write). Every module that reads or writes a run
asks these objects for the paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class _File:
    """A file (or folder) of a run folder: read on an instance, it is that path."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, folder, owner=None):
        return self if folder is None else folder.root / self.name


@dataclass(frozen=True)
class _Folder:
    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    def __truediv__(self, name: str) -> Path:
        return self.root / name


class _RecordedRun(_Folder):
    """A run that records its resolved config, its environment and its dataset profile."""

    config = _File("config.yaml")
    environment = _File("environment.json")
    dataset = _File("dataset.json")


class Stage1Run(_RecordedRun):
    """``lort train``: besides the records, the per-epoch metrics log, the last and best
    checkpoints, and the summary (test evaluated once)."""

    metrics = _File("metrics.jsonl")
    last = _File("last.pt")
    best = _File("best.pt")
    summary = _File("summary.json")


class CompareRun(_Folder):
    """``lort compare`` / ``lort retrain``: the leaderboard in three formats, each method's
    logits and classifier, and (retrain) the summary and the full model."""

    leaderboard_json = _File("leaderboard.json")
    leaderboard_md = _File("leaderboard.md")
    leaderboard_csv = _File("leaderboard.csv")
    logits_dir = _File("logits")
    summary = _File("summary.json")
    model = _File("model.pt")

    def logits(self, method: str) -> Path:
        return self.logits_dir / f"{method}.npz"

    def classifier(self, method: str) -> Path:
        return self / "classifiers" / f"{method}.npz"


class PipelineRun(_RecordedRun):
    """``lort run``: everything of the pipeline, one folder per stage, the report at the top."""

    commands = _File("commands.json")
    features = _File("features.npz")
    features_meta = _File("features.json")
    sweep = _File("sweep.json")
    sweep_meta = _File("sweep.meta.json")
    sensitivity = _File("sensitivity.json")
    analysis = _File("analysis.json")
    figures = _File("figures")
    report_html = _File("report.html")
    report_md = _File("report.md")

    @property
    def stage1(self) -> Stage1Run:
        return Stage1Run(self / "stage1")

    @property
    def compare(self) -> CompareRun:
        return CompareRun(self / "compare")
