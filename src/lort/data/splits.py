"""In-memory description of a dataset's splits, shared by every reader."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Split:
    """One split: labels plus either decoded uint8 images or image file paths.

    Small images (CIFAR and other <= 64 pixel sets) are held as a ``(N, H, W, 3)``
    uint8 array, usually memory-mapped from the cache, so no epoch decodes a JPEG.
    Large images are streamed from ``paths`` by DataLoader workers.
    """

    labels: np.ndarray
    images: np.ndarray | None = None
    paths: list[str] | None = None
    source_index: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.images is None and self.paths is None:
            raise ValueError("a split needs images or paths")
        n = len(self.labels)
        if self.images is not None and len(self.images) != n:
            raise ValueError(f"{len(self.images)} images but {n} labels")
        if self.paths is not None and len(self.paths) != n:
            raise ValueError(f"{len(self.paths)} paths but {n} labels")
        if self.source_index is None:
            self.source_index = np.arange(n, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> Split:
        index = np.asarray(index, dtype=np.int64)
        return Split(
            labels=self.labels[index],
            images=None if self.images is None else self.images[index],
            paths=None if self.paths is None else [self.paths[i] for i in index],
            source_index=self.source_index[index],
        )

    def counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.labels, minlength=num_classes)


@dataclass
class RawDataset:
    """What a reader returns: class names and the splits as the source defines them.

    ``long_tailed`` is True when the source already is long-tailed (ImageNet-LT,
    iNaturalist 2018, Places-LT lists): no profile is applied to its train split.
    """

    name: str
    classes: list[str]
    splits: dict[str, Split]
    source: str
    long_tailed: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)
