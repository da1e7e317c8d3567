"""Long-tailed subsets, the validation split and Many/Medium/Few groups."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import LortError
from .profiles import class_counts
from .splits import RawDataset, Split

MANY, MEDIUM, FEW = 0, 1, 2
GROUP_NAMES = ("many", "medium", "few")
MANY_ABOVE = 100  # a class with more than 100 training images is Many
FEW_BELOW = 20  # fewer than 20 is Few; 20-100 is Medium


def class_groups(train_counts: np.ndarray) -> np.ndarray:
    """Group of each class from its training count: 0 Many (>100), 1 Medium (20-100), 2 Few (<20)."""
    counts = np.asarray(train_counts)
    groups = np.full(len(counts), MEDIUM, dtype=np.int64)
    groups[counts > MANY_ABOVE] = MANY
    groups[counts < FEW_BELOW] = FEW
    return groups


@dataclass
class LongTailedDataset:
    """Train (long-tailed), validation (balanced, held out from train) and test splits."""

    name: str
    classes: list[str]
    train: Split
    val: Split | None
    test: Split
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def train_counts(self) -> np.ndarray:
        return self.train.counts(self.num_classes)

    @property
    def groups(self) -> np.ndarray:
        return class_groups(self.train_counts)

    def summary(self) -> dict[str, Any]:
        counts = self.train_counts
        groups = self.groups
        return {
            "dataset": self.name,
            "num_classes": self.num_classes,
            "train_counts": counts.tolist(),
            "train_size": int(counts.sum()),
            "imbalance_ratio": round(float(counts.max() / max(counts.min(), 1)), 2),  # measured: max / min count
            "groups": {g: int((groups == i).sum()) for i, g in enumerate(GROUP_NAMES)},
            "val_size": 0 if self.val is None else len(self.val),
            "val_counts": None if self.val is None else self.val.counts(self.num_classes).tolist(),
            "test_size": len(self.test),
            **self.info,
        }

    def require_trained_on(self, recorded: list[int] | None, checkpoint, consequence: str) -> None:
        """Stop with one line when a checkpoint's recorded per-class training counts are not the
        ones its data config builds now (images added or removed since stage 1)."""
        if recorded is None or list(recorded) == self.train_counts.tolist():
            return
        raise LortError(
            f"{checkpoint}: stage 1 trained on {sum(recorded)} images ({max(recorded)} to {min(recorded)} a class), "
            f"its data config now gives {len(self.train)} ({self.describe()}); the data changed, so {consequence}"
        )

    def describe(self) -> str:
        """One line for a run's log: what the splits hold and how the training split was made."""
        s = self.summary()
        counts = s["train_counts"]
        made = ""
        source_size = s.get("source_train_size")
        if s.get("profile") in ("exp", "step"):
            left = (source_size or 0) - s["train_size"] - s["val_size"] * (s.get("val_source") is None)
            made = f", profile {s['profile']}, imbalance ratio {s['imbalance_ratio_requested']:g}"
            if left > 0 and self.name not in BENCHMARK_SOURCES:  # a user's own folder, subsampled
                made += f": {left} of the folder's {source_size} training images left out, --profile none keeps them"
        elif s.get("profile") == "none":
            made = ", the source's own class distribution"
        val = f"validation {s['val_size']}" + (f" ({s['val_source']})" if s.get("val_source") else "")
        if s.get("val_shortfall"):
            val += f", fewer than {s['val_per_class']} for {', '.join(s['val_shortfall'])}"
        return (
            f"data: {s['dataset']}, {s['num_classes']} classes; train {s['train_size']} images "
            f"({max(counts)} to {min(counts)} a class{made}); {val}; test {s['test_size']}"
        )


def _hold_out(train, k: int, per_class: int, rng: np.random.Generator):
    """A balanced validation split drawn (seeded) from ``train``: ``min(per_class, n_c // 2)``
    images of each class ``c``; the rest stay in training."""
    val_idx = []
    for c in range(k):
        idx = np.flatnonzero(train.labels == c)
        take = min(per_class, len(idx) // 2)
        if take:
            val_idx.append(np.sort(rng.choice(idx, size=take, replace=False)))
    held = np.concatenate(val_idx) if val_idx else np.zeros(0, dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(train.labels)), held)
    return train.subset(keep), (train.subset(held) if len(held) else None)


# The long-tail construction's defaults, written once: DataConfig and the command line read them.
IMBALANCE_RATIO = 100.0
# Sources that are balanced benchmarks, made long-tailed by the profile on purpose.
BENCHMARK_SOURCES = ("cifar10", "cifar100")
PROFILE = "exp"
SELECTION = "first"
SPLIT_SEED = 0
VAL_PER_CLASS = 20


