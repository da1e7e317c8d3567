"""Classifier parametrisations re-trained in stage 2 (the backbone's features are fixed)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LinearHead(nn.Module):
    """``x @ W.T + b``: the plain linear classifier (weights and bias trained)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone().float())
        self.bias = nn.Parameter(bias.clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def linear_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight.detach(), self.bias.detach()


class LWSHead(nn.Module):
    """Learnable weight scaling (Kang et al., 2020): ``x @ (f * W).T + b`` with only the
    per-class scales ``f`` trained."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight.clone().float())
        self.register_buffer("bias", bias.clone().float())
        self.scale = nn.Parameter(torch.ones(len(weight)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale[:, None], self.bias)

    def linear_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.weight * self.scale[:, None]).detach(), self.bias.detach()


class CosineHead(nn.Module):
    """``scale * cos(x, W_k)``: normalised features and weights (LDAM's classifier, NCM)."""

    def __init__(self, weight: torch.Tensor, scale: float = 30.0, trainable: bool = True) -> None:
        super().__init__()
        w = weight.clone().float()
        self.weight = nn.Parameter(w) if trainable else nn.Parameter(w, requires_grad=False)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))
