"""Feature files: ``.npz`` with ``<split>_features`` (N x D float) and ``<split>_labels``
(N int) for ``split`` in train, val (optional) and test, plus optional ``classes``
(names) and stage-1 classifier ``init_weight`` (K x D) / ``init_bias`` (K)."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import LortError
from ..io import load_npz, save_npz
from .longtail import class_groups

SPLITS = ("train", "val", "test")


@dataclass
class FeatureSet:
    """Frozen features of each split, the class names and (optionally) the stage-1 classifier."""

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    classes: list[str]
    init_weight: np.ndarray | None = None
    init_bias: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def dim(self) -> int:
        return self.splits["train"][0].shape[1]

    def has_split(self, name: str) -> bool:
        """Whether split ``name`` is present and holds samples (e.g. a validation split)."""
        return name in self.splits and len(self.splits[name][1]) > 0

    @property
    def train_counts(self) -> np.ndarray:
        """Training images per class. With ``views`` > 1 the train split holds each image once per
        view (the plain image, then augmented copies), so its label counts are divided by the views:
        shot groups, effective numbers and priors are of the images, not of the feature rows."""
        counts = np.bincount(self.splits["train"][1], minlength=self.num_classes)
        views = self.views
        if np.any(counts % views):
            raise LortError(f"meta_json views = {views}, but the train rows are not that many views of each image")
        return counts // views

    @property
    def views(self) -> int:
        """Training views per image recorded in the metadata (1 for plain features)."""
        views = self.meta.get("views", 1) if isinstance(self.meta, dict) else 1
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise LortError(f"meta_json views = {views!r} is not a whole number of views (1 or more)")
        return views

    @property
    def groups(self) -> np.ndarray:
        return class_groups(self.train_counts)

    def save(self, path: str | Path) -> None:
        arrays = {}
        for split, (x, y) in self.splits.items():
            arrays[f"{split}_features"] = x
            arrays[f"{split}_labels"] = y
        arrays["classes"] = np.asarray(self.classes)
        arrays["meta_json"] = np.asarray(json.dumps(self.meta, default=str))
        if self.init_weight is not None:
            arrays["init_weight"] = self.init_weight
            arrays["init_bias"] = self.init_bias if self.init_bias is not None else np.zeros(len(self.init_weight))
        save_npz(path, **arrays)


def first_nonfinite_row(x: np.ndarray, rows: int = 8192) -> int | None:
    """The first row of ``x`` holding NaN or Inf (None if all are finite), checked in
    blocks of ``rows`` so that a memory-mapped array is never copied whole."""
    if not np.issubdtype(x.dtype, np.floating):
        return None
    for start in range(0, len(x), rows):
        bad = np.flatnonzero(~np.isfinite(x[start : start + rows]).all(axis=1))
        if len(bad):
            return start + int(bad[0])
    return None


def validate_features(
    splits: dict[str, tuple[np.ndarray, np.ndarray]], num_classes: int, where: str = "features"
) -> None:
    """Check shapes, finiteness, label range and that no class is empty in train."""
    if "train" not in splits:
        raise LortError(f"{where}: no train split")
    dim = None
    for split, (x, y) in splits.items():
        if x.ndim != 2:
            raise LortError(f"{where}: {split} features must be 2-D (samples x dims), got shape {x.shape}")
        if y.ndim != 1 or len(y) != len(x):
            raise LortError(f"{where}: {split} has {len(x)} feature rows but {len(y)} labels")
        if dim is not None and x.shape[1] != dim:
            raise LortError(f"{where}: {split} features have {x.shape[1]} dims, train has {dim}")
        dim = x.shape[1] if dim is None else dim
        if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
            raise LortError(f"{where}: {split} features are not numeric ({x.dtype})")
        bad = first_nonfinite_row(x)
        if bad is not None:
            raise LortError(f"{where}: {split} features hold NaN or Inf (row {bad})")
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            v = y.min() if y.min() < 0 else y.max()
            raise LortError(f"{where}: {split} label {v} outside [0, {num_classes})")
    counts = np.bincount(splits["train"][1], minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        raise LortError(f"{where}: class {empty[0]} has no training samples")


def load_features(path: str | Path) -> FeatureSet:
    path = Path(path)
    try:
        arrays = load_npz(path)  # large arrays memory-mapped: no second copy in memory
    except FileNotFoundError:
        raise LortError(f"{path}: no such feature file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise LortError(f"{path}: not a readable .npz feature file ({exc})") from None
    splits = {}
    for split in SPLITS:
        if f"{split}_features" in arrays:
            if f"{split}_labels" not in arrays:
                raise LortError(f"{path}: has {split}_features but no {split}_labels")
            x = arrays[f"{split}_features"]
            y = arrays[f"{split}_labels"]
            if not np.issubdtype(y.dtype, np.integer):
                raise LortError(f"{path}: {split}_labels must be integers, got {y.dtype}")
            if y.ndim != 1:  # before the classes are counted from the labels
                raise LortError(f"{path}: {split}_labels must be 1-D (one label per row), got shape {y.shape}")
            numeric = np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
            splits[split] = (  # shape and dtype are checked by validate_features below
                x.astype(np.float32, copy=False) if x.ndim == 2 and numeric else x,
                y.astype(np.int64),
            )
    for split in ("train", "test"):
        if split not in splits:
            raise LortError(f"{path}: missing {split}_features / {split}_labels")
    if "classes" in arrays:
        if arrays["classes"].ndim != 1:
            raise LortError(f"{path}: classes must be a 1-D list of names, got shape {arrays['classes'].shape}")
        classes = [str(c) for c in arrays["classes"]]
    else:
        train_labels = splits["train"][1]  # the training labels define the classes
        classes = [str(i) for i in range(int(train_labels.max()) + 1 if len(train_labels) else 0)]
    validate_features(splits, len(classes), str(path))
    init_w = arrays.get("init_weight")
    init_b = arrays.get("init_bias")
    if init_w is not None and init_w.shape != (len(classes), splits["train"][0].shape[1]):
        raise LortError(
            f"{path}: init_weight has shape {init_w.shape}, expected {(len(classes), splits['train'][0].shape[1])}"
        )
    if init_b is not None and (init_w is None or init_b.shape != (len(classes),)):
        raise LortError(f"{path}: init_bias has shape {init_b.shape}, expected ({len(classes)},) beside an init_weight")
    for name, arr in (("init_weight", init_w), ("init_bias", init_b)):
        if arr is not None and not (np.issubdtype(arr.dtype, np.number) and np.isfinite(arr).all()):
            raise LortError(f"{path}: {name} must hold finite numbers")
    if init_w is not None:
        init_w = init_w.astype(np.float32)
        init_b = init_b.astype(np.float32) if init_b is not None else None
    meta = {}
    if "meta_json" in arrays:
        try:
            meta = json.loads(str(arrays["meta_json"]))
        except ValueError:
            raise LortError(f"{path}: meta_json is not valid JSON") from None
    fs = FeatureSet(splits=splits, classes=classes, init_weight=init_w, init_bias=init_b, meta=meta)
    try:
        _ = fs.train_counts  # checks the recorded views against the train rows
    except LortError as exc:
        raise LortError(f"{path}: {exc}") from None
    return fs
