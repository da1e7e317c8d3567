"""Full mode: the public reference protocol of stage 2 — augmented images pass through
the frozen backbone every epoch and only the classifier is optimised. BatchNorm runs in
eval mode (frozen statistics) or train mode (batch statistics, running averages
updated, as when the reference code leaves the backbone in train mode). Validation and test
features are extracted once, with stage 1's running statistics: in train mode the classifier
is evaluated on those, not on features under the updated averages as in the reference code."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data.augment import BatchAugment
from ..errors import LortError


class BackboneFeatures:
    """A feature source for :func:`lort.stage2.trainer.fit_head` that recomputes features
    of augmented training images with the frozen backbone for every batch."""

    def __init__(
        self,
        model: nn.Module,
        images: np.ndarray,
        bn_mode: str = "eval",
        seed: int = 0,
        device: torch.device | None = None,
    ) -> None:
        if bn_mode not in ("eval", "train"):
            raise LortError(f"BatchNorm mode must be eval or train, got {bn_mode!r}")
        if images is None:
            raise LortError("full mode needs a small-image dataset held in memory (e.g. CIFAR)")
        self.model = model
        self.images = images
        self.bn_mode = bn_mode
        self.device = device or torch.device("cpu")
        self.augment = BatchAugment()
        self.gen = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            p.requires_grad_(False)

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def batch(self, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        self.model.train(self.bn_mode == "train")
        raw = torch.from_numpy(np.ascontiguousarray(self.images[idx.cpu().numpy()]))
        x = self.augment(raw.to(self.device), self.gen)  # on the device; the draws on the CPU
        return self.model.forward_features(x.to(self.device, memory_format=torch.channels_last)).float().cpu()
