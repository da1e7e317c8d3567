"""Stage-2 re-training as scikit-learn-style estimators, for features users already have.

``LogitsRetargetingClassifier`` is LORT; ``RetrainingClassifier(method=...)`` gives every
registered stage-2 method the same interface. Both follow the scikit-learn estimator
contract (hyperparameters as keyword arguments stored unchanged, ``fit`` returns ``self``,
fitted attributes end in ``_``) and inherit scikit-learn's base classes when it is
installed; it is not required. Inputs may be numpy arrays, lists or torch tensors, and
labels any hashable values (strings too): ``classes_`` holds them in sorted order and
row ``k`` of ``coef_`` belongs to ``classes_[k]``.

Hyperparameters given as a list (``smooth=[0.9, 0.98]``, ``lr=[5e-4, 5e-3]``) are searched
on validation data passed to ``fit(X, y, X_val=..., y_val=...)`` by the comparison's
selection rule (:mod:`lort.stage2.selection`: balanced accuracy, ties by the lower
class-balanced log-loss, then the earlier), and the epoch is chosen there too; without validation data lists are
refused and the last epoch is kept.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .data.features import FeatureSet
from .errors import LortError
from .stage2.compare import fit_method
from .stage2.losses import DEFAULT_SMOOTH
from .stage2.methods import Method, get_method
from .stage2.schedule import Schedule, check_lrs

try:  # scikit-learn is optional: with it, the estimators are scikit-learn estimators
    from sklearn.base import BaseEstimator as _Base
    from sklearn.base import ClassifierMixin as _Mixin
    from sklearn.exceptions import DataConversionWarning, NotFittedError
except ImportError:  # pragma: no cover - exercised by a test that hides scikit-learn

    class NotFittedError(ValueError, AttributeError):
        """The estimator is used before ``fit``."""

    class DataConversionWarning(UserWarning):
        """Input data was converted (e.g. a column vector of labels flattened)."""

    class _Base:
        """The parts of scikit-learn's ``BaseEstimator`` the contract needs."""

        @classmethod
        def _get_param_names(cls) -> list[str]:
            sig = inspect.signature(cls.__init__)
            return sorted(p.name for p in sig.parameters.values() if p.name != "self" and p.kind != p.VAR_KEYWORD)

        def get_params(self, deep: bool = True) -> dict[str, Any]:
            return {name: getattr(self, name) for name in self._get_param_names()}

        def set_params(self, **params):
            valid = self._get_param_names()
            for key, value in params.items():
                if key not in valid:
                    raise ValueError(f"invalid parameter {key!r} for {type(self).__name__}; valid: {', '.join(valid)}")
                setattr(self, key, value)
            return self

        def __repr__(self) -> str:
            args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
            return f"{type(self).__name__}({args})"

    class _Mixin:
        _estimator_type = "classifier"

        def score(self, X, y) -> float:
            return float(np.mean(self.predict(X) == np.asarray(_as_numpy(y))))


class InputError(LortError, ValueError):
    """Bad input to an estimator: a ``ValueError`` (as scikit-learn expects) and a
    :class:`~lort.errors.LortError` (so the command line reports it in one line)."""


# ----------------------------------------------------------------------------- input checks


def _as_numpy(a):
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return a


def _plain(v):
    """A numpy scalar as the Python value (for messages)."""
    return v.item() if isinstance(v, np.generic) else v


def check_features(X, name: str = "X", n_features: int | None = None, owner: str = "the estimator") -> np.ndarray:
    """``X`` as a 2-D float32 array with finite values; ``ValueError`` naming the fault."""
    X = _as_numpy(X)
    if hasattr(X, "toarray") and hasattr(X, "nnz"):
        raise TypeError(f"{name} is a sparse matrix; pass a dense array (lort re-trains dense feature vectors)")
    arr = np.asarray(X)
    if np.iscomplexobj(arr):
        raise InputError(f"{name}: Complex data not supported")
    if arr.dtype.kind in "OUSV":
        arr = arr.astype(np.float64)  # a TypeError/ValueError names the value that is not a number
    if arr.ndim != 2:
        raise InputError(
            f"Expected 2D array, got {arr.ndim}D array instead for {name} (shape {arr.shape}): "
            "Reshape your data either using array.reshape(-1, 1) if your data has a single feature "
            "or array.reshape(1, -1) if it contains a single sample."
        )
    if arr.shape[0] < 1:
        raise InputError(f"{name}: Found array with 0 sample(s) (shape={arr.shape}) while a minimum of 1 is required.")
    if arr.shape[1] < 1:
        raise InputError(f"{name}: Found array with 0 feature(s) (shape={arr.shape}) while a minimum of 1 is required.")
    if arr.dtype.kind not in "fiub":
        raise InputError(f"{name}: features must be numbers, got dtype {arr.dtype}")
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused below
        arr = arr.astype(np.float32, copy=False)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        kind = "NaN" if np.isnan(arr[row]).any() else "infinity"
        raise InputError(f"Input {name} contains {kind} (row {row}; or a value beyond float32's range)")
    if n_features is not None and arr.shape[1] != n_features:
        raise InputError(f"X has {arr.shape[1]} features, but {owner} is expecting {n_features} features as input.")
    return arr


