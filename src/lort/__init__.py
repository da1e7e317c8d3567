"""lort: long-tailed recognition by decoupled training.

The three entry points for your own models (imported lazily, so ``lort`` on the command
line starts fast): :class:`LogitsRetargetingClassifier` and :class:`RetrainingClassifier`
(scikit-learn-style estimators on features), :func:`retrain_classifier` (re-train the last
layer of any ``torch.nn.Module``) and :class:`LogitsRetargetingLoss` (for your own loop).
"""

__version__ = "0.1.0"

_EXPORTS = {
    "LogitsRetargetingClassifier": "lort.estimator",
    "RetrainingClassifier": "lort.estimator",
    "LogitsRetargetingClassifierCV": "lort.estimator",
    "RetrainingClassifierCV": "lort.estimator",
    "retrain_classifier": "lort.surgery",
    "LogitsRetargetingLoss": "lort.stage2.losses",
    "lort_target": "lort.stage2.losses",
    "load_features": "lort.data.features",
    "FeatureSet": "lort.data.features",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lort' has no attribute {name!r}")
