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

from .analysis.metrics import per_class_accuracy
from .data.features import FeatureSet
from .errors import LortError
from .stage2.compare import fit_method
from .stage2.crossval import (
    PREFERRED,
    choose_method,
    cross_validate,
    one_standard_error,
    refit,
    stratified_folds,
)
from .stage2.heads import logits_of
from .stage2.losses import DEFAULT_SMOOTH
from .stage2.methods import METHODS, Method, get_method
from .stage2.schedule import DEFAULT_FITS_PER_METHOD, DEFAULT_LRS, Schedule, check_lrs

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


def _refuse_fit_params(fit_params: dict) -> None:
    """``sample_weight`` (or any other fit parameter) is refused in one clear line."""
    if "sample_weight" in fit_params:
        raise InputError(
            "sample_weight is not supported: lort's methods re-weight classes by their own rules "
            "(e.g. cb_reweight, ldam_drw); pass the samples unweighted"
        )
    if fit_params:
        raise InputError(f"unknown fit parameter(s): {', '.join(sorted(fit_params))}")


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

    def fit(self, X, y, X_val=None, y_val=None, **fit_params):
        """Re-train the classifier on features ``X`` (n_samples, n_features) with labels
        ``y``; ``X_val``/``y_val`` (optional) choose the epoch and any listed
        hyperparameters. Returns ``self``. Bad input raises ``ValueError``."""
        _refuse_fit_params(fit_params)
        try:
            return self._fit(X, y, X_val, y_val)
        except LortError as exc:
            if isinstance(exc, ValueError):
                raise
            raise InputError(str(exc)) from None  # lort's own checks surface as the estimator's ValueError

    def _data(self, X, y, X_val, y_val) -> tuple[np.ndarray, FeatureSet]:
        """The checked inputs as a feature set (labels as class indices) and the classes."""
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
        init_w, init_b, init_src = self._init_classifier(len(classes), X.shape[1])
        fs = FeatureSet(splits=splits, classes=[str(c) for c in classes], init_weight=init_w, init_bias=init_b)
        fs.meta["init_given"] = init_src
        return classes, fs

    def _store(self, head, classes: np.ndarray, fs: FeatureSet) -> None:
        w, b = head.linear_params()
        self.classes_ = classes
        self.n_features_in_ = fs.dim
        self.coef_ = w[0].cpu().numpy().astype(np.float64)
        self.intercept_ = b[0].cpu().numpy().astype(np.float64)
        self.normalize_input_ = not head.plain_linear
        self.init_ = fs.meta.get("init_given") or fs.meta.get("init_classifier", "")

    def _fit(self, X, y, X_val, y_val):
        classes, fs = self._data(X, y, X_val, y_val)
        has_val = fs.has_split("val")
        method, fixed = self._method_and_params()
        schedule, lrs = self._schedule_lrs()
        searched = {k: v for k, v in method.fixed_values(fixed).items() if len(v) > 1}
        searched |= {"lr": list(lrs)} if len(lrs) > 1 else {}
        if searched and not has_val:
            names = ", ".join(searched)
            raise InputError(
                f"{names} list several values to search; pass X_val and y_val to choose among them, "
                "or use the cross-validating estimator (RetrainingClassifierCV, LogitsRetargetingClassifierCV)"
            )
        result = fit_method(method, fs, schedule, lrs if method.trains else None, fixed)
        self._store(result.head, classes, fs)
        self.best_params_ = {k: v for k, v in result.hyperparameters.items() if k != "note"} | {"epoch": result.epoch}
        self.search_results_ = result.search
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


# ----------------------------------------------------------------------------- cross-validated selection