def check_labels(y, n: int, name: str = "y") -> np.ndarray:
    """``y`` as a 1-D array of class labels of length ``n`` (a column vector is flattened
    with a ``DataConversionWarning``); continuous values are refused."""
    if y is None:
        raise InputError(f"{name}: this estimator requires y to be passed, but the target y is None")
    y = np.asarray(_as_numpy(y))
    if y.ndim == 2 and y.shape[1] == 1:
        warnings.warn(
            "A column-vector y was passed when a 1d array was expected. Please change the shape of y "
            "to (n_samples, ), for example using ravel().",
            DataConversionWarning,
            stacklevel=3,
        )
        y = y.ravel()
    if y.ndim != 1:
        raise InputError(f"{name} must be 1-D (one label per sample), got shape {y.shape}")
    if len(y) != n:
        raise InputError(f"{name} has {len(y)} labels but X has {n} rows; give one label per feature row")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise InputError(f"{name} contains NaN or infinity")
        if not np.array_equal(y, np.round(y)):
            raise InputError(
                f"Unknown label type: continuous ({name} holds non-integer floats such as {_plain(y[y != np.round(y)][0])!r})"
            )
    if y.dtype.kind == "c":
        raise InputError(f"Unknown label type: complex values in {name}")
    if y.dtype.kind == "O":
        kinds = {type(v) for v in y}
        if any(issubclass(t, str) for t in kinds) and not all(issubclass(t, str) for t in kinds):
            raise InputError(f"Unknown label type: {name} mixes strings and other values")
    return y


def _plain_values(value):
    """A numpy array of values to search as a list (the methods take values or lists)."""
    return value.tolist() if isinstance(value, np.ndarray) else value


def _grid_values(value, name: str) -> list:
    if isinstance(value, str) or not isinstance(value, Sequence | np.ndarray):
        return [value]
    values = list(value)
    if not values:
        raise InputError(f"{name} is an empty list; give a value or a list of values to search")
    return values


# ----------------------------------------------------------------------------- estimators


def _store_params(estimator, params: dict) -> None:
    """Store the ``__init__`` arguments unchanged as attributes (the estimator contract)."""
    for name, value in params.items():
        if name != "self":
            setattr(estimator, name, value)


