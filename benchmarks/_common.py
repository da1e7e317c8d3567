"""What every benchmark script shares: where the data is, and one-line errors."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from lort.errors import LortError


def default_root() -> str | None:
    """``LORT_DATA`` if set (the readers take it), else ``../shared/data`` beside the repository."""
    if os.environ.get("LORT_DATA"):
        return None
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return str(shared) if shared.is_dir() else None


def run_main(main) -> None:
    """Run a benchmark's ``main``; bad input ends in one line and exit code 2, never a traceback."""
    try:
        main()
    except LortError as exc:
        print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
        sys.exit(2)


def read_run_json(path: Path) -> dict:
    """A JSON file of a lort run folder; a missing or unreadable one is a one-line error."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise LortError(f"{path}: cannot read it ({exc}); is it a finished lort run?") from None


def finished_stage1(run: Path) -> dict:
    """``RUN/stage1/summary.json`` of a run whose stage 1 is finished and scored on test."""
    path = Path(run) / "stage1" / "summary.json"
    summary = read_run_json(path)
    if "test" not in summary:
        raise LortError(f"{path}: no test report; is stage 1 finished?")
    return summary


def cifar_checkpoint_data(path, ckpt: dict, root: str | None):
    """The CIFAR data a stage-1 checkpoint was trained on, rebuilt from its recorded data config.

    ``root`` (when given) replaces the recorded data folder. Returns ``(raw, dataset,
    unused)``: the raw CIFAR archive's splits (``read_cifar``), the long-tailed
    dataset stage 1 used, and the indices of the raw training images that stage 1 neither trained
    nor validated on (sorted). A checkpoint of another dataset is a one-line error naming it.
    """
    import numpy as np

    from lort.data.config import DataConfig, build_dataset
    from lort.data.readers import read_cifar

    data = dict(ckpt["config"]["data"])
    if root is not None:
        data["root"] = root
    cfg = DataConfig(**data)
    if cfg.dataset not in ("cifar10", "cifar100"):
        raise LortError(f"{path}: a CIFAR checkpoint is needed, this one is of {cfg.dataset!r}")
    raw = read_cifar(cfg.dataset, cfg.root)
    ds = build_dataset(cfg)
    used = np.concatenate([ds.train.source_index] + ([ds.val.source_index] if ds.val is not None else []))
    unused = np.setdiff1d(np.arange(len(raw.splits["train"])), used)
    return raw, ds, unused
