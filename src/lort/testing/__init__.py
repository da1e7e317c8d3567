"""Conformance checks for stage-2 methods, public like scikit-learn's ``check_estimator``.

A user who registers a method of their own (:func:`lort.stage2.methods.register_method`)
runs the invariants every built-in method passes::

    from lort.testing import check_method
    check_method(MY_METHOD)          # raises AssertionError naming what broke

The checks (each a function ``check_*`` here, also callable alone):

- **declared**: a name, a title, a source and at least one stated deviation; its
  settings are valid for its own declarations, and an undeclared hyperparameter is refused;
- **learns**: on features it has never seen, the chosen classifier is well above chance;
- **deterministic**: the same seed gives the same choices and the same logits;
- **no test data read**: scrambling the test labels and replacing the test features by
  NaN, passed through :func:`lort.stage2.compare.compare`, changes nothing that was chosen;
- **fused = alone**: compared beside other methods it makes the same choices as alone,
  and its logits agree to float rounding (the guarantee that holds on every CPU, see
  :mod:`lort.stage2.selection`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.features import FeatureSet
from ..data.longtail import VAL_PER_CLASS
from ..errors import LortError
from ..stage2.compare import MethodResult, compare
from ..stage2.heads import LinearHead, logits_of
from ..stage2.methods import METHODS, Method
from ..stage2.schedule import Schedule
from ..stage2.selection import LOG_LOSS_RTOL
from ..stage2.trainer import fit_head
from .oracles import grouped_cross_entropy

CHECK_LRS = (5e-3, 5e-2)
CHECK_SCHEDULE = Schedule(epochs=4, seed=3)


def synthetic_features(
    seed: int = 0,
    k: int = 5,
    d: int = 8,
    head: int = 200,
    ir: float = 20,
    val_per_class: int = VAL_PER_CLASS,
    test_per_class: int = 40,
) -> FeatureSet:
    """Gaussian class clusters with a long-tailed train split (``head`` samples in the
    largest class, imbalance ratio ``ir``), balanced validation and test splits, and a
    cross-entropy classifier fitted on the training split as the "stage-1" one."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1.5, size=(k, d))
    counts = [max(2, int(head * ir ** (-c / (k - 1)))) for c in range(k)]

    def draw(per_class):
        y = np.repeat(np.arange(k), per_class)
        return (means[y] + rng.normal(0, 1.0, size=(len(y), d))).astype(np.float32), y

    xtr, ytr = draw(counts)
    xv, yv = draw([val_per_class] * k)
    xte, yte = draw([test_per_class] * k)
    init = LinearHead(torch.zeros(k, d, device="cpu"), torch.zeros(k, device="cpu"))
    fit_head(
        init,
        torch.as_tensor(xtr),
        torch.as_tensor(ytr),
        lambda lg, y, e: grouped_cross_entropy(lg, y),
        Schedule(epochs=30, lr=0.05),
    )
    w, b = init.linear_params()
    return FeatureSet(
        splits={"train": (xtr, ytr), "val": (xv, yv), "test": (xte, yte)},
        classes=[f"c{i}" for i in range(k)],
        init_weight=w[0].numpy(),
        init_bias=b[0].numpy(),
    )


def _fit(method: Method, fs: FeatureSet, others: tuple[Method, ...] = ()) -> MethodResult:
    results = compare(fs, [method, *others], CHECK_SCHEDULE, lrs=CHECK_LRS, fits_per_method=None)
    return results[0]