class _RetrainerBase(_Mixin, _Base):
    """The shared machinery; subclasses define ``__init__`` (the public parameters) and
    ``_method_and_grid``."""

    def _method_and_params(self) -> tuple[Method, dict[str, Any]]:
        """The stage-2 method and the hyperparameters this estimator fixes (values or lists)."""
        raise NotImplementedError

    def _schedule_lrs(self) -> tuple[Schedule, tuple[float, ...]]:
        lrs = check_lrs(_grid_values(self.lr, "lr"), "lr")  # named "lr" in its error
        seed = 0 if self.random_state is None else self.random_state
        if not isinstance(seed, int | np.integer):
            raise InputError(f"random_state must be an integer or None, got {seed!r}")
        return Schedule.searching(
            lrs,
            epochs=self.epochs,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            seed=int(seed),
        )

    def _init_classifier(self, k: int, d: int):
        if self.warm_start and hasattr(self, "coef_"):
            if self.coef_.shape != (k, d):
                raise InputError(
                    f"warm_start: the fitted coef_ has shape {self.coef_.shape}, the new data needs {(k, d)}"
                )
            return self.coef_.astype(np.float32), self.intercept_.astype(np.float32), "warm start (previous fit)"
        if self.init_coef is None:
            if self.init_intercept is not None:
                raise InputError("init_intercept is given without init_coef")
            return None, None, None
        w = check_features(self.init_coef, "init_coef")
        if w.shape != (k, d):
            raise InputError(f"init_coef has shape {w.shape}, expected (n_classes, n_features) = {(k, d)}")
        b = (
            np.zeros(k, np.float32)
            if self.init_intercept is None
            else np.asarray(_as_numpy(self.init_intercept), np.float32)
        )
        if b.shape != (k,) or not np.isfinite(b).all():
            raise InputError(f"init_intercept must hold {k} finite values, got shape {b.shape}")
        return w, b, "the given init_coef / init_intercept"

    def fit(self, X, y, X_val=None, y_val=None):
        """Re-train the classifier on features ``X`` (n_samples, n_features) with labels
        ``y``; ``X_val``/``y_val`` (optional) choose the epoch and any listed
        hyperparameters. Returns ``self``. Bad input raises ``ValueError``."""
        try:
            return self._fit(X, y, X_val, y_val)
        except LortError as exc:
            if isinstance(exc, ValueError):
                raise
            raise InputError(str(exc)) from None  # lort's own checks surface as the estimator's ValueError

    def _fit(self, X, y, X_val, y_val):
        X = check_features(X, "X")
        y = check_labels(y, len(X))
        try:
            classes, y_idx = np.unique(y, return_inverse=True)
        except TypeError:
            raise InputError("y holds labels that cannot be ordered against each other; use one type") from None
        if len(classes) < 2:
            raise InputError(
                f"y holds one class only ({_plain(classes[0])!r}); a classifier needs samples of at least 2 classes"
            )
        splits = {"train": (X, y_idx.astype(np.int64))}
        if (X_val is None) != (y_val is None):
            raise InputError("give both X_val and y_val, or neither")
        if X_val is not None:
            xv = check_features(X_val, "X_val", X.shape[1])
            yv = check_labels(y_val, len(xv), "y_val")
            try:
                pos = np.searchsorted(classes, yv)
            except TypeError:
                raise InputError(f"y_val labels ({yv.dtype}) are not of the type of y's ({classes.dtype})") from None
            pos = np.clip(pos, 0, len(classes) - 1)
            unknown = classes[pos] != yv
            if unknown.any():
                raise InputError(f"y_val holds label {_plain(yv[unknown][0])!r}, which is not a class of y")
            splits["val"] = (xv, pos.astype(np.int64))
        has_val = "val" in splits
        method, fixed = self._method_and_params()
        schedule, lrs = self._schedule_lrs()
        searched = {k: v for k, v in method.fixed_values(fixed).items() if len(v) > 1}
        searched |= {"lr": list(lrs)} if len(lrs) > 1 else {}
        if searched and not has_val:
            names = ", ".join(searched)
            raise InputError(f"{names} list several values to search; pass X_val and y_val to choose among them")
        init_w, init_b, init_src = self._init_classifier(len(classes), X.shape[1])
        fs = FeatureSet(splits=splits, classes=[str(c) for c in classes], init_weight=init_w, init_bias=init_b)
        result = fit_method(method, fs, schedule, lrs if method.trains else None, fixed)
        head = result.head
        w, b = head.linear_params()
        self.classes_ = classes
        self.n_features_in_ = X.shape[1]
        self.coef_ = w[0].numpy().astype(np.float64)
        self.intercept_ = b[0].numpy().astype(np.float64)
        self.normalize_input_ = not head.plain_linear
        self.best_params_ = {k: v for k, v in result.hyperparameters.items() if k != "note"} | {"epoch": result.epoch}
        self.search_results_ = result.search
        self.init_ = init_src or fs.meta.get("init_classifier", "")
        self.validation_score_ = None if result.val is None else result.val["balanced_acc"]
        return self

    # -- prediction

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X, y) first")

    def decision_function(self, X) -> np.ndarray:
        """Logits ``(n_samples, n_classes)``; for two classes the margin of ``classes_[1]``."""
        self._check_fitted()
        X = check_features(X, "X", self.n_features_in_, type(self).__name__).astype(np.float64)
        if self.normalize_input_:
            X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        logits = X @ self.coef_.T + self.intercept_
        return logits[:, 1] - logits[:, 0] if len(self.classes_) == 2 else logits

    def predict_proba(self, X) -> np.ndarray:
        """Softmax of the logits. LORT trains towards a flat target, so these
        probabilities are deliberately soft: rank by them, do not read them as calibrated."""
        d = self.decision_function(X)
        logits = np.stack([np.zeros_like(d), d], axis=1) if d.ndim == 1 else d
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        d = self.decision_function(X)
        idx = (d > 0).astype(int) if d.ndim == 1 else d.argmax(axis=1)
        return self.classes_[idx]

    def to_linear(self) -> torch.nn.Linear:
        """The fitted classifier as a ``torch.nn.Linear`` (rows in ``classes_`` order)."""
        self._check_fitted()
        if self.normalize_input_:
            raise InputError("this method's classifier expects L2-normalised features; it is not a plain nn.Linear")
        k, d = self.coef_.shape
        layer = torch.nn.Linear(d, k)
        with torch.no_grad():
            layer.weight.copy_(torch.as_tensor(self.coef_))
            layer.bias.copy_(torch.as_tensor(self.intercept_))
        return layer


