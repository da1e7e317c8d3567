"""Stage-2 losses. :class:`LogitsRetargetingLoss` (LORT) works in any PyTorch loop.

LORT's target for a sample of class ``y`` among ``K`` classes is
``(1 - s) * onehot(y) + s / K``: the true class gets ``1 - s + s/K`` and every other class
``s/K``. The ratio of true to other target is ``r = 1 + K (1 - s) / s``, so the same
``s`` means different things for different ``K``; :func:`smooth_from_ratio` sets ``s``
from a K-independent ratio instead.
"""

from __future__ import annotations

import math
from typing import Any

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


EFFECTIVE_NUMBER_BETA = 0.9999  # Cui et al.'s beta: the default of every effective-number weighting


def effective_number_weights(counts: np.ndarray, beta: float = EFFECTIVE_NUMBER_BETA) -> torch.Tensor:
    """Class-balanced weights ``(1 - beta) / (1 - beta^n_k)`` scaled to mean 1 (Cui et al., 2019)."""
    counts = np.asarray(counts, dtype=np.float64)
    w = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return torch.from_numpy((w / w.mean()).astype(np.float32))


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


def grouped_lort_target(labels: torch.Tensor, num_classes: int, smooth: torch.Tensor) -> torch.Tensor:
    """LORT targets for G smoothing values ``smooth`` (G,): ``(G, B, K)``."""
    s = smooth.to(labels.device).view(-1, 1, 1)
    onehot = F.one_hot(labels, num_classes).float().unsqueeze(0)
    return (1.0 - s) * onehot + s / num_classes


# ----------------------------------------------------------------------------- value and gradient
# The loop needs each loss's gradient with respect to the logits only (the heads are linear
# in their weights, lort.stage2.heads). The losses of the methods below give it in closed
# form — no autograd graph, one fused computation for all settings of a pass; any other
# loss (a callable) gets it from autograd (value_and_grad).


class GroupedLoss:
    """A loss of ``G`` classifiers: ``loss(logits (G, B, K), labels (B,), epoch) -> (G,)``,
    with :meth:`value_and_grad` giving the gradient of the summed loss for the logits."""

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        return self.value_and_grad(logits, labels, epoch)[0]

    def value_and_grad(self, logits, labels, epoch) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


def value_and_grad(loss_fn, logits: torch.Tensor, labels: torch.Tensor, epoch: int):
    """``(loss (G,), d loss.sum() / d logits (G, B, K))`` of any stage-2 loss: in closed
    form for a :class:`GroupedLoss`, else by autograd through ``loss_fn``."""
    if isinstance(loss_fn, GroupedLoss):
        return loss_fn.value_and_grad(logits, labels, epoch)
    with torch.enable_grad():
        leaf = logits.detach().requires_grad_(True)
        loss = loss_fn(leaf, labels, epoch)
        (grad,) = torch.autograd.grad(loss.sum(), leaf)
    return loss.detach(), grad


def _table(values, groups: int, num_classes: int, device, fill: float) -> torch.Tensor:
    """A ``(G, K)`` table from ``None`` (``fill``, float32), a ``(K,)`` or a ``(G, K)`` tensor
    (floating tensors keep their dtype)."""
    if values is None:
        return torch.full((groups, num_classes), fill, device=device)
    t = torch.as_tensor(values, device=device)
    t = t if t.is_floating_point() else t.float()
    return (t.expand(groups, num_classes) if t.dim() == 1 else t).clone()


