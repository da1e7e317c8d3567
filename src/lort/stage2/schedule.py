"""The stage-2 re-training schedule: its defaults and checks, written once.

A leaf module (it imports no method), so the configuration, the command line and the
estimators take their defaults from here without loading stage 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import LortError

DEFAULT_LRS = (5e-4, 5e-3, 5e-2)  # learning rates searched on validation
DEFAULT_FITS_PER_METHOD = 6  # fits per method in a comparison: 3 learning rates x 2 settings, or 6 learning rates
DEFAULT_SEEDS = 3  # stage-2 seeds of a comparison run from the command line or a config


def check_comparison(fits_per_method, seeds) -> None:
    """``fits_per_method`` (or None for whole grids) and ``seeds``, else a LortError."""
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise LortError(f"seeds must be an integer >= 1, got {seeds!r}")
    fits = fits_per_method
    if fits is not None and (not isinstance(fits, int) or isinstance(fits, bool) or fits < 1):
        raise LortError(f"the budget (fits per method) must be an integer >= 1 or none, got {fits!r}")


def check_lrs(lrs, what: str = "stage-2 learning rate") -> list[float]:
    """Every value a finite number > 0, else a LortError naming it."""
    out = []
    for lr in lrs:
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
            raise LortError(f"{what} must be > 0, got {lr!r}")
        out.append(float(lr))
    if not out:
        raise LortError(f"give at least one {what}")
    return out


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
        check_lrs([self.lr])
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise LortError(f"stage-2 epochs must be an integer >= 0, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise LortError(f"stage-2 batch size must be an integer >= 1, got {self.batch_size!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise LortError(f"stage-2 weight decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.momentum < 1:
            raise LortError(f"stage-2 momentum must lie in [0, 1), got {self.momentum!r}")

    @classmethod
    def searching(cls, lrs, **fields) -> tuple[Schedule, tuple[float, ...]]:
        """The schedule of a search over learning rates ``lrs`` (checked) and the rates as a
        tuple: the first rate is the schedule's own lr (used where nothing is searched)."""
        lrs = tuple(check_lrs(lrs, "learning rate"))
        return cls(lr=lrs[0], **fields), lrs

    def steps(self, rows: int) -> int:
        """Optimisation steps of the whole schedule on ``rows`` training rows."""
        return math.ceil(rows / self.batch_size) * self.epochs
