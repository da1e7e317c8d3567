"""Stage 2: classifier re-training on a frozen representation (LORT and baselines).

Names are imported lazily, so that a leaf such as :mod:`lort.stage2.schedule` can be
imported (by the configuration, say) without loading the methods."""

_EXPORTS = {
    "compare": "compare",
    "evaluate_test": "compare",
    "fit_method": "compare",
    "LogitsRetargetingLoss": "losses",
    "lort_target": "losses",
    "ratio_from_smooth": "losses",
    "smooth_from_ratio": "losses",
    "METHODS": "methods",
    "Method": "methods",
    "get_method": "methods",
    "register_method": "methods",
    "resolve_methods": "methods",
    "Param": "params",
    "Schedule": "schedule",
    "fit_head": "trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