class SoftCrossEntropy(GroupedLoss):
    """Cross-entropy of ``G`` classifiers against label-smoothed targets, with per-class
    logit offsets, true-class margins and class weights — the family of CE re-training,
    LORT, cRT, Balanced Softmax, the logit-adjusted loss, class-balanced re-weighting,
    label-aware smoothing and LDAM — as one computation with its closed-form gradient.

    Per classifier ``g`` and sample ``(x, y)``: logits ``l + offset[g] - margin[g, y] e_y``;
    target ``(1 - eps[g, y]) e_y + eps[g, y] / K``; loss weight ``w[g, y]`` (``class_weight``,
    applied from epoch ``reweight_from[g]``; 1 before); the batch's weighted sum divided by
    the summed weights, or by the batch size where ``by_batch[g]``. Every table is ``(K,)``
    (shared) or ``(G, K)``; ``None`` is the plain value (0, or weight 1)."""

    def __init__(
        self,
        groups: int,
        num_classes: int,
        *,
        smoothing=None,
        offset=None,
        margin=None,
        class_weight=None,
        reweight_from=None,
        by_batch=None,
        device=None,
    ) -> None:
        self.groups, self.num_classes = groups, num_classes
        args = (groups, num_classes, device)
        self.smoothing = None if smoothing is None else _table(smoothing, *args, 0.0)
        self.offset = None if offset is None else _table(offset, *args, 0.0)
        self.margin = None if margin is None else _table(margin, *args, 0.0)
        self.class_weight = None if class_weight is None else _table(class_weight, *args, 1.0)
        start = reweight_from or 0  # one epoch for every classifier, or one each
        self.reweight_from = [float(e) for e in start] if isinstance(start, list | tuple) else [float(start)] * groups
        if by_batch is None or isinstance(by_batch, bool):  # one flag for every classifier, or one each
            self.by_batch = torch.full((groups,), bool(by_batch), dtype=torch.bool, device=device)
        else:
            self.by_batch = torch.as_tensor(by_batch, dtype=torch.bool, device=device)
        self._weights: tuple[int, torch.Tensor | None] | None = None

    @classmethod
    def cat(cls, losses: list[SoftCrossEntropy]) -> SoftCrossEntropy:
        """One loss for the classifiers of ``losses`` side by side, in order."""
        first = losses[0]
        device = first.by_batch.device

        def joined(name, fill):
            if all(getattr(s, name) is None for s in losses):
                return None
            return torch.cat([_table(getattr(s, name), s.groups, s.num_classes, device, fill) for s in losses])

        return cls(
            sum(s.groups for s in losses),
            first.num_classes,
            smoothing=joined("smoothing", 0.0),
            offset=joined("offset", 0.0),
            margin=joined("margin", 0.0),
            class_weight=joined("class_weight", 1.0),
            reweight_from=[e for s in losses for e in s.reweight_from],
            by_batch=torch.cat([s.by_batch for s in losses]),
            device=device,
        )

    def weights(self, epoch: int) -> torch.Tensor | None:
        """The ``(G, K)`` class weights in force at ``epoch`` (``None``: all 1)."""
        if self.class_weight is None or all(epoch < e for e in self.reweight_from):
            return None
        if self._weights is None or self._weights[0] != epoch:
            on = torch.tensor([epoch >= e for e in self.reweight_from], device=self.class_weight.device)
            self._weights = (epoch, torch.where(on[:, None], self.class_weight, torch.ones_like(self.class_weight)))
        return self._weights[1]

    def value_and_grad(self, logits, labels, epoch):
        g, b, k = logits.shape
        idx = labels.view(1, b, 1).expand(g, b, 1)
        if self.offset is not None:
            logits = logits + self.offset.unsqueeze(1)
        if self.margin is not None:
            logits = logits.scatter_add(2, idx, self.margin.index_select(1, labels).unsqueeze(2).neg_())
        # d/dlogits of -sum_k t_k log p_k is p - t (the target sums to 1)
        grad, true, shifted, log_total = _softmax_pieces(logits, idx)  # p, log p_y (G, B)
        if self.smoothing is None:
            per_sample = true.neg()
            grad.scatter_add_(2, idx, self._minus_ones(grad, b))
        else:
            eps = self.smoothing.index_select(1, labels).unsqueeze(2)  # (G, B, 1)
            mean_logp = shifted.sum(2, keepdim=True).div_(k).sub_(log_total)  # mean_k log p_k
            per_sample = torch.lerp(true.unsqueeze(2), mean_logp, eps).squeeze(2).neg_()
            grad.sub_(eps / k).scatter_add_(2, idx, eps - 1.0)
        w = self.weights(epoch)
        if w is None:
            return per_sample.sum(1).div_(b), grad.div_(b)
        wy = w.index_select(1, labels)
        norm = torch.where(self.by_batch, torch.full_like(wy[:, 0], b), wy.sum(1)).unsqueeze(1)
        # multiplied by the weights, then divided by the norm: where the weights are all 1 this
        # is exactly the unweighted path's arithmetic (settings fused with a weighted loss train as alone)
        return (per_sample * wy).sum(1, keepdim=True).div_(norm).squeeze(1), grad.mul_(wy.unsqueeze(2)).div_(
            norm.unsqueeze(2)
        )

    def _minus_ones(self, like: torch.Tensor, b: int) -> torch.Tensor:
        """A cached ``(G, B, 1)`` tensor of -1 (the one-hot target, subtracted by scatter)."""
        cached = getattr(self, "_ones", None)
        if cached is None or cached.shape[1] != b or cached.device != like.device:
            cached = self._ones = torch.full((self.groups, b, 1), -1.0, device=like.device, dtype=like.dtype)
        return cached[: like.shape[0]]


