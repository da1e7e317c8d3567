"""Plain autograd definitions of the built-in stage-2 losses, one line of maths each.

The training loop uses closed-form gradients (:mod:`lort.stage2.losses`); these are the
definitions those closed forms are tested against, and a plain loss a user may train
with (the loop takes its gradient from autograd). Logits are ``(G, B, K)``: ``G``
classifiers side by side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float, weight=None) -> torch.Tensor:
    """Focal loss (Lin et al., 2017): ``-(1 - p_y)^gamma log p_y``."""
    logp = F.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    loss = -((1.0 - logp.exp()) ** gamma) * logp
    if weight is None:
        return loss.mean()
    w = weight[labels]
    return (loss * w).sum() / w.sum()


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


def grouped_focal(logits: torch.Tensor, labels: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    g, b, _ = logits.shape
    logp = F.log_softmax(logits, dim=2).gather(2, labels.view(1, b, 1).expand(g, b, 1)).squeeze(2)
    return (-((1.0 - logp.exp()) ** gamma.view(-1, 1)) * logp).mean(1)
