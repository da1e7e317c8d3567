"""The one stage-2 training loop: re-train classifier heads on cached features.

Methods differ only in what they plug in — the head, the loss, the sampler, MaxNorm —
never in the loop. A head holds ``G`` classifiers (one per hyperparameter setting) that
see the same batches and are updated independently (SGD with momentum, per-classifier
learning rate and weight decay, cosine schedule), so a grid costs one pass. The loop
validates after every epoch and keeps, per classifier, the weights of its best
validation epoch: choosing the number of epochs on validation costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import LortError
from ..models.base import max_norm_
from ..runtime.precision import flushing_denormals, tf32_matmuls
from .losses import value_and_grad
from .schedule import Schedule, check_lrs
from .selection import better as score_beats


def epoch_order(labels: np.ndarray, sampler: str, gen: torch.Generator, num_classes: int) -> torch.Tensor:
    """Sample indices of one epoch (``len(labels)`` draws).

    ``natural``: a permutation. ``balanced``: class-balanced sampling (Kang et al., 2020) —
    a class uniformly at random, then one of its samples uniformly. ``sqrt``: classes
    drawn with probability proportional to ``sqrt(n_k)``."""
    n = len(labels)
    cpu = torch.device("cpu")  # the order is drawn on the host, from a CPU generator, on every device
    if sampler == "natural":
        return torch.randperm(n, generator=gen, device=cpu)
    counts = np.bincount(labels, minlength=num_classes)
    if sampler == "balanced":
        class_p = (counts > 0).astype(np.float64)
    elif sampler == "sqrt":
        class_p = np.sqrt(counts)
    else:
        raise LortError(f"unknown sampler {sampler!r}; choose natural, balanced or sqrt")
    class_p = torch.from_numpy(class_p / class_p.sum())
    classes = torch.multinomial(class_p, n, replacement=True, generator=gen)
    order = torch.from_numpy(np.argsort(labels, kind="stable"))
    starts = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)[:-1]]))
    offsets = (torch.rand(n, generator=gen, dtype=torch.float64, device=cpu) * torch.from_numpy(counts)[classes]).long()
    return order[starts[classes] + offsets]


class CachedFeatures:
    """Training features held in memory (feature-cache mode)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        return self.x.index_select(0, idx)


# loss_fn(logits (G, B, K), labels (B,), epoch) -> per-classifier losses (G,)
LossFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def _per_group(value, groups: int, default: float, device: torch.device) -> torch.Tensor:
    if value is None:
        value = default
    t = torch.as_tensor(value, dtype=torch.float32, device=device).flatten()
    return t.expand(groups).clone() if t.numel() == 1 else t