class RetrainingClassifierCV(_RetrainerBase):
    """A stage-2 method, or the best of several (``method="auto"``), chosen without a
    validation split: stratified ``cv``-fold cross-validation on the training data
    (:mod:`lort.stage2.crossval`) chooses each method's hyperparameters, learning rate and
    epoch by the comparison's selection rule (balanced accuracy, ties by the lower
    class-balanced log-loss), and, for ``"auto"``, the method; the winner is refitted on
    all of the training data. Given ``X_val``/``y_val``, those choose instead (as
    ``lort compare`` does) and no folds are made.

    ``method``: a method name, ``"auto"`` (every registered method) or a list of names.
    ``params``: ``{method: {hyperparameter: value or list}}`` (or, for one method, its own
    ``{hyperparameter: ...}``); what is not given is searched over the same budget as
    ``lort compare`` (``fits_per_method`` settings, ``lr`` spread over the given range).
    ``prefer`` (default ``"lort"``; ``None`` for the plain arg-max, as ``GridSearchCV``
    chooses): among methods chosen by the folds, the preferred one is kept unless the
    fold-best beats it by more than one standard error of their paired fold difference
    (the one-standard-error rule; :func:`lort.stage2.crossval.choose_method`);
    ``selection_`` states the gap and the error when the two differ. Not applied when
    ``X_val`` chooses. ``nested=True`` also estimates the selected model's accuracy without the optimism of
    the selection: an outer ``cv``-fold loop repeats the whole selection on each outer
    training part and scores it on the held-out part (``nested_score_``; ``cv`` times the
    cost). Classes with fewer samples than folds stay in training and are scored in the
    folds that hold one of their samples out; a class with one sample is never scored
    (``cv_folds_`` says which).

    ``backbone_trained_on_X=True`` says that the network whose features ``X`` holds was
    trained on these very samples (decoupled training: stage 1 on this training set). Its
    held-out folds are then images the backbone fitted, so their scores are optimistic and
    favour the methods that keep the training distribution: on three CIFAR-10-LT
    backbones' own training images the folds' choice lost to the default LORT on the
    validation split on two of them, and the folds' tuning of LORT lost to its defaults on
    all three (``results/crossval/``). With it and no ``X_val`` the folds still run and are
    reported (``cv_results_``), but the classifier kept is ``prefer``'s at its defaults (no
    search, the schedule's first learning rate, the last epoch), and ``selection_`` says so;
    with ``prefer=None``, or a method list without ``prefer``, the folds choose as usual.

    Fitted attributes beyond the base estimator's: ``best_method_``, ``best_params_``
    (with ``epoch``), ``best_score_`` (the fold-mean balanced accuracy of the choice: biased
    upwards by the selection), ``cv_results_`` (one row per method, scikit-learn's layout:
    ``method``, ``params``, ``mean_test_score``, ``std_test_score``,
    ``split<i>_test_score``, ``rank_test_score``), ``selection_`` (how the choice was made).
    ``best_score_`` is NaN where ``backbone_trained_on_X`` kept the defaults (the folds
    scored no such candidate on its own)."""

    def __init__(
        self,
        method="auto",
        *,
        cv: int = 5,
        params: dict | None = None,
        lr=DEFAULT_LRS,
        fits_per_method: int | None = DEFAULT_FITS_PER_METHOD,
        nested: bool = False,
        prefer: str | None = PREFERRED,
        backbone_trained_on_X: bool = False,
        epochs: int = Schedule.epochs,
        batch_size: int = Schedule.batch_size,
        momentum: float = Schedule.momentum,
        weight_decay: float = Schedule.weight_decay,
        init_coef=None,
        init_intercept=None,
        warm_start: bool = False,
        random_state: int | None = 0,
    ) -> None:
        _store_params(self, locals())

    def _candidates(self) -> list[tuple[Method, dict[str, Any]]]:
        names = self.method
        if names == "auto":
            names = list(METHODS)
        elif isinstance(names, str):
            names = [names]
        names = list(names)
        if not names:
            raise InputError("method lists no methods; give a name, a list of names or 'auto'")
        given = self.params or {}
        if not isinstance(given, dict):
            raise InputError(f"params must be a dict, got {given!r}")
        per_method = given if all(n in METHODS for n in given) and given else {}
        if given and not per_method:  # the hyperparameters of the one method given
            if len(names) != 1:
                raise InputError("with several methods, params maps each method name to its hyperparameters")
            per_method = {names[0]: given}
        out = []
        for name in names:
            m = get_method(name)
            fixed = {k: _plain_values(v) for k, v in (per_method.get(name) or {}).items()}
            m.fixed_values(fixed)  # an unknown hyperparameter fails before any work
            out.append((m, fixed))
        return out

    def _method_and_params(self):  # the base class's single-method path is not used here
        raise NotImplementedError

    def _fit(self, X, y, X_val, y_val):
        classes, fs = self._data(X, y, X_val, y_val)
        candidates = self._candidates()
        schedule, lrs = self._schedule_lrs()
        if fs.has_split("val"):
            method, setting, epoch, results, how = self._select_on_validation(candidates, fs, schedule, lrs)
            head, _ = refit(method, fs, schedule, setting, epoch)
            kept = None
        else:
            self.cv_folds_ = stratified_folds(fs.splits["train"][1], self.cv, schedule.seed)
            kept = self._kept_on_seen_images(candidates)
            head, method, setting, epoch, results, how = self._choose_by_folds(
                candidates, fs, schedule, lrs, self.cv_folds_, kept
            )
        self._store(head, classes, fs)
        self.best_method_ = method.name
        self.best_params_ = dict(setting) | {"epoch": epoch}
        self.cv_results_ = results
        self.best_score_ = (
            float("nan")  # the folds did not score the defaults as one candidate
            if kept is not None
            else float(results["mean_test_score"][results["method"].index(method.name)])
        )
        self.selection_ = how
        if self.nested:
            if fs.has_split("val"):
                raise InputError("nested=True estimates a cross-validated selection; it needs no X_val")
            self.nested_score_, self.nested_scores_ = self._nested(candidates, fs, schedule, lrs)
        return self

    def _choose_by_folds(self, candidates, fs, schedule, lrs, folds, kept: Method | None):
        """``(head refitted on all of fs, method, setting, epoch, cv_results_, how)``; ``kept``:
        the method :meth:`_kept_on_seen_images` keeps at its defaults (None: the folds' choice)."""
        method, setting, epoch, results, how = self._select_by_folds(candidates, fs, schedule, lrs, folds)
        if kept is None:
            if self.backbone_trained_on_X:
                how += "; backbone_trained_on_X=True but no preferred method among the candidates: the folds chose"
            head, _ = refit(method, fs, schedule, setting, epoch)
            return head, method, setting, epoch, results, how
        found = fit_method(kept, fs, schedule, None, {})  # the backbone fitted the folds' images: its defaults
        setting = {k: v for k, v in found.hyperparameters.items() if k != "note"}
        how += (
            "; backbone_trained_on_X=True: the held-out folds are images the backbone was trained on, so their "
            f"ranking is optimistic and is reported only; {kept.name} kept at its defaults"
        )
        return found.head, kept, setting, found.epoch, results, how

    def _kept_on_seen_images(self, candidates) -> Method | None:
        """The method kept at its defaults when ``backbone_trained_on_X`` (None: the folds choose)."""
        if not isinstance(self.backbone_trained_on_X, bool | np.bool_):
            raise InputError(f"backbone_trained_on_X must be True or False, got {self.backbone_trained_on_X!r}")
        if not self.backbone_trained_on_X:
            return None
        methods = [m for m, _ in candidates]
        if len(methods) == 1:
            return methods[0]
        prefer = getattr(self, "prefer", None)
        return next((m for m in methods if m.name == prefer), None)

    def _select_by_folds(self, candidates, fs, schedule, lrs, folds):
        runs = [cross_validate(m, fs, schedule, lrs if m.trains else None, fixed, folds, self.fits_per_method)
                for m, fixed in candidates]  # fmt: skip
        prefer = getattr(self, "prefer", None)  # the one-method LogitsRetargetingClassifierCV has none
        if prefer is not None and not isinstance(prefer, str):
            raise InputError(f"prefer must be a method name or None, got {prefer!r}")
        names = [r.method for r in runs]
        win, why = one_standard_error(names, choose_method(runs), [r.fold_accuracies for r in runs], prefer)
        results = _cv_table(runs, self.cv)
        r = runs[win]
        how = folds.describe() + (f"; {why}" if why else "")
        return candidates[win][0], r.settings[r.best], r.epoch, results, how

    def _select_on_validation(self, candidates, fs, schedule, lrs):
        from .stage2.compare import fit_methods
        from .stage2.context import context
        from .stage2.selection import best_index

        methods = [m for m, _ in candidates]
        fixed = {m.name: f for m, f in candidates if f}
        ctx = context(fs, schedule, schedule.seed)
        found = fit_methods(methods, fs, schedule, lrs, fixed, ctx, fits_per_method=self.fits_per_method)
        rows = [[r.search[r.choice]["val_balanced_acc"], -(r.search[r.choice]["val_log_loss"] or 0.0)] for r in found]
        win = best_index(rows)
        r = found[win]
        results = {
            "method": [x.method for x in found],
            "params": [{k: v for k, v in x.hyperparameters.items() if k != "note"} for x in found],
            "mean_test_score": np.array([row[0] for row in rows], dtype=float),
            "std_test_score": np.zeros(len(found)),
            "rank_test_score": _ranks([row[0] for row in rows]),
        }
        setting = {k: v for k, v in r.hyperparameters.items() if k != "note"}
        return candidates[win][0], setting, r.epoch, results, "the given validation split (X_val, y_val)"

    def _nested(self, candidates, fs, schedule, lrs):
        outer = stratified_folds(fs.splits["train"][1], self.cv, schedule.seed + 1)
        kept = self._kept_on_seen_images(candidates)
        x, y = fs.splits["train"]
        scores = []
        for f in range(self.cv):
            held, rows = np.flatnonzero(outer.fold == f), np.flatnonzero(outer.fold != f)
            if not len(held):
                continue
            inner = FeatureSet({"train": (x[rows], y[rows])}, fs.classes, fs.init_weight, fs.init_bias)
            inner_folds = stratified_folds(y[rows], self.cv, schedule.seed)
            head = self._choose_by_folds(candidates, inner, schedule, lrs, inner_folds, kept)[0]
            pred = logits_of(head, x[held]).argmax(1)
            scores.append(float(np.nanmean(per_class_accuracy(pred, y[held], fs.num_classes))))
        return float(np.mean(scores)), scores


