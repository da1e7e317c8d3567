"""Selection without a validation split: stratified k-fold cross-validation on the
training split alone, by the comparison's own selection rule.

Every fold holds out part of each class and trains on the rest; each of a method's
planned settings (:func:`lort.stage2.plan.plan_job`: the same budget as ``lort compare``)
is trained on the fold's training part and scored after every epoch on its held-out part
(balanced accuracy, then minus the class-balanced log-loss). The fold-mean score rows
choose, by :mod:`lort.stage2.selection`, each setting's epoch and then the setting; the
winner is refitted on all the training data and kept at the chosen epoch of the same
schedule. Among methods (``method="auto"``), the method whose chosen setting has the best
fold-mean row wins, ties to the earlier in the order given; with a preferred method
(:data:`PREFERRED`, LORT, the estimators' default), the one-standard-error rule of
cross-validation keeps it unless the best beats it by more than one standard error of
their paired fold difference (:func:`choose_method`): a lead the folds cannot tell from
noise does not overturn the method that needs no class counts and no search.

Classes with fewer samples than folds are handled explicitly: a class with at least two
samples has each of them held out in one fold (so it is scored in as many folds as it
has samples, and trained on in every fold); a class with one sample is never held out
(it stays in training everywhere and is never scored). Both lists are reported.

The folds train one after another (their training sets differ, so their batches do);
inside a fold the engine trains all the settings side by side as usual.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.features import FeatureSet
from ..errors import LortError
from .context import context
from .engine import train_jobs
from .methods import Method
from .plan import Job, plan_job
from .schedule import Schedule
from .selection import best_index, head_validation_scores

PREFERRED = "lort"  # the method the one-standard-error rule keeps when the folds cannot tell it from the best


@dataclass
class Folds:
    """Which fold holds out each training sample (-1: never held out)."""

    fold: np.ndarray
    k: int
    unscored: list[int] = field(default_factory=list)  # classes with one sample: trained on, never scored
    partial: list[int] = field(default_factory=list)  # classes with 2 to k-1 samples: scored in some folds only

    def describe(self) -> str:
        text = f"{self.k}-fold stratified cross-validation on the training split"
        if self.partial:
            text += f"; classes with fewer samples than folds, scored in some folds only: {self.partial}"
        if self.unscored:
            text += f"; classes with one sample, always trained on and never scored: {self.unscored}"
        return text


def stratified_folds(y: np.ndarray, k: int, seed: int = 0) -> Folds:
    """Each class's samples, in a seeded random order, dealt into ``k`` folds in turn."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 2:
        raise LortError(f"cross-validation needs an integer number of folds >= 2, got {k!r}")
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    fold = np.full(len(y), -1, dtype=np.int64)
    unscored, partial = [], []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        if len(members) < 2:
            unscored.append(int(c))
            continue
        if len(members) < k:
            partial.append(int(c))
        offset = int(rng.integers(k))  # rare classes are not all held out in the first folds
        fold[members] = (np.arange(len(members)) + offset) % k
    if not (fold >= 0).any():
        raise LortError("no class has two samples: cross-validation has nothing to hold out")
    return Folds(fold, int(k), unscored, partial)


@dataclass
class CVResult:
    """One method's cross-validation: every planned setting's fold-mean score rows."""

    method: str
    settings: list[dict[str, Any]]
    fold_scores: np.ndarray  # (G, E, k, 2): balanced accuracy, minus the log-loss; E = 1 without training
    best: int  # the chosen setting
    epoch: int | None  # the chosen epoch (1-based; None for a method that does not train)

    @property
    def mean(self) -> np.ndarray:
        return np.nanmean(self.fold_scores, axis=2)

    @property
    def best_row(self) -> np.ndarray:
        return self.mean[self.best, 0 if self.epoch is None else self.epoch - 1]

    @property
    def fold_accuracies(self) -> np.ndarray:
        """The chosen (setting, epoch)'s balanced accuracy in each fold."""
        return self.fold_scores[self.best, 0 if self.epoch is None else self.epoch - 1, :, 0]


def _subset(fs: FeatureSet, rows: np.ndarray, held: np.ndarray | None) -> FeatureSet:
    x, y = fs.splits["train"]
    splits = {"train": (np.asarray(x)[rows], np.asarray(y)[rows])}
    if held is not None:
        splits["val"] = (np.asarray(x)[held], np.asarray(y)[held])
    return FeatureSet(splits, fs.classes, fs.init_weight, fs.init_bias, dict(fs.meta))


