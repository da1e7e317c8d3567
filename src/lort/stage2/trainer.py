"""The one stage-2 training loop: re-train a classifier head on cached features.

Methods differ only in what they plug in — the head, the loss, the sampler, MaxNorm —
never in the loop. The loop validates after every epoch and keeps the head of the best
validation epoch, so choosing the number of epochs on validation costs nothing.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import LortError


@dataclass
class Schedule:
    """The re-training recipe. Defaults: the public reference code's stage 2 (SGD lr 5e-4,
    momentum 0.9, no weight decay, batch 64, cosine, 20 epochs)."""

    epochs: int = 20
    lr: float = 5e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise LortError(f"stage-2 learning rate must be > 0, got {self.lr!r}")
        if self.epochs < 0:
            raise LortError(f"stage-2 epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise LortError(f"stage-2 batch size must be >= 1, got {self.batch_size}")
        if self.weight_decay < 0:
            raise LortError(f"stage-2 weight decay must be >= 0, got {self.weight_decay}")


def epoch_order(
    labels: np.ndarray, sampler: str, gen: torch.Generator, num_classes: int
) -> torch.Tensor:
    """Sample indices of one epoch (``len(labels)`` draws).

    ``natural``: a permutation. ``balanced``: class-balanced sampling (Kang et al., 2020) —
    a class uniformly at random, then one of its samples uniformly. ``sqrt``: classes
    drawn with probability proportional to ``sqrt(n_k)``."""
    n = len(labels)
    if sampler == "natural":
        return torch.randperm(n, generator=gen)
    counts = np.bincount(labels, minlength=num_classes)
    if sampler == "balanced":
        class_p = np.ones(num_classes)
    elif sampler == "sqrt":
        class_p = np.sqrt(counts)
    else:
        raise LortError(f"unknown sampler {sampler!r}; choose natural, balanced or sqrt")
    class_p = torch.as_tensor(class_p / class_p.sum(), dtype=torch.float64)
    classes = torch.multinomial(class_p, n, replacement=True, generator=gen)
    order = torch.as_tensor(np.argsort(labels, kind="stable"))
    starts = torch.as_tensor(np.concatenate([[0], np.cumsum(counts)[:-1]]))
    offsets = (
        torch.rand(n, generator=gen, dtype=torch.float64) * torch.as_tensor(counts)[classes]
    ).long()
    return order[starts[classes] + offsets]


LossFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


class CachedFeatures:
    """Training features held in memory (feature-cache mode)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        return self.x[idx]


def fit_head(
    head: nn.Module,
    x: torch.Tensor | CachedFeatures,
    y: torch.Tensor,
    loss_fn: LossFn,
    schedule: Schedule,
    sampler: str = "natural",
    score_fn: Callable[[nn.Module], float] | None = None,
    max_norm: float | None = None,
) -> tuple[nn.Module, list[float]]:
    """Train ``head`` on features ``x`` / labels ``y``; ``loss_fn(logits, y, epoch)``.

    ``x`` is a feature tensor or any source with ``batch(idx, epoch)`` (e.g. the frozen
    backbone over augmented images, :class:`lort.stage2.full.BackboneFeatures`).

    After each epoch ``score_fn(head)`` (validation balanced accuracy) is recorded; the
    head of the best-scoring epoch (the first on ties) is returned with the scores. With
    no ``score_fn`` the last epoch's head is returned."""
    source = x if hasattr(x, "batch") else CachedFeatures(x)
    params = [p for p in head.parameters() if p.requires_grad]
    scores: list[float] = []
    if schedule.epochs == 0 or not params:
        return head, [score_fn(head)] if score_fn else []
    gen = torch.Generator().manual_seed(schedule.seed)
    opt = torch.optim.SGD(
        params, lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay
    )
    n = len(y)
    steps_per_epoch = math.ceil(n / schedule.batch_size)
    total = steps_per_epoch * schedule.epochs
    labels_np = y.numpy()
    k = int(head.weight.shape[0])
    best_state, best_score, step = None, -math.inf, 0
    for epoch in range(schedule.epochs):
        order = epoch_order(labels_np, sampler, gen, k)
        head.train()
        for start in range(0, n, schedule.batch_size):
            idx = order[start : start + schedule.batch_size]
            for group in opt.param_groups:
                group["lr"] = schedule.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
            loss = loss_fn(head(source.batch(idx, epoch)), y[idx], epoch)
            if not torch.isfinite(loss):
                raise LortError(
                    f"stage-2 loss became {loss.item()} at epoch {epoch + 1}; lower the learning rate "
                    f"(now {schedule.lr}) or check the features for extreme values"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if max_norm is not None:
                with torch.no_grad():
                    w = head.weight
                    w.mul_(
                        torch.clamp(
                            max_norm / w.norm(dim=1, keepdim=True).clamp_min(1e-12), max=1.0
                        )
                    )
        if score_fn is not None:
            head.eval()
            score = score_fn(head)
            scores.append(score)
            if score > best_score:
                best_score, best_state = score, copy.deepcopy(head.state_dict())
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()
    return head, scores