def _softmax_pieces(logits: torch.Tensor, idx: torch.Tensor):
    """``(p, log p_y, logits - max, log sum exp(logits - max))`` with few passes over
    ``logits``. Each result keeps the logits' memory layout: the loop's logits are stored
    class-major (``(G, K, B)`` in memory, see :meth:`Head.products`), where this runs
    several times faster than ``F.log_softmax``, which copies to ``K``-innermost and then
    works along rows of only ``K`` numbers."""
    shifted = logits - logits.amax(2, keepdim=True)
    p = shifted.exp()
    total = p.sum(2, keepdim=True)
    log_total = total.log()
    return p.div_(total), (shifted.gather(2, idx) - log_total).squeeze(2), shifted, log_total


class FocalLoss(GroupedLoss):
    """Softmax focal loss ``-(1 - p_y)^gamma log p_y`` of ``G`` classifiers (``gamma`` ``(G,)``),
    averaged over the batch, with its closed-form gradient."""

    def __init__(self, gamma: torch.Tensor) -> None:
        self.gamma = gamma

    def value_and_grad(self, logits, labels, epoch):
        g, b, k = logits.shape
        idx = labels.view(1, b, 1).expand(g, b, 1)
        p, u, _, _ = _softmax_pieces(logits, idx)  # u = log p_y
        py = u.exp()
        q = (1.0 - py).clamp_min_(0.0)
        gamma = self.gamma.view(-1, 1)
        qg = q.pow(gamma)
        # dL/du = gamma (1 - p_y)^(gamma - 1) p_y u - (1 - p_y)^gamma; the first term is 0 where p_y = 1
        first = torch.where(q > 0, gamma * q.pow(gamma - 1.0) * py * u, 0.0)
        dldu = (first - qg).div_(b).unsqueeze(2)
        grad = p.mul_(dldu.neg()).scatter_add_(2, idx, dldu)  # du/dlogits = e_y - p
        return (qg * u).mean(1).neg_(), grad


class CBSoftmaxBCE(GroupedLoss):
    """Weight balancing's class-balanced loss of type "softmax" (its plain form: :func:`lort.testing.oracles.grouped_cb_softmax_bce`)
    with its closed-form gradient, the clamps included."""

    CAP = 1.0 - 1e-7  # p is capped here before log(1 - p); log(1 - CAP) ~ -16 never meets the -100 clamp

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight

    def value_and_grad(self, logits, labels, epoch):
        g, b, k = logits.shape
        idx = labels.view(1, b, 1).expand(g, b, 1)
        p, logp_y, _, _ = _softmax_pieces(logits, idx)
        capped = p.clamp(max=self.CAP)
        minus = capped.neg()
        log_not_p = minus.log1p()  # log(1 - p), >= log(1 - CAP)
        not_p = minus.add_(1.0)
        c = (self.weight.index_select(0, labels) / (b * k)).view(1, b)  # each term's weight
        # bce summed over classes: -(log(1 - p_k) over k != y) - max(log p_y, -100)
        others = log_not_p.sum(2) - log_not_p.gather(2, idx).squeeze(2)
        loss = -((others + logp_y.clamp_min(-100.0)) * c).sum(1)
        # d bce / d log p_k: p_k / (1 - p_k) for k != y (0 where p_k was capped); -1 for y (0 below -100)
        dlogp = torch.where(p <= self.CAP, p / not_p, 0.0).mul_(c.unsqueeze(2))
        dlogp.scatter_(2, idx, (-(logp_y >= -100.0).to(p.dtype) * c).unsqueeze(2))
        return loss, dlogp.sub_(p * dlogp.sum(2, keepdim=True))  # back through the log-softmax


class FusedLoss(GroupedLoss):
    """The losses of consecutive blocks of classifiers (``sizes``) as one; neighbouring
    :class:`SoftCrossEntropy` blocks merge into one computation."""

    def __init__(self, losses: list, sizes: list[int]) -> None:
        self.blocks: list[tuple[Any, int]] = []
        for loss, size in zip(losses, sizes, strict=True):
            last = self.blocks[-1][0] if self.blocks else None
            if isinstance(loss, SoftCrossEntropy) and isinstance(last, SoftCrossEntropy):
                self.blocks[-1] = (SoftCrossEntropy.cat([last, loss]), self.blocks[-1][1] + size)
            else:
                self.blocks.append((loss, size))

    def value_and_grad(self, logits, labels, epoch):
        if len(self.blocks) == 1:
            return value_and_grad(self.blocks[0][0], logits, labels, epoch)
        values, start = [], 0
        grad = torch.empty_like(logits)  # the logits' memory layout (class-major in the loop), whatever the blocks'
        for loss, size in self.blocks:
            v, grad[start : start + size] = value_and_grad(loss, logits[start : start + size], labels, epoch)
            values.append(v)
            start += size
        return torch.cat(values), grad
