"""Stage 2: classifier re-training on a frozen representation (LORT and baselines)."""

from .compare import compare, evaluate_test, fit_method
from .losses import LogitsRetargetingLoss, lort_target, ratio_from_smooth, smooth_from_ratio
from .methods import METHODS, Method, get_method, register_method, resolve_methods
from .trainer import Schedule, fit_head

__all__ = [
    "METHODS",
    "LogitsRetargetingLoss",
    "Method",
    "Schedule",
    "compare",
    "evaluate_test",
    "fit_head",
    "fit_method",
    "get_method",
    "lort_target",
    "ratio_from_smooth",
    "register_method",
    "resolve_methods",
    "smooth_from_ratio",
]
