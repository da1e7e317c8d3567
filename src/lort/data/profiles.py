"""Imbalance profiles: how many training images each class keeps.

``exponential`` is the standard generator of CIFAR-LT (Cao et al., 2019, LDAM-DRW;
also the profile of the public LOS/LORT code): ``n_k = floor(n_max * IR^(-k/(K-1)))``.
``step`` keeps ``n_max`` images for the first ``round(mu*K)`` classes and ``n_max/IR``
for the rest; ``none`` applies no profile. The float arithmetic mirrors the reference generator so that counts
match published tables exactly (CIFAR-10-LT IR 100: 12,406 images; CIFAR-100-LT IR
100: 10,847).
"""

from __future__ import annotations

import math

from ..errors import LortError

PROFILES = ("exp", "step", "none")


def class_counts(
    profile: str, n_max: int, num_classes: int, imbalance_ratio: float, step_fraction: float = 0.5
) -> list[int]:
    """Per-class image counts, head class first."""
    if profile not in PROFILES:
        raise LortError(f"unknown imbalance profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if not (isinstance(imbalance_ratio, int | float) and math.isfinite(imbalance_ratio)):
        raise LortError(f"imbalance ratio must be a finite number, got {imbalance_ratio!r}")
    if imbalance_ratio < 1:
        raise LortError(f"imbalance ratio must be >= 1 (n_max / n_min), got {imbalance_ratio}")
    if num_classes < 1:
        raise LortError(f"number of classes must be >= 1, got {num_classes}")
    if n_max < 1:
        raise LortError(f"images per class (n_max) must be >= 1, got {n_max}")
    if profile == "none" or num_classes == 1:
        return [int(n_max)] * num_classes
    factor = 1.0 / imbalance_ratio
    if profile == "exp":
        counts = [int(n_max * factor ** (k / (num_classes - 1.0))) for k in range(num_classes)]
    else:
        if not 0 < step_fraction < 1:
            raise LortError(f"step fraction must lie in (0, 1), got {step_fraction}")
        n_head = int(round(step_fraction * num_classes))
        counts = [n_max] * n_head + [int(n_max * factor)] * (num_classes - n_head)
    for k, n in enumerate(counts):
        if n < 1:
            raise LortError(
                f"imbalance ratio {imbalance_ratio} leaves class {k} with zero images "
                f"(n_max={n_max}); use a smaller ratio or a larger n_max"
            )
    return counts
