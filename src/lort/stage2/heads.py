"""Classifier parametrisations re-trained in stage 2 (the backbone's features are fixed).

Every head holds ``G`` classifiers side by side (leading dimension ``G``) so that one
pass of the training loop fits a whole hyperparameter grid at once; ``head(x)`` maps
``(N, D)`` features to ``(G, N, K)`` logits and :meth:`select` keeps one of them.
"""

from __future__ import annotations

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
    plain_linear = True  # its classifier is exactly x @ W.T + b on the raw features (linear_params)

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ONE matrix product for all G classifiers: (B, D) x (D, G*K), and one for the weight
        # gradient in backward, instead of G small ones: near the machine's matrix-multiply rate.
        g, k, d = self.weight.shape
        logits = (x @ self.weight.reshape(g * k, d).t()).view(len(x), g, k).transpose(0, 1)
        return logits + self.bias.unsqueeze(1)

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

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, groups: int = 1, scale=None) -> None:
        super().__init__()
        self.register_buffer("weight", stacked(weight, groups, 2))
        self.register_buffer("bias", stacked(bias, groups, 1))
        init = torch.ones(self.weight.shape[:2], device=self.weight.device) if scale is None else scale.detach().clone()
        self.scale = nn.Parameter(init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.scale.unsqueeze(2)
        b = self.bias * self.scale
        return torch.baddbmm(b.unsqueeze(1), x.expand(w.shape[0], *x.shape), w.transpose(1, 2))

    def linear_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.weight * self.scale.unsqueeze(2)).detach(), (self.bias * self.scale).detach()

    def select(self, g: int) -> LWSHead:
        return LWSHead(self.weight[g], self.bias[g], scale=self.scale[g : g + 1])


def centre_and_spread(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of features ``x`` and the root-mean-square norm of ``x`` about it."""
    center = x.mean(0)
    return center, (x - center).pow(2).sum(1).mean().sqrt().clamp_min(1e-12)


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

    @classmethod
    def from_classifier(cls, weight: torch.Tensor, x: torch.Tensor, groups: int = 1) -> CentredHead:
        """Directions from ``weight`` (e.g. the stage-1 classifier), centre and spread from
        the training features ``x``, the scale set so that the logits keep the size of
        ``weight``'s (its mean class-weight norm)."""
        center, spread = centre_and_spread(x)
        log_scale = torch.log(weight.norm(dim=1).mean().clamp_min(1e-12) * spread)
        return cls(weight, center, spread, log_scale, groups)

    def _effective(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = F.normalize(self.weight, dim=2) * (self.log_scale.exp() / self.spread).view(-1, 1, 1)
        b = -torch.bmm(w, self.center.unsqueeze(2)).squeeze(2)
        return w, b

    def linear_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        w, b = self._effective()
        return w.detach(), b.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self._effective()
        g, k, d = w.shape
        logits = (x @ w.reshape(g * k, d).t()).view(len(x), g, k).transpose(0, 1)  # one matrix product
        return logits + b.unsqueeze(1)

    def select(self, g: int) -> CentredHead:
        return CentredHead(self.weight[g], self.center[g], self.spread[g], self.log_scale[g])

    @classmethod
    def stack(cls, heads: list[CentredHead]) -> CentredHead:
        """One head holding the classifiers of ``heads`` side by side, in order."""
        return cls(*(torch.cat([getattr(h, n) for h in heads]) for n in ("weight", "center", "spread", "log_scale")))


class CosineHead(Head):
    """``scale * cos(x, W_k)``: normalised features and weights (LDAM's classifier, NCM)."""

    plain_linear = False  # linear only in L2-normalised features

    def __init__(self, weight: torch.Tensor, scale: float = 30.0, trainable: bool = True, groups: int = 1):
        super().__init__()
        self.weight = nn.Parameter(stacked(weight, groups, 2), requires_grad=trainable)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xn = F.normalize(x, dim=1)
        wn = F.normalize(self.weight, dim=2)
        return self.scale * torch.matmul(xn, wn.transpose(1, 2))

    def linear_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Equivalent weights for normalised inputs: ``scale * W / ||W||`` and zero bias."""
        w = self.scale * F.normalize(self.weight.detach(), dim=2)
        return w, w.new_zeros(w.shape[:2])

    def select(self, g: int) -> CosineHead:
        return CosineHead(self.weight[g], self.scale, self.weight.requires_grad)