def make_long_tailed(
    raw: RawDataset,
    imbalance_ratio: float = IMBALANCE_RATIO,
    profile: str = PROFILE,
    max_per_class: int | None = None,
    selection: str = SELECTION,
    seed: int = SPLIT_SEED,
    val_per_class: int = VAL_PER_CLASS,
    step_fraction: float = 0.5,
) -> LongTailedDataset:
    """Subsample ``raw``'s train split to an imbalance profile and hold out a validation split.

    Class ``k`` keeps ``n_k`` images (see :func:`lort.data.profiles.class_counts`, head
    class = class 0): the first ``n_k`` in file order (``selection='first'``, as the
    public reference code does) or a seeded random choice (``'random'``). The
    validation split takes up to ``val_per_class`` images per class, seeded at random,
    from the training images the subset did not use, so it never overlaps train or
    test. A class whose every image is in the subset (the head class at the standard
    ``n_max``) has fewer validation images; ``info['val_shortfall']`` names them. Pass
    a smaller ``max_per_class`` for a validation split balanced over every class.

    Profile ``none`` keeps the source's own class distribution (every image but the
    validation ones, at most ``max_per_class``): the choice for a user's own data. Its
    validation split, as any held out of a training split here, takes at most half of a
    class, so a tail class is never left with one training image. A source with its own
    ``val`` split (an image folder's ``val/``) keeps it as the validation split, whatever
    the profile, and no training image is held out for validation.
    Sources that already are long-tailed (``raw.long_tailed``) keep their train split
    (without a validation list, a balanced validation split is held out of it: up to
    ``val_per_class`` images a class, at most half of each class, stated in ``info``);
    their own ``val`` split, if any, is the validation split.
    """
    if selection not in ("first", "random"):
        raise LortError(f"unknown selection {selection!r}; choose first or random")
    if val_per_class < 0:
        raise LortError(f"val_per_class must be >= 0, got {val_per_class}")
    k = raw.num_classes
    train = raw.splits["train"]
    test = raw.splits["test"]
    available = train.counts(k)
    empty = np.flatnonzero(available == 0)
    if len(empty):
        raise LortError(f"{raw.source}: class {raw.classes[empty[0]]!r} has no training images")
    info: dict[str, Any] = {"source": raw.source, "seed": seed}
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(train.labels == c) for c in range(k)]
    if raw.long_tailed:
        info.update(profile="given", selection="given")
        lt_train = train
        val = raw.splits.get("val")
        if val is None and val_per_class > 0:
            lt_train, val = _hold_out(train, k, val_per_class, rng)
            info.update(
                val_source=f"held out from the training list: up to {val_per_class} images a class, "
                "never more than half of a class (no validation list was given)"
            )
    else:
        own_val = raw.splits.get("val")
        per_class = 0 if own_val is not None else val_per_class
        n_max = int(max_per_class) if max_per_class is not None else int(available.max())
        if profile == "none":  # keep the source's own distribution, minus the validation images
            held = np.minimum(per_class, available // 2)
            counts = [int(min(n_max, a - h)) for a, h in zip(available, held, strict=True)]
        else:
            counts = class_counts(profile, n_max, k, imbalance_ratio, step_fraction)
        short = [c for c in range(k) if counts[c] > available[c]]
        if short:
            c = short[0]
            raise LortError(
                f"{raw.source}: class {raw.classes[c]!r} has {available[c]} training images, the profile asks for "
                f"{counts[c]}; lower max_per_class or the imbalance ratio, or keep the source's own "
                "distribution with profile none"
            )
        chosen, val_idx, shortfall = [], [], []
        for c in range(k):
            idx = by_class[c]
            if selection == "random":
                idx = rng.permutation(idx)
            chosen.append(idx[: counts[c]])
            rest = idx[counts[c] :]
            take = min(per_class, len(rest))
            if take < per_class:
                shortfall.append(raw.classes[c])
            val_idx.append(np.sort(rng.choice(rest, size=take, replace=False)) if take else rest[:0])
        train_idx = np.concatenate(chosen)
        lt_train = train.subset(train_idx)
        val = own_val if own_val is not None else (train.subset(np.concatenate(val_idx)) if per_class else None)
        info.update(
            profile=profile,
            imbalance_ratio_requested=None if profile == "none" else float(imbalance_ratio),
            max_per_class=n_max,
            selection=selection,
            val_per_class=per_class,
            val_shortfall=shortfall,
            source_train_size=int(available.sum()),
        )
        if own_val is not None:
            info.update(val_source="the source's own val/ split")
        elif profile == "none" and per_class:
            info.update(val_source=f"held out: up to {per_class} unused training images a class, never more than half")
    empty = np.flatnonzero(lt_train.counts(k) == 0)
    if len(empty):
        raise LortError(f"class {raw.classes[empty[0]]!r} is left with zero training images")
    return LongTailedDataset(name=raw.name, classes=raw.classes, train=lt_train, val=val, test=test, info=info)