class LogitsRetargetingClassifierCV(RetrainingClassifierCV):
    """LORT with its smoothing, learning rate and epoch chosen by stratified ``cv``-fold
    cross-validation on the training data (no validation split needed); see
    :class:`RetrainingClassifierCV` for the procedure and the fitted attributes.
    ``smooth``: a value or a list (default: LORT's searched grid, spread over the same
    budget as ``lort compare``). ``backbone_trained_on_X=True``: LORT at its defaults, the
    folds reported only (see :class:`RetrainingClassifierCV`)."""

    def __init__(
        self,
        smooth=None,
        *,
        recipe: str = "default",
        cv: int = 5,
        lr=DEFAULT_LRS,
        fits_per_method: int | None = DEFAULT_FITS_PER_METHOD,
        nested: bool = False,
        backbone_trained_on_X: bool = False,
        epochs: int = Schedule.epochs,
        batch_size: int = Schedule.batch_size,
        momentum: float = Schedule.momentum,
        weight_decay: float = Schedule.weight_decay,
        init_coef=None,
        init_intercept=None,
        warm_start: bool = False,
        random_state: int | None = 0,
    ) -> None:
        _store_params(self, locals())

    def _candidates(self):
        if self.recipe not in ("default", "reference"):
            raise InputError(f"recipe must be 'default' or 'reference', got {self.recipe!r}")
        m = get_method("lort" if self.recipe == "default" else "lort_reference")
        fixed = {} if self.smooth is None else {"smooth": _plain_values(self.smooth)}
        m.fixed_values(fixed)
        return [(m, fixed)]


def _ranks(scores) -> np.ndarray:
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    ranks = np.empty(len(order), dtype=int)
    ranks[order] = np.arange(1, len(order) + 1)
    return ranks


def _cv_table(runs, k: int) -> dict:
    """``cv_results_`` in scikit-learn's layout: one row per method at its chosen setting."""
    accs = np.stack([r.fold_accuracies for r in runs])  # (M, k)
    out = {
        "method": [r.method for r in runs],
        "params": [dict(r.settings[r.best]) | {"epoch": r.epoch} for r in runs],
        "mean_test_score": np.nanmean(accs, axis=1),
        "std_test_score": np.nanstd(accs, axis=1),
    }
    for i in range(k):
        out[f"split{i}_test_score"] = accs[:, i]
    out["rank_test_score"] = _ranks(out["mean_test_score"])
    return out