def assert_same_choices(a: MethodResult, b: MethodResult, what: str) -> None:
    """``a`` and ``b`` chose the same setting and epoch, recorded the same validation
    balanced accuracy for every setting, and log-losses equal within the selection
    rule's tolerance."""
    name = a.method
    assert (a.hyperparameters, a.epoch) == (b.hyperparameters, b.epoch), (
        f"{name}: {what} changed the choice: {a.hyperparameters} epoch {a.epoch} vs {b.hyperparameters} epoch {b.epoch}"
    )
    assert len(a.search) == len(b.search), f"{name}: {what} changed the settings searched"
    for x, y in zip(a.search, b.search, strict=True):
        assert (x["hyperparameters"], x["epoch"], x["val_balanced_acc"]) == (
            y["hyperparameters"],
            y["epoch"],
            y["val_balanced_acc"],
        ), f"{name}: {what} changed the validation record of {x['hyperparameters']}"
        if x["val_log_loss"] is not None:
            close = abs(x["val_log_loss"] - y["val_log_loss"]) <= LOG_LOSS_RTOL * abs(y["val_log_loss"])
            assert close, f"{name}: {what} changed the validation log-loss of {x['hyperparameters']}"


def check_declared(method: Method) -> None:
    assert method.name and method.title and method.source, f"{method!r}: name, title and source must be set"
    assert method.deviations, f"{method.name}: state its deviations from the source (or that there are none)"
    for hp in method.settings(None, search=True) + method.settings(None, search=False):
        method.fixed_values({k: v for k, v in hp.items()})  # its own settings pass its declarations
    try:
        method.fixed_values({"no_such_hyperparameter": 1.0})
    except LortError:
        pass
    else:
        raise AssertionError(f"{method.name}: an undeclared hyperparameter was accepted")


def check_learns(method: Method, fs: FeatureSet) -> MethodResult:
    r = _fit(method, fs)
    x, y = fs.splits["test"]
    logits = logits_of(r.head, x)
    assert logits.shape == (len(y), fs.num_classes) and np.isfinite(logits).all(), f"{method.name}: bad logits"
    chance = 1.0 / fs.num_classes
    assert (logits.argmax(1) == y).mean() > 2.5 * chance, f"{method.name}: no better than chance"
    assert r.val is not None and r.search, f"{method.name}: nothing chosen on validation"
    return r


def check_deterministic(method: Method, fs: FeatureSet, first: MethodResult) -> None:
    again = _fit(method, fs)
    assert_same_choices(again, first, "a second run with the same seed")
    x = fs.splits["test"][0]
    np.testing.assert_allclose(logits_of(again.head, x), logits_of(first.head, x), rtol=1e-6, atol=1e-6)


def check_no_test_data_read(method: Method, fs: FeatureSet, first: MethodResult) -> None:
    x, y = fs.splits["test"]
    blind = FeatureSet(
        splits=dict(fs.splits) | {"test": (np.full_like(x, np.nan), np.random.default_rng(9).permutation(y))},
        classes=fs.classes,
        init_weight=fs.init_weight,
        init_bias=fs.init_bias,
    )
    other = _fit(method, blind)
    assert_same_choices(other, first, "scrambling the test split")
    xv = fs.splits["val"][0]
    np.testing.assert_allclose(logits_of(other.head, xv), logits_of(first.head, xv), rtol=1e-6, atol=1e-6)


def check_fused_equals_alone(method: Method, fs: FeatureSet, first: MethodResult) -> None:
    others = tuple(m for name, m in METHODS.items() if name in ("ce", "lort", "crt") and name != method.name)
    fused = _fit(method, fs, others)
    assert_same_choices(fused, first, "comparing it beside other methods")
    x = fs.splits["test"][0]
    np.testing.assert_allclose(logits_of(fused.head, x), logits_of(first.head, x), rtol=1e-4, atol=1e-4)


def check_method(method: Method | str, features: FeatureSet | None = None) -> None:
    """Run every check above on ``method`` (an instance or a registered name) with
    ``features`` (default: :func:`synthetic_features`). Raises ``AssertionError`` with
    the method's name and what broke."""
    method = METHODS[method] if isinstance(method, str) else method
    fs = features if features is not None else synthetic_features()
    check_declared(method)
    first = check_learns(method, fs)
    check_deterministic(method, fs, first)
    check_no_test_data_read(method, fs, first)
    check_fused_equals_alone(method, fs, first)