def cross_validate(
    method: Method,
    fs: FeatureSet,
    schedule: Schedule,
    lrs,
    fixed: dict | None,
    folds: Folds,
    fits_per_method: int | None,
) -> CVResult:
    """Score every planned setting of ``method`` in every fold of ``folds`` (the training
    split of ``fs`` only) and choose the setting and epoch on the fold-mean rows."""
    job = plan_job(method, schedule, lrs, fixed, True, fits_per_method)
    k_classes = fs.num_classes
    per_fold = []
    for f in range(folds.k):
        held = np.flatnonzero(folds.fold == f)
        rows = np.flatnonzero(folds.fold != f)
        part = _subset(fs, rows, held)
        ctx = context(part, schedule, schedule.seed)
        xv, yv = (torch.as_tensor(a, device=ctx.device) for a in part.splits["val"])
        if method.trains:
            fold_job = Job(method, job.settings)
            trained = train_jobs(
                [fold_job], ctx, schedule, lambda h, xv=xv, yv=yv: head_validation_scores(h, xv, yv, k_classes)
            )
            per_fold.append(np.stack([c.reshape(len(c), -1)[:, :2] for _, _, c in trained[id(fold_job)]]))
        else:
            with torch.no_grad():
                scores = [
                    head_validation_scores(method.posthoc(method.build_head(ctx, [p]), ctx, p), xv, yv, k_classes)[0]
                    for p in job.settings
                ]
            per_fold.append(torch.stack(scores).cpu().numpy()[:, None, :])
    fold_scores = np.stack(per_fold, axis=2).astype(np.float64)  # (G, E, k, 2)
    mean = np.nanmean(fold_scores, axis=2)
    if method.trains:
        epochs = [best_index(mean[g]) for g in range(len(job.settings))]
        best = best_index(np.stack([mean[g, e] for g, e in enumerate(epochs)]))
        epoch = epochs[best] + 1
    else:
        best, epoch = best_index(mean[:, 0]), None
    return CVResult(method.name, job.settings, fold_scores, best, epoch)


def refit(method: Method, fs: FeatureSet, schedule: Schedule, setting: dict, epoch: int | None):
    """``method`` at ``setting`` trained on all of ``fs``'s training split with the whole
    schedule, keeping the weights of epoch ``epoch`` (the one cross-validation chose);
    returns the single classifier and the fit's context."""
    whole = _subset(fs, np.arange(len(fs.splits["train"][1])), None)
    ctx = context(whole, schedule, schedule.seed)
    if not method.trains:
        return method.posthoc(method.build_head(ctx, [setting]), ctx, setting), ctx
    calls = itertools.count(1)

    def keep_chosen_epoch(head):  # the loop keeps the best-scored epoch: score only the chosen one
        e = next(calls)
        return torch.full((head.groups(), 2), 1.0 if e == epoch else 0.0)

    job = Job(method, [setting])
    trained = train_jobs([job], ctx, schedule, keep_chosen_epoch)
    head, index, _ = trained[id(job)][0]
    return method.posthoc(head.select(index), ctx, setting), ctx


def paired_gap(a: CVResult | np.ndarray, b: CVResult | np.ndarray) -> tuple[float, float]:
    """``a``'s chosen balanced accuracy minus ``b``'s, fold by fold (the same folds; a
    :class:`CVResult` or its fold accuracies): the mean difference and its standard error
    (the folds' spread over sqrt of their number)."""
    fa = a.fold_accuracies if isinstance(a, CVResult) else np.asarray(a, dtype=float)
    fb = b.fold_accuracies if isinstance(b, CVResult) else np.asarray(b, dtype=float)
    d = fa - fb
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return float(d.mean()) if len(d) else 0.0, float("inf")
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def one_standard_error(names: list[str], best: int, fold_accuracies, prefer: str | None) -> tuple[int, str]:
    """The one-standard-error rule of cross-validation (Hastie, Tibshirani and Friedman,
    *Elements of Statistical Learning*, 7.10) among methods: ``prefer`` is kept unless the
    fold-best (index ``best``) beats it by more than one standard error of their paired
    fold difference. ``fold_accuracies[i]``: method ``i``'s balanced accuracy per fold.
    Returns the chosen index and a sentence saying why ('' where the rule had nothing to
    decide: no preference, the preferred method absent or already the best)."""
    if prefer is None or prefer not in names or names[best] == prefer:
        return best, ""
    keep = names.index(prefer)
    gap, se = paired_gap(fold_accuracies[best], fold_accuracies[keep])
    win = best if gap > se else keep
    judged = "more" if win == best else "no more"
    return win, (
        f"{names[best]} leads {prefer} by {100 * gap:.2f} points, {judged} than one standard error "
        f"({100 * se:.2f}) of the paired fold difference: {names[win]} chosen (prefer={prefer!r})"
    )


def choose_method(results: list[CVResult], prefer: str | None = None) -> int:
    """Index of the method whose chosen setting has the best fold-mean row (the earlier on
    ties); with ``prefer``, :func:`one_standard_error` decides between it and that best, so
    a gap the folds cannot tell from noise never overturns the preferred method."""
    best = best_index(np.stack([r.best_row for r in results]))
    names = [r.method for r in results]
    return one_standard_error(names, best, [r.fold_accuracies for r in results], prefer)[0]
