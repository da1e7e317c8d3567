"""Classifier parametrisations re-trained in stage 2 (the backbone's features are fixed).

Every head holds ``G`` classifiers side by side (leading dimension ``G``) so that one
pass of the training loop fits a whole hyperparameter grid at once; ``head(x)`` maps
``(N, D)`` features to ``(G, N, K)`` logits and :meth:`select` keeps one of them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def stacked(t: torch.Tensor, groups: int, unbatched_dim: int) -> torch.Tensor:
    """``t`` repeated ``groups`` times along a new leading dimension (if not batched yet)."""
    t = t.detach().float()
    if t.dim() == unbatched_dim:
        t = t.unsqueeze(0).expand(groups, *t.shape)
    return t.clone()


class Head(nn.Module):
    """``G`` classifiers of one form: ``finish(inputs(x) @ weight.T, norms)``.

    ``weight`` ``(G, K, D)`` meets the inputs in ONE matrix product for all classifiers,
    ``(B, D) x (D, G*K)``; ``finish`` turns those products ``(G, B, K)`` into logits with
    the head's small parameters (a bias, scales) and, where ``uses_norms``, the class-weight
    norms ``||weight_k||`` ``(G, K)``. The training loop relies on this form: it computes
    the product without autograd and folds the weight gradient, one more matrix product,
    straight into the momentum (:func:`lort.stage2.trainer.fit_head`)."""

    plain_linear = True  # its classifier is exactly x @ W.T + b on the raw features (linear_params)
    uses_norms = False  # finish() needs the norms of the class weights
    trains_weight = True  # weight is trained (a second matrix product per step, for its gradient)
    weight: torch.Tensor

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """What the weights multiply: the features, or a fixed transform of them."""
        return x

    def finish(self, z: torch.Tensor, norms: torch.Tensor | None) -> torch.Tensor:
        """Logits ``(G, B, K)`` from the products ``z = inputs(x) @ weight.T``."""
        raise NotImplementedError

    def finish_backward(
        self, z: torch.Tensor, norms: torch.Tensor | None, dlogits: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Back through :meth:`finish`: given ``dlogits`` ``(G, B, K)``, set the ``.grad`` of the
        small parameters and return the gradients for ``z`` and ``norms`` (``None`` where
        the weights are not trained). The heads below give it in closed form; this default
        asks autograd."""
        small = [p for p in self.parameters() if p.requires_grad and p is not self.weight]
        with torch.enable_grad():
            zz = z.detach().requires_grad_(self.trains_weight)
            nn_ = None if norms is None else norms.detach().requires_grad_(self.trains_weight)
            leaves = [t for t in (zz, nn_) if t is not None and t.requires_grad] + small
            grads = list(torch.autograd.grad(self.finish(zz, nn_), leaves, dlogits, allow_unused=True))
        for p, grad in zip(small, grads[len(grads) - len(small) :], strict=True):
            p.grad = torch.zeros_like(p) if grad is None else grad
        if not self.trains_weight:
            return None, None
        return grads[0], (grads[1] if nn_ is not None else None)

    def products(self, xin: torch.Tensor) -> torch.Tensor:
        """``inputs @ weight.T`` of every classifier, ``(G, B, K)``, from ONE matrix product
        ``(B, D) x (D, G*K)``, stored class-major (a view of a ``(G, K, B)`` tensor: one small
        transposing copy). Element-wise work and reductions over the classes keep that layout
        and run along the batch, several times faster than along rows of ``K`` numbers when
        ``K`` is small, and the weights' gradient is that layout times the inputs with no
        further copy (:func:`lort.stage2.trainer.fit_head`). In this orientation each column
        is one classifier's dot products, whatever else shares the product; a BLAS may still
        sum them in another order for another width (AVX2 kernels do), so settings trained
        side by side agree with their fits alone to float rounding, and the selection rule
        (:mod:`lort.stage2.selection`) keeps the choices equal."""
        g, k, d = self.weight.shape
        z = xin @ self.weight.reshape(g * k, d).t()
        return z.t().contiguous().view(g, k, len(xin)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.products(self.inputs(x))
        return self.finish(z, self.weight.norm(dim=2) if self.uses_norms else None).contiguous()

    def groups(self) -> int:
        return next(iter(self.state_dict().values())).shape[0]

    def select(self, g: int) -> Head:
        """A copy holding classifier ``g`` only (G = 1)."""
        raise NotImplementedError

    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, K)`` logits of a single-classifier head."""
        return self(x)[0]


class LinearHead(Head):
    """``x @ W.T + b``: the plain linear classifier (weights and bias trained)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, groups: int = 1) -> None:
        super().__init__()
        self.weight = nn.Parameter(stacked(weight, groups, 2))
        self.bias = nn.Parameter(stacked(bias, groups, 1))

    def finish(self, z: torch.Tensor, norms: torch.Tensor | None) -> torch.Tensor:
        return z + self.bias.unsqueeze(1)

    def finish_backward(self, z, norms, dlogits):
        self.bias.grad = dlogits.sum(1)
        return dlogits, None

    def linear_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight.detach(), self.bias.detach()

    def select(self, g: int) -> LinearHead:
        return LinearHead(self.weight[g], self.bias[g])

    @classmethod
    def stack(cls, heads: list[LinearHead]) -> LinearHead:
        """One head holding the classifiers of ``heads`` side by side, in order."""
        return cls(torch.cat([h.weight for h in heads]), torch.cat([h.bias for h in heads]))


