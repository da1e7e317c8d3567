"""Batched tensor augmentation for small images, and a batch iterator over uint8 arrays.

Random crop with zero padding, horizontal flip and normalisation run on a whole batch
as one gather plus elementwise ops: no per-sample Python in the hot loop. Batches come
out in channels_last memory format (NHWC storage viewed as NCHW), which is also the
layout the uint8 cache holds, so no transpose copy is made.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


class BatchAugment:
    """``uint8 (N, H, W, 3)`` -> normalised ``float (N, 3, H, W)`` channels_last."""

    def __init__(self, pad: int = 4, flip: bool = True, mean=CIFAR_MEAN, std=CIFAR_STD) -> None:
        self.pad = pad
        self.flip = flip
        self.mean = torch.tensor(mean, dtype=torch.float32) * 255.0
        self.inv_std = 1.0 / (torch.tensor(std, dtype=torch.float32) * 255.0)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.mean) * self.inv_std  # NHWC, broadcast over channels
        return x.permute(0, 3, 1, 2)  # NCHW view of NHWC storage == channels_last

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n, h, w, _ = images.shape
        p = self.pad
        if p:
            padded = torch.nn.functional.pad(images, (0, 0, p, p, p, p))
            oy = torch.randint(0, 2 * p + 1, (n, 1), generator=generator)
            ox = torch.randint(0, 2 * p + 1, (n, 1), generator=generator)
        else:
            padded = images
            oy = torch.zeros((n, 1), dtype=torch.long)
            ox = torch.zeros((n, 1), dtype=torch.long)
        rows = oy + torch.arange(h)
        cols = torch.arange(w).expand(n, w)
        if self.flip:
            flip = torch.rand(n, generator=generator) < 0.5
            cols = torch.where(flip[:, None], w - 1 - cols, cols)
        cols = ox + cols
        batch_idx = torch.arange(n)[:, None, None]
        out = padded[batch_idx, rows[:, :, None], cols[:, None, :]]
        return self.normalize(out)


def iterate_batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    augment: BatchAugment | None = None,
    drop_last: bool = False,
    indices: np.ndarray | None = None,
    normalizer: BatchAugment | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches from a uint8 image array (memory-mapped is fine).

    ``indices`` restricts and orders the samples (e.g. a rank's shard); ``shuffle``
    permutes them with ``generator``. Without ``augment`` images are only normalised
    (by ``normalizer``'s mean and std; default CIFAR's).
    """
    order = np.arange(len(labels)) if indices is None else np.asarray(indices)
    if shuffle:
        order = order[torch.randperm(len(order), generator=generator).numpy()]
    norm = normalizer or augment or BatchAugment(pad=0, flip=False)
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        x = torch.from_numpy(np.ascontiguousarray(images[idx]))
        y = torch.from_numpy(np.asarray(labels[idx], dtype=np.int64))
        yield (augment(x, generator) if augment is not None else norm.normalize(x)), y