def _runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    """The ``[start, stop)`` runs of consecutive True entries of a 1-D mask."""
    runs, start = [], None
    for i, on in enumerate(mask.tolist() + [False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            runs.append((start, i))
            start = None
    return runs


@flushing_denormals  # converged classifiers make subnormal gradients, ~10x slower on x86
def fit_head(
    head: nn.Module,
    x,
    y: torch.Tensor,
    loss_fn: LossFn,
    schedule: Schedule,
    sampler: str = "natural",
    score_fn: Callable[[nn.Module], torch.Tensor] | None = None,
    max_norm: Sequence[float] | float | None = None,
    lr: Sequence[float] | float | None = None,
    weight_decay: Sequence[float] | float | None = None,
    num_classes: int | None = None,
    on_step: Callable[[], None] | None = None,
) -> tuple[nn.Module, np.ndarray]:
    """Train the ``G`` classifiers of ``head`` on features ``x`` with labels ``y``.

    ``x`` is a feature tensor or any source with ``batch(idx, epoch)`` (e.g. the frozen
    backbone over augmented images). ``lr``, ``weight_decay`` and ``max_norm`` (the
    per-class weight-norm bound, MaxNorm) may differ per classifier. After each epoch
    ``score_fn(head)`` returns each classifier's validation score, ``(G,)``, or ``(G, C)``
    score rows compared by the selection rule (:func:`lort.stage2.selection.better`);
    each classifier keeps the weights of its best epoch (the first on ties). Returns the head and the scores as an ``(epochs, G)`` or
    ``(epochs, G, C)`` array (empty without ``score_fn``). Subnormal floats are flushed
    to zero while it runs, and on a GPU with TF32 tensor cores the matrix products use them
    (:func:`lort.runtime.precision.tf32_matmuls`); the caller's settings are restored. ``on_step()`` is called after
    every optimisation step (a progress bar)."""
    source = x if hasattr(x, "batch") else CachedFeatures(x)
    params = [p for p in head.parameters() if p.requires_grad]
    if schedule.epochs == 0 or not params:
        return head, (score_fn(head).cpu().numpy()[None] if score_fn else np.zeros((0, head.groups())))
    weight = head.weight
    groups, k_out, dim = weight.shape
    device = weight.device
    trains_weight = any(p is weight for p in params)
    small = [p for p in params if p is not weight]  # biases and scales: (G, K) or (G,)
    lr_g = _per_group(lr, groups, schedule.lr, device)
    wd_g = _per_group(weight_decay, groups, schedule.weight_decay, device)
    check_lrs(lr_g.tolist())
    bound = None if max_norm is None else _per_group(max_norm, groups, 0.0, device).view(groups, 1, 1)
    momentum = [torch.zeros_like(p) for p in small]
    weight_buf = torch.zeros_like(weight) if trains_weight else None
    gen = torch.Generator().manual_seed(schedule.seed)
    n = len(y)
    total = schedule.steps(n)
    labels_np = y.cpu().numpy()
    k = num_classes or int(labels_np.max()) + 1
    best_state = {name: t.detach().clone() for name, t in head.state_dict().items()}
    best_score: torch.Tensor | None = None  # (G, C) once the first score is known
    scores, step = [], 0

    def per_group(p):
        shape = (groups, *[1] * (p.dim() - 1))
        return lr_g.view(shape), wd_g.view(shape)

    views = [per_group(p) for p in small]
    lr_w, wd_w = per_group(weight)
    # The update touches every weight of every setting each step and is bound by memory bandwidth
    # at large K x D: weight decay and MaxNorm run only on the runs of settings that have them.
    decayed = _runs(wd_g != 0)
    bounded = [] if bound is None else _runs(torch.isfinite(bound.view(-1)))
    with tf32_matmuls(device):  # GPUs with TF32 tensor cores use them for the products
        for epoch in range(schedule.epochs):
            order = epoch_order(labels_np, sampler, gen, k).to(y.device)
            head.train()
            epoch_loss = torch.zeros(groups, device=device)
            for start in range(0, n, schedule.batch_size):
                idx = order[start : start + schedule.batch_size]
                with torch.no_grad():
                    xin = head.inputs(source.batch(idx, epoch))
                    # No autograd: the logits' gradient comes from the loss (in closed form for
                    # lort's losses), back through the head's small finish; the weights' gradient
                    # is one more matrix product, accumulated straight into the momentum.
                    z = head.products(xin)  # (G, B, K), stored class-major
                    norms = weight.norm(dim=2) if head.uses_norms else None
                    loss, dlogits = value_and_grad(loss_fn, head.finish(z, norms), y.index_select(0, idx), epoch)
                    epoch_loss.add_(loss)
                    dz, dnorms = head.finish_backward(z, norms, dlogits)
                    factor = 0.5 * (1.0 + math.cos(math.pi * step / total))
                    for p, buf, (lr_v, wd_v) in zip(small, momentum, views, strict=True):
                        for a, b in decayed:  # grad + wd * p, as torch.optim.SGD, where wd != 0
                            p.grad[a:b].addcmul_(wd_v[a:b], p[a:b])
                        torch.add(p.grad, buf, alpha=schedule.momentum, out=buf)  # buf = momentum * buf + grad
                        p.addcmul_(lr_v, buf, value=-factor)
                    if trains_weight:  # buf = momentum * buf + dL/dW (+ wd * W), then W -= lr * buf
                        dz = dz.transpose(1, 2).reshape(groups * k_out, len(xin))  # a view where class-major
                        weight_buf.view(groups * k_out, dim).addmm_(dz, xin, beta=schedule.momentum)
                        if dnorms is not None:  # d||w_k|| / dw_k = w_k / ||w_k||
                            weight_buf.addcmul_((dnorms / norms.clamp_min(1e-12)).unsqueeze(2), weight)
                        for a, b in decayed:
                            weight_buf[a:b].addcmul_(wd_w[a:b], weight[a:b])
                        weight.addcmul_(lr_w, weight_buf, value=-factor)
                    for a, b in bounded:
                        max_norm_(weight[a:b], bound[a:b])
                step += 1
                if on_step is not None:
                    on_step()
            if not torch.isfinite(epoch_loss).all():
                bad = epoch_loss[~torch.isfinite(epoch_loss)][0].item()
                raise LortError(
                    f"stage-2 loss became {bad} in epoch {epoch + 1}; lower the learning rate "
                    f"(now {lr_g.tolist()}) or check the features for extreme values"
                )
            if score_fn is not None:
                head.eval()
                with torch.no_grad():
                    score = score_fn(head)
                scores.append(score.cpu().numpy())
                key = score.reshape(groups, -1)
                if best_score is None:
                    best_score = torch.full_like(key, -math.inf)
                better = score_beats(key, best_score).to(key.device)
                if better.any():
                    best_score = torch.where(better.unsqueeze(1), key, best_score)
                    for name, t in head.state_dict().items():
                        best_state[name][better] = t[better]
    if score_fn is not None:
        head.load_state_dict(best_state)
    head.eval()
    return head, np.asarray(scores).reshape(len(scores), groups, *np.shape(scores)[2:])
