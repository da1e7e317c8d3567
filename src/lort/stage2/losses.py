"""Stage-2 losses. :class:`LogitsRetargetingLoss` (LORT) works in any PyTorch loop.

LORT's target for a sample of class ``y`` among ``K`` classes is
``(1 - s) * onehot(y) + s / K``: the true class gets ``1 - s + s/K`` and every other class
``s/K``. The ratio of true to other target is ``r = 1 + K (1 - s) / s``, so the same
``s`` means different things for different ``K``; :func:`smooth_from_ratio` sets ``s``
from a K-independent ratio instead.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .params import Param

DEFAULT_SMOOTH = 0.98  # LORT's s, as published

# LORT's two parametrisations, declared once: the method, the loss and the estimator all check with these.
SMOOTH = Param(
    "smooth",
    default=DEFAULT_SMOOTH,
    source_default=DEFAULT_SMOOTH,
    grid=(0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99),
    low=0.0,
    high=1.0,
    high_open=True,
    doc="s of the target (1 - s) * onehot + s / K",
)
TARGET_RATIO = Param(
    "target_ratio",
    default=None,
    low=1.0,
    low_open=True,
    doc="K-independent alternative to s: true-class over other-class target, r = 1 + K(1 - s)/s",
)


def check_smooth(smooth: float) -> float:
    return SMOOTH.check(smooth, "LORT")


def smooth_from_ratio(ratio: float, num_classes: int) -> float:
    """The ``s`` whose target gives the true class ``ratio`` times the mass of each other class."""
    ratio = TARGET_RATIO.check(ratio, "LORT")
    return num_classes / (num_classes + ratio - 1.0)


def ratio_from_smooth(smooth: float, num_classes: int) -> float:
    smooth = check_smooth(smooth)
    return math.inf if smooth == 0 else 1.0 + num_classes * (1.0 - smooth) / smooth


def lort_target(labels: torch.Tensor, num_classes: int, smooth: float) -> torch.Tensor:
    """``(1 - s) * onehot + s / K`` as an ``(N, K)`` float tensor."""
    return grouped_lort_target(labels, num_classes, torch.tensor([check_smooth(smooth)], device=labels.device))[0]


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, sample_weight=None) -> torch.Tensor:
    per_sample = -(target * F.log_softmax(logits, dim=1)).sum(dim=1)
    if sample_weight is None:
        return per_sample.mean()
    return (per_sample * sample_weight).sum() / sample_weight.sum()


class LogitsRetargetingLoss(nn.Module):
    """Cross-entropy against the LORT target; needs no class counts.

    >>> loss = LogitsRetargetingLoss(smooth=0.98)        # or target_ratio=3.0
    >>> loss(logits, labels)                              # doctest: +SKIP
    """

    def __init__(self, smooth: float | None = DEFAULT_SMOOTH, target_ratio: float | None = None) -> None:
        super().__init__()
        if target_ratio is not None:
            target_ratio = TARGET_RATIO.check(target_ratio, "LogitsRetargetingLoss")  # s depends on K at call time
        else:
            smooth = SMOOTH.check(smooth, "LogitsRetargetingLoss")
        self.smooth = smooth
        self.target_ratio = target_ratio

    def smooth_for(self, num_classes: int) -> float:
        if self.target_ratio is not None:
            return smooth_from_ratio(self.target_ratio, num_classes)
        return self.smooth

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        k = logits.shape[1]
        return soft_cross_entropy(logits, lort_target(labels, k, self.smooth_for(k)))


# ----------------------------------------------------------------------------- baselines' pieces
# Class-count constants are computed on the CPU from numpy; methods move them to the features' device.


def log_prior(counts: np.ndarray) -> torch.Tensor:
    counts = torch.from_numpy(np.asarray(counts, dtype=np.float32))
    return torch.log(counts / counts.sum())


def effective_number_weights(counts: np.ndarray, beta: float = 0.9999) -> torch.Tensor:
    """Class-balanced weights ``(1 - beta) / (1 - beta^n_k)`` scaled to mean 1 (Cui et al., 2019)."""
    counts = np.asarray(counts, dtype=np.float64)
    w = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return torch.from_numpy((w / w.mean()).astype(np.float32))


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float, weight=None) -> torch.Tensor:
    """Focal loss (Lin et al., 2017): ``-(1 - p_y)^gamma log p_y``."""
    logp = F.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    loss = -((1.0 - logp.exp()) ** gamma) * logp
    if weight is None:
        return loss.mean()
    w = weight[labels]
    return (loss * w).sum() / w.sum()


def ldam_margins(counts: np.ndarray, max_margin: float = 0.5) -> torch.Tensor:
    """LDAM margins ``m_k ∝ n_k^(-1/4)``, the largest equal to ``max_margin`` (Cao et al., 2019)."""
    m = 1.0 / np.power(np.asarray(counts, dtype=np.float64), 0.25)
    return torch.from_numpy((m * (max_margin / m.max())).astype(np.float32))


def label_aware_smoothing(counts: np.ndarray, head: float, tail: float) -> torch.Tensor:
    """Per-class smoothing of MiSLAS (Zhong et al., 2021), concave form:
    ``eps_k = tail + (head - tail) * sin(pi/2 * (n_k - n_min) / (n_max - n_min))``."""
    counts = np.asarray(counts, dtype=np.float64)
    span = max(counts.max() - counts.min(), 1.0)
    eps = tail + (head - tail) * np.sin(0.5 * np.pi * (counts - counts.min()) / span)
    return torch.from_numpy(eps.astype(np.float32))


def grouped_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, weight=None, reduction: str = "weighted"
) -> torch.Tensor:
    """Cross-entropy of each of G classifiers; ``weight`` is per class, ``(K,)`` or ``(G, K)``.
    ``reduction``: ``weighted`` divides the weighted sum by the batch's summed weights
    (``F.cross_entropy``'s semantics, as LDAM-DRW's code uses), ``batch`` by the batch size
    (class-balanced loss as its authors' code reduces it)."""
    logp = F.log_softmax(logits, dim=2)
    g, b, _ = logits.shape
    nll = -logp.gather(2, labels.view(1, b, 1).expand(g, b, 1)).squeeze(2)
    if weight is None:
        return nll.mean(1)
    w = weight.expand(g, -1) if weight.dim() == 1 else weight
    wy = w[:, labels]
    return (nll * wy).sum(1) / (wy.sum(1) if reduction == "weighted" else b)


def grouped_cb_softmax_bce(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weight balancing's stage-2 loss as its public code computes the class-balanced loss of
    type "softmax": binary cross-entropy between the softmax probabilities and the one-hot
    label, each sample's K terms weighted by its class weight, averaged over batch x K."""
    logp = F.log_softmax(logits, dim=2)
    # log(1 - p), finite with a finite gradient where p rounds to 1; binary cross-entropy clamps its logs at -100
    log_not_p = torch.log1p(-logp.exp().clamp(max=1.0 - 1e-7)).clamp_min(-100.0)
    onehot = F.one_hot(labels, logits.shape[2]).to(logits.dtype).unsqueeze(0)
    bce = -(onehot * logp.clamp_min(-100.0) + (1 - onehot) * log_not_p)
    return (bce * weight[labels].view(1, -1, 1)).mean((1, 2))


def grouped_soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``target`` broadcastable to ``(G, B, K)``."""
    return -(target * F.log_softmax(logits, dim=2)).sum(2).mean(1)


def grouped_lort_target(labels: torch.Tensor, num_classes: int, smooth: torch.Tensor) -> torch.Tensor:
    """LORT targets for G smoothing values ``smooth`` (G,): ``(G, B, K)``."""
    s = smooth.to(labels.device).view(-1, 1, 1)
    onehot = F.one_hot(labels, num_classes).float().unsqueeze(0)
    return (1.0 - s) * onehot + s / num_classes


def grouped_focal(logits: torch.Tensor, labels: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    g, b, _ = logits.shape
    logp = F.log_softmax(logits, dim=2).gather(2, labels.view(1, b, 1).expand(g, b, 1)).squeeze(2)
    return (-((1.0 - logp.exp()) ** gamma.view(-1, 1)) * logp).mean(1)
