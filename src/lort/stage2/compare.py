"""Fit stage-2 methods on one frozen representation, choose every hyperparameter and the
epoch on the validation split, then evaluate the test split once."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..analysis.metrics import accuracy_report
from ..data.features import FeatureSet
from ..errors import LortError
from .methods import FitContext, Method
from .trainer import Schedule, fit_head

DEFAULT_LRS = (5e-4, 5e-3, 5e-2)


def balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean per-class accuracy over the classes present in ``labels``."""
    correct = (logits.argmax(1) == labels).double()
    total = torch.bincount(labels, minlength=num_classes).double()
    hits = torch.bincount(labels, weights=correct, minlength=num_classes)
    present = total > 0
    return float((hits[present] / total[present]).mean())


@dataclass
class MethodResult:
    method: str
    title: str
    hyperparameters: dict[str, Any]
    epoch: int | None
    val: dict | None
    time_s: float
    head: nn.Module = field(repr=False)
    search: list[dict] = field(default_factory=list, repr=False)
    test: dict | None = None

    def row(self) -> dict:
        def pct(rep, key):
            return None if rep is None or rep.get(key) is None else round(100 * rep[key], 2)

        return {
            "method": self.method,
            "val_acc": pct(self.val, "balanced_acc"),
            "val_many": pct(self.val, "many"),
            "val_medium": pct(self.val, "medium"),
            "val_few": pct(self.val, "few"),
            "test_acc": pct(self.test, "acc"),
            "test_many": pct(self.test, "many"),
            "test_medium": pct(self.test, "medium"),
            "test_few": pct(self.test, "few"),
            "hyperparameters": self.hyperparameters,
            "epoch": self.epoch,
            "time_s": round(self.time_s, 2),
        }


def context(fs: FeatureSet, schedule: Schedule, seed: int = 0) -> FitContext:
    x, y = fs.splits["train"]
    k = fs.num_classes
    if fs.init_weight is not None:
        w = torch.as_tensor(fs.init_weight, dtype=torch.float32)
        b = torch.as_tensor(
            fs.init_bias if fs.init_bias is not None else np.zeros(k), dtype=torch.float32
        )
    else:
        w, b = torch.zeros(k, x.shape[1]), torch.zeros(k)
    return FitContext(
        x=torch.as_tensor(x),
        y=torch.as_tensor(y),
        counts=fs.train_counts,
        init_weight=w,
        init_bias=b,
        epochs=schedule.epochs,
        seed=seed,
    )


def logits_of(head: nn.Module, x) -> np.ndarray:
    with torch.no_grad():
        return head(torch.as_tensor(x, dtype=torch.float32)).numpy()


def fit_method(
    method: Method,
    fs: FeatureSet,
    schedule: Schedule | None = None,
    lrs: tuple[float, ...] | None = DEFAULT_LRS,
    grid: dict[str, list] | None = None,
    ctx: FitContext | None = None,
) -> MethodResult:
    """Search ``method``'s grid (and ``lrs``, for methods that train) on validation.

    Returns the head of the best (hyperparameters, epoch) by validation balanced
    accuracy. Without a validation split the first grid point, the schedule's lr and the
    last epoch are used, and the result says so. Test data is never touched here."""
    schedule = schedule or Schedule()
    ctx = ctx or context(fs, schedule, schedule.seed)
    if fs.init_weight is None and method.name not in ("crt", "ncm"):
        raise LortError(
            f"method {method.name} starts from the stage-1 classifier, but the features carry none "
            "(init_weight); use crt or ncm, or give a classifier"
        )
    val = fs.splits.get("val")
    has_val = val is not None and len(val[1]) > 0
    k = fs.num_classes
    if has_val:
        xv, yv = torch.as_tensor(val[0]), torch.as_tensor(val[1])
    t0 = time.perf_counter()
    points = method.grid_points(grid)
    lr_values = list(lrs) if (method.trains and lrs and has_val) else [schedule.lr]
    if not has_val:
        points = points[:1]
    best, search = None, []
    for hp in points:
        for lr in lr_values:
            sched = dataclasses.replace(
                schedule, lr=lr, weight_decay=method.weight_decay(hp, schedule.weight_decay)
            )
            if not method.trains:
                sched = dataclasses.replace(sched, epochs=0)

            def score(h, hp=hp):
                return balanced_accuracy(method.posthoc(h, ctx, hp)(xv), yv, k)

            head, scores = fit_head(
                method.build_head(ctx, hp),
                ctx.x,
                ctx.y,
                method.loss(ctx, hp),
                sched,
                method.sampler,
                score_fn=score if has_val else None,
                max_norm=method.max_norm(ctx, hp),
            )
            epoch = (
                (int(np.argmax(scores)) + 1 if method.trains else None) if scores else sched.epochs
            )
            value = max(scores) if scores else None
            point = dict(hp) | ({"lr": lr} if method.trains else {})
            search.append(
                {
                    "hyperparameters": point,
                    "epoch": epoch,
                    "val_balanced_acc": value,
                    "curve": scores,
                }
            )
            if best is None or (value is not None and value > best[0]):
                best = (value, point, epoch, method.posthoc(head, ctx, hp))
    _, point, epoch, head = best
    val_report = (
        accuracy_report(logits_of(head, val[0]), val[1], fs.train_counts) if has_val else None
    )
    if not has_val:
        point = point | {"note": "no validation split: nothing searched"}
    return MethodResult(
        method=method.name,
        title=method.title,
        hyperparameters=point,
        epoch=epoch,
        val=val_report,
        time_s=time.perf_counter() - t0,
        head=head,
        search=search,
    )


def evaluate_test(result: MethodResult, fs: FeatureSet) -> np.ndarray:
    """Evaluate the chosen head on the test split (once) and store the report."""
    x, y = fs.splits["test"]
    logits = logits_of(result.head, x)
    result.test = accuracy_report(logits, y, fs.train_counts)
    return logits


def compare(
    fs: FeatureSet,
    methods: list[Method],
    schedule: Schedule | None = None,
    lrs: tuple[float, ...] | None = DEFAULT_LRS,
    grid: dict[str, list] | None = None,
    progress=None,
) -> list[MethodResult]:
    """Fit every method (selection on validation), then evaluate each on test once."""
    schedule = schedule or Schedule()
    ctx = context(fs, schedule, schedule.seed)
    results = []
    for method in methods:
        if progress:
            progress(method.name)
        results.append(fit_method(method, fs, schedule, lrs, grid, ctx))
    for r in results:
        evaluate_test(r, fs)
    return results