class LogitsRetargetingClassifier(_RetrainerBase):
    """LORT: re-train a linear classifier on frozen features against the over-smoothed
    target ``(1 - s) * onehot + s / K`` (no class counts used).

    The classifier starts from ``init_coef``/``init_intercept`` (e.g. your network's last
    layer, or a fitted model's ``coef_``/``intercept_``), from the previous fit with
    ``warm_start=True``, or else from a plain cross-entropy fit on the same data (SGD,
    cosine; defaults lr 5e-4, 20 epochs, batch 64). ``recipe="default"`` retargets it on a
    head that cannot store the class prior — the class directions at unit norm on features
    centred on their training mean, one learned logit scale, no bias — which keeps its
    gain at convergence (results/lort_default/); ``recipe="reference"`` is the paper's
    recipe (the plain weights and bias re-trained), whose gain is a transient of the
    schedule. Either way the result is a plain linear classifier (``coef_``, ``intercept_``). ``smooth`` (s) or ``target_ratio`` (the
    K-independent ratio ``r = 1 + K(1-s)/s`` of true-class to other-class target) and
    ``lr`` may be lists, searched on ``X_val``/``y_val``; the epoch is chosen there too.
    ``class_balanced=True`` draws training samples class-balanced (``lort_balanced``, the
    reference recipe's head)."""

    def __init__(
        self,
        smooth=DEFAULT_SMOOTH,
        *,
        target_ratio=None,
        recipe: str = "default",
        class_balanced: bool = False,
        epochs: int = Schedule.epochs,
        lr=Schedule.lr,
        batch_size: int = Schedule.batch_size,
        momentum: float = Schedule.momentum,
        weight_decay: float = Schedule.weight_decay,
        init_coef=None,
        init_intercept=None,
        warm_start: bool = False,
        random_state: int | None = 0,
    ) -> None:
        _store_params(self, locals())

    def _method_and_params(self) -> tuple[Method, dict[str, Any]]:
        if self.recipe not in ("default", "reference"):
            raise InputError(f"recipe must be 'default' or 'reference', got {self.recipe!r}")
        name = "lort_balanced" if self.class_balanced else ("lort" if self.recipe == "default" else "lort_reference")
        method = get_method(name)
        if self.target_ratio is not None:
            return method, {"target_ratio": _plain_values(self.target_ratio)}
        return method, {"smooth": _plain_values(self.smooth)}


class RetrainingClassifier(_RetrainerBase):
    """Any registered stage-2 method (``lort methods`` lists them) as an estimator.

    ``params`` sets the method's own hyperparameters (e.g. ``{"tau": [0.5, 1.0]}`` for
    ``tau_norm``, ``{"beta": 0.999}`` for ``cb_reweight``); lists are searched on
    validation data; a method's hyperparameters not given take their whole grid with
    validation data and their default (the source's, where it publishes one) without. The other arguments are as for
    :class:`LogitsRetargetingClassifier`."""

    def __init__(
        self,
        method: str = "lort",
        *,
        params: dict | None = None,
        epochs: int = Schedule.epochs,
        lr=Schedule.lr,
        batch_size: int = Schedule.batch_size,
        momentum: float = Schedule.momentum,
        weight_decay: float = Schedule.weight_decay,
        init_coef=None,
        init_intercept=None,
        warm_start: bool = False,
        random_state: int | None = 0,
    ) -> None:
        _store_params(self, locals())

    def _method_and_params(self) -> tuple[Method, dict[str, Any]]:
        method = get_method(self.method)
        given = self.params or {}
        if not isinstance(given, dict):
            raise InputError(f"params must be a dict of hyperparameters, got {given!r}")
        return method, {k: _plain_values(v) for k, v in given.items()}