class LWSHead(Head):
    """Learnable weight scaling (Kang et al., 2020): ``f * (x @ W.T + b)``, the logits of the
    stage-1 classifier scaled per class, with only the scales ``f`` trained."""

    trains_weight = False

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, groups: int = 1, scale=None) -> None:
        super().__init__()
        self.register_buffer("weight", stacked(weight, groups, 2))
        self.register_buffer("bias", stacked(bias, groups, 1))
        init = torch.ones(self.weight.shape[:2], device=self.weight.device) if scale is None else scale.detach().clone()
        self.scale = nn.Parameter(init)

    def finish(self, z: torch.Tensor, norms: torch.Tensor | None) -> torch.Tensor:
        return (z + self.bias.unsqueeze(1)) * self.scale.unsqueeze(1)

    def finish_backward(self, z, norms, dlogits):
        self.scale.grad = (dlogits * (z + self.bias.unsqueeze(1))).sum(1)
        return None, None

    def linear_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.weight * self.scale.unsqueeze(2)).detach(), (self.bias * self.scale).detach()

    def select(self, g: int) -> LWSHead:
        return LWSHead(self.weight[g], self.bias[g], scale=self.scale[g : g + 1])


def centre_and_spread(x: torch.Tensor, rows: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of features ``x`` and the root-mean-square norm of ``x`` about it (the
    squared distances computed ``rows`` at a time: no centred copy of ``x`` is made)."""
    center = x.mean(0)
    sq = torch.cat([(x[i : i + rows] - center).pow(2).sum(1) for i in range(0, len(x), rows)])
    return center, sq.mean().sqrt().clamp_min(1e-12)


DISCRIMINANT_SHRINK = 1.0  # the identity's weight against the within-class covariance (results/lort_default/)


def discriminant_directions(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    shrink: float = DISCRIMINANT_SHRINK,
    rows: int = 8192,
    estimates: str = "pooled",
) -> torch.Tensor:
    """``(K, D)`` class directions of a Gaussian model of the classes with one shared
    covariance, scored without a class prior: ``w_k = (S + shrink * tr(S)/D * I)^-1 (mu_k - m)``,
    with ``mu_k`` each class's mean feature and ``S`` shrunk towards the identity at its own
    scale. ``estimates`` says how the centre ``m`` and the covariance ``S`` weigh the
    classes:

    - ``pooled`` (the default, chosen on validation: ``results/lort_default/init.md``):
      ``m`` the mean training feature and ``S`` the covariance of every training feature
      about its class mean, so that each class counts by its number of samples;
    - ``equal``: ``m`` the mean of the class means and ``S`` the average of the classes'
      own covariances, each class counting once.

    The class counts enter only these two estimates (no prior term is added to the
    logits). The covariance is accumulated ``rows`` at a time in float64 (no centred copy
    of ``x``)."""
    if estimates not in ("pooled", "equal"):
        raise ValueError(f"estimates must be 'pooled' or 'equal', got {estimates!r}")
    d, f64 = x.shape[1], torch.float64
    chunks = [(x[i : i + rows], y[i : i + rows]) for i in range(0, len(x), rows)]
    sums = x.new_zeros(num_classes, d, dtype=f64)
    for xc, yc in chunks:
        sums.index_add_(0, yc, xc.to(f64))
    counts = torch.bincount(y, minlength=num_classes).to(f64)
    means = sums / counts.clamp_min(1)[:, None]
    present = counts > 0
    if estimates == "pooled":
        center = sums.sum(0) / counts.sum().clamp_min(1)
    else:
        center = means[present].mean(0)
    cov = x.new_zeros(d, d, dtype=f64)
    for xc, yc in chunks:
        r = xc - means[yc].to(x.dtype)
        if estimates == "equal":  # each sample weighted by 1 / its class's count: classes count once
            r = r * (1.0 / counts[yc]).sqrt().to(x.dtype)[:, None]
        cov += (r.T @ r).to(f64)
    cov /= max(len(x), 1) if estimates == "pooled" else max(int(present.sum()), 1)
    cov.diagonal().add_(shrink * cov.diagonal().mean().clamp_min(1e-12))
    return torch.linalg.solve(cov, (means - center).T).T.to(x.dtype)


class Standardised:
    """Features ``x`` centred on ``center`` and divided by ``spread``, batch by batch (a
    training source of :func:`lort.stage2.trainer.fit_head`): no standardised copy of the
    whole set is made."""

    def __init__(self, x: torch.Tensor, center: torch.Tensor, spread: torch.Tensor) -> None:
        self.x, self.center, self.spread = x, center, spread

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        return (self.x.index_select(0, idx) - self.center) / self.spread

    def __getitem__(self, rows) -> torch.Tensor:
        return (self.x[rows] - self.center) / self.spread


class CentredHead(Head):
    """``e^a * Ŵ (x - m) / r``: unit-norm class weights ``Ŵ`` applied to features centred on
    the training mean ``m`` and divided by their root-mean-square norm ``r`` about it, one
    learned logit scale ``e^a`` per classifier, no bias (LORT's default parametrisation).

    Neither a bias nor the norm of a class's weights can carry the class prior here, and
    the learning rate acts the same on features of any scale. It is exactly the linear
    classifier ``W = e^a Ŵ / r``, ``b = -W m`` (:meth:`linear_params`).

    The price of no bias: a class whose features sit at the centre of the others along
    their only directions (e.g. three classes on one line in a low-dimensional space)
    cannot win, as it can with a bias. Deep features of many dimensions rarely look like
    that; for such data use the paper's recipe (``lort_reference``)."""

    uses_norms = True

    def __init__(
        self,
        weight: torch.Tensor,
        center: torch.Tensor,
        spread: float | torch.Tensor,
        log_scale: float | torch.Tensor,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(stacked(weight, groups, 2))
        g = self.weight.shape[0]
        self.register_buffer("center", stacked(center, g, 1))
        self.register_buffer(
            "spread", torch.as_tensor(spread, dtype=torch.float32, device=self.weight.device).expand(g).clone()
        )
        self.log_scale = nn.Parameter(
            torch.as_tensor(log_scale, dtype=torch.float32, device=self.weight.device).detach().expand(g).clone()
        )
        shared = self.center.device.type == "meta" or torch.equal(self.center, self.center[:1].expand_as(self.center))
        if not shared:
            raise ValueError("the classifiers of one CentredHead must share one feature centre")

    @classmethod
    def from_classifier(cls, weight: torch.Tensor, x: torch.Tensor, groups: int = 1) -> CentredHead:
        """Directions from ``weight`` (e.g. the stage-1 classifier), centre and spread from
        the training features ``x``, the scale set so that the logits keep the size of
        ``weight``'s (its mean class-weight norm)."""
        center, spread = centre_and_spread(x)
        log_scale = torch.log(weight.norm(dim=1).mean().clamp_min(1e-12) * spread)
        return cls(weight, center, spread, log_scale, groups)

    def class_scales(self, norms: torch.Tensor) -> torch.Tensor:
        """``(G, K)``: what each class's product with the centred features is multiplied by,
        ``e^a / (r ||w_k||)`` (unit-norm directions, the logit scale, the features' spread)."""
        return (self.log_scale.exp() / self.spread).unsqueeze(1) / norms.clamp_min(1e-12)

    def linear_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            w = self.weight * self.class_scales(self.weight.norm(dim=2)).unsqueeze(2)
            return w, -torch.bmm(w, self.center.unsqueeze(2)).squeeze(2)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.center[0]  # every classifier of a head shares the centre (checked when built)

    def finish(self, z: torch.Tensor, norms: torch.Tensor | None) -> torch.Tensor:
        return z * self.class_scales(norms).unsqueeze(1)

    def finish_backward(self, z, norms, dlogits):
        c = self.class_scales(norms)  # e^a / (r ||w_k||)
        dc_c = (dlogits * z).sum(1).mul_(c)  # dL/dc_k * c_k: d/d(log scale) = c, d/d||w_k|| = -c / ||w_k||
        self.log_scale.grad = dc_c.sum(1)
        return dlogits * c.unsqueeze(1), dc_c.div_(norms).neg_()  # (a class weight of norm 0 has no direction)

    def select(self, g: int) -> CentredHead:
        return CentredHead(self.weight[g], self.center[g], self.spread[g], self.log_scale[g])

    @classmethod
    def stack(cls, heads: list[CentredHead]) -> CentredHead:
        """One head holding the classifiers of ``heads`` side by side, in order."""
        return cls(*(torch.cat([getattr(h, n) for h in heads]) for n in ("weight", "center", "spread", "log_scale")))


class CosineHead(Head):
    """``scale * cos(x, W_k)``: normalised features and weights (LDAM's classifier, NCM)."""

    plain_linear = False  # linear only in L2-normalised features
    uses_norms = True

    def __init__(self, weight: torch.Tensor, scale: float, trainable: bool = True, groups: int = 1):
        super().__init__()
        self.weight = nn.Parameter(stacked(weight, groups, 2), requires_grad=trainable)
        self.scale = scale

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1)

    def finish(self, z: torch.Tensor, norms: torch.Tensor | None) -> torch.Tensor:
        return self.scale * z / norms.clamp_min(1e-12).unsqueeze(1)

    def finish_backward(self, z, norms, dlogits):
        c = self.scale / norms.clamp_min(1e-12)
        return dlogits * c.unsqueeze(1), (dlogits * z).sum(1).mul_(c).div_(norms).neg_()  # d/d||w_k|| = -c / ||w_k||

    def linear_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Equivalent weights for normalised inputs: ``scale * W / ||W||`` and zero bias."""
        w = self.scale * F.normalize(self.weight.detach(), dim=2)
        return w, w.new_zeros(w.shape[:2])

    def select(self, g: int) -> CosineHead:
        return CosineHead(self.weight[g], self.scale, self.weight.requires_grad)


def head_device(head: Head) -> torch.device:
    return next(iter(head.state_dict().values())).device


def logit_blocks(head: Head, x, max_values: int = 1 << 22):
    """The ``(rows, K)`` logits of a single-classifier head for ``x``, block of rows after
    block: a head's transformed inputs (e.g. centred features) and its logits never exist
    for all rows at once."""
    x = torch.as_tensor(x, dtype=torch.float32, device=head_device(head))
    rows = max(1, max_values // max(1, x.shape[1] if x.dim() == 2 else 1))
    with torch.no_grad():
        for i in range(0, max(len(x), 1), rows):
            yield head.predict_logits(x[i : i + rows]).cpu().numpy()


def logits_of(head: Head, x) -> np.ndarray:
    """``(N, K)`` logits of a single-classifier head (computed in row blocks)."""
    blocks = logit_blocks(head, x)
    first = next(blocks)
    if len(first) == len(x):
        return first
    out = np.empty((len(x), first.shape[1]), dtype=first.dtype)
    out[: len(first)] = first
    start = len(first)
    for block in blocks:
        out[start : start + len(block)] = block
        start += len(block)
    return out
