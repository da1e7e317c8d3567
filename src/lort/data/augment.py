"""Batched tensor augmentation for small images, and a batch iterator over uint8 arrays.

Random crop with zero padding, horizontal flip and normalisation run on a whole batch
as one gather plus elementwise ops: no per-sample Python in the hot loop. An optional
policy (RandAugment, AutoAugment; :mod:`.policies`) and Cutout follow the flip, and
:class:`BatchMix` mixes whole batches (mixup, CutMix) after normalisation. Batches come
out in channels_last memory format (NHWC storage viewed as NCHW), which is also the
layout the uint8 cache holds, so no transpose copy is made.

The augmentation runs on the device of the images it is given (``iterate_batches(...,
device=)`` moves each uint8 batch there first, a quarter of the float batch's bytes), while
every random draw comes from the CPU generator: the same seed gives the same crops, flips,
policies and Cutout squares on any device, and no draw waits on the device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from .policies import BatchPolicy

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


class BatchAugment:
    """``uint8 (N, H, W, 3)`` -> normalised ``float (N, 3, H, W)`` channels_last."""

    def __init__(
        self,
        pad: int = 4,
        flip: bool = True,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        policy: BatchPolicy | None = None,
        cutout: int = 0,
    ) -> None:
        self.pad = pad
        self.flip = flip
        self.policy = policy
        self.cutout = cutout
        self.mean = torch.tensor(mean, dtype=torch.float32) * 255.0
        self.inv_std = 1.0 / (torch.tensor(std, dtype=torch.float32) * 255.0)
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        dev = images.device
        if dev not in self._stats:  # copied to each device once
            self._stats[dev] = (self.mean.to(dev), self.inv_std.to(dev))
        mean, inv_std = self._stats[dev]
        x = (images.float() - mean) * inv_std  # NHWC, broadcast over channels
        return x.permute(0, 3, 1, 2)  # NCHW view of NHWC storage == channels_last

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment ``images`` on their device; the draws come from ``generator`` (CPU)."""
        n, h, w, _ = images.shape
        dev = images.device
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
        out = padded[batch_idx.to(dev), rows[:, :, None].to(dev), cols[:, None, :].to(dev)]
        if self.policy is not None:
            out = self.policy(out.float(), generator)
        x = self.normalize(out)
        if self.cutout:
            x = x * cutout_mask(n, h, w, self.cutout, generator).to(dev)
        return x


def cutout_mask(n: int, h: int, w: int, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """``(n, 1, h, w)`` ones with one ``size`` square of zeros per image, its centre uniform over
    the image (so the square may be clipped by the border), as Cutout draws it (on the CPU)."""
    cy = torch.randint(0, h, (n, 1, 1), generator=generator)
    cx = torch.randint(0, w, (n, 1, 1), generator=generator)
    ys = torch.arange(h).view(1, h, 1)
    xs = torch.arange(w).view(1, 1, w)
    inside = (
        (ys >= cy - size // 2) & (ys < cy - size // 2 + size) & (xs >= cx - size // 2) & (xs < cx - size // 2 + size)
    )
    return (~inside).float()[:, None]


class BatchMix:
    """mixup (Zhang et al., ICLR 2018) and CutMix (Yun et al., ICCV 2019) over a whole batch.

    Each mixed batch draws ``lam ~ Beta(alpha, alpha)`` and a permutation; the loss is
    ``lam * CE(y) + (1 - lam) * CE(y[perm])``. With both on, a mixed batch picks one at
    random; ``prob`` is the fraction of batches mixed. CutMix's ``lam`` is the uncut area.
    """

    def __init__(self, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0) -> None:
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob

    @property
    def enabled(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(mixed x, partner labels, lam)``; ``lam == 1`` means the batch is unmixed."""
        if not self.enabled or rng.random() >= self.prob:
            return x, y, 1.0
        kinds = [k for k, a in (("mixup", self.mixup_alpha), ("cutmix", self.cutmix_alpha)) if a > 0]
        kind = kinds[int(rng.integers(len(kinds)))]
        alpha = self.mixup_alpha if kind == "mixup" else self.cutmix_alpha
        lam = float(rng.beta(alpha, alpha))
        perm = torch.from_numpy(rng.permutation(len(y))).to(x.device)
        if kind == "mixup":
            return x.mul(lam).add_(x[perm], alpha=1.0 - lam), y[perm], lam
        h, w = x.shape[-2:]
        ratio = math.sqrt(1.0 - lam)
        ch, cw = int(h * ratio), int(w * ratio)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        mixed = x.clone()
        mixed[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
        return mixed, y[perm], 1.0 - (y1 - y0) * (x1 - x0) / (h * w)


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
    device: torch.device | str | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches from a uint8 image array (memory-mapped is fine).

    ``indices`` restricts and orders the samples (e.g. a rank's shard); ``shuffle``
    permutes them with ``generator``. Without ``augment`` images are only normalised
    (by ``normalizer``'s mean and std; default CIFAR's). With ``device`` each uint8 batch
    is copied there (pinned, asynchronously, for CUDA) and augmented there; ``x`` and ``y``
    come out on it.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    pin = device.type == "cuda"
    order = np.arange(len(labels)) if indices is None else np.asarray(indices)
    if shuffle:
        order = order[torch.randperm(len(order), generator=generator).numpy()]
    norm = normalizer or augment or BatchAugment(pad=0, flip=False)
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        x = torch.from_numpy(np.ascontiguousarray(images[idx]))
        y = torch.from_numpy(np.asarray(labels[idx], dtype=np.int64))
        if device.type != "cpu":
            x = (x.pin_memory() if pin else x).to(device, non_blocking=pin)
            y = (y.pin_memory() if pin else y).to(device, non_blocking=pin)
        yield (augment(x, generator) if augment is not None else norm.normalize(x)), y
