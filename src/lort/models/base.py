"""The model interface every backbone follows: features and a separate linear classifier.

``forward_features(x)`` returns pooled ``(N, D)`` features, ``forward_head(f)`` the
logits; ``get_classifier()`` / ``reset_classifier(K)`` give stage 2 the classifier
alone (the same split as timm's models).
"""

from __future__ import annotations

import torch
from torch import nn


class LortModel(nn.Module):
    num_features: int

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.num_classes = num_classes
        self.fc = nn.Linear(num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes).to(self.fc.weight.device)


def max_norm_(weight: torch.Tensor, threshold) -> None:
    """MaxNorm: project each class's weight vector (the last dimension) onto the ball of
    radius ``threshold`` (a number, or a tensor broadcastable to the norms, e.g. one bound
    per classifier of a ``(G, K, D)`` stack); vectors inside the ball are unchanged."""
    with torch.no_grad():
        norms = weight.norm(dim=-1, keepdim=True)
        weight.mul_(torch.clamp(threshold / norms.clamp_min(1e-12), max=1.0))


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal convolutions, unit BatchNorm, default linear init."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
