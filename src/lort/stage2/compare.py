"""Fit stage-2 methods on one frozen representation, choose every hyperparameter and the
epoch on the validation split, then evaluate the test split once."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..analysis.metrics import accuracy_report, grouped_balanced_accuracy
from ..data.features import FeatureSet
from ..errors import LortError
from .heads import Head, LinearHead
from .losses import grouped_cross_entropy
from .methods import FitContext, Method
from .schedule import DEFAULT_LRS, Schedule
from .trainer import fit_head


def head_balanced_accuracy(
    head: Head, x: torch.Tensor, labels: torch.Tensor, num_classes: int, budget: int = 1 << 24
) -> torch.Tensor:
    """Balanced accuracy of every classifier of ``head`` on ``x``, computed in row
    chunks so that at most ``budget`` logits (G x rows x K) exist at once: the validation
    split of a large dataset scored by a whole grid never needs G full logit matrices."""
    g = head.groups()
    rows = max(1, budget // max(1, g * num_classes))
    preds = torch.cat([head(x[i : i + rows]).argmax(2) for i in range(0, len(x), rows)], dim=1)  # (G, N)
    return grouped_balanced_accuracy(preds, labels, num_classes)


@dataclass
class MethodResult:
    method: str
    title: str
    hyperparameters: dict[str, Any]
    epoch: int | None
    val: dict | None
    time_s: float
    head: Head = field(repr=False)
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


CE_INIT_LRS = (5e-3, 5e-2, 0.5)


def ce_classifier(fs: FeatureSet, schedule: Schedule, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A plain cross-entropy classifier fitted from zero on the training features, for
    methods that warm-start when the features carry no classifier (``init_weight``).
    Its learning rate (of ``CE_INIT_LRS``) and epoch are chosen on validation when there
    is a validation split, else the middle rate and the last epoch are used."""
    x, y = (torch.as_tensor(a, device=device) for a in fs.splits["train"])
    k = fs.num_classes
    val = fs.splits.get("val")
    has_val = val is not None and len(val[1]) > 0
    lrs = CE_INIT_LRS if has_val else CE_INIT_LRS[1:2]
    xv, yv = (torch.as_tensor(a, device=device) for a in val) if has_val else (None, None)
    head, curves = fit_head(
        LinearHead(x.new_zeros(k, x.shape[1]), x.new_zeros(k), len(lrs)),
        x,
        y,
        lambda logits, labels, epoch: grouped_cross_entropy(logits, labels),
        dataclasses.replace(schedule, epochs=max(schedule.epochs, 1)),
        score_fn=(lambda h: head_balanced_accuracy(h, xv, yv, k)) if has_val else None,
        lr=list(lrs),
        num_classes=k,
    )
    g = int(np.argmax(curves.max(axis=0))) if len(curves) else 0
    w, b = head.linear_params()
    fs.meta["init_classifier"] = f"cross-entropy fit from zero (lr {lrs[g]:g}), no classifier was given"
    return w[g].clone(), b[g].clone()


def stage2_device(device=None) -> torch.device:
    """The device stage 2 runs on: ``device`` if given, else the CPU."""
    return torch.device(device if device is not None else "cpu")


def context(fs: FeatureSet, schedule: Schedule, seed: int = 0, device=None) -> FitContext:
    """What the methods see, with the training features moved once to ``device``."""
    device = stage2_device(device)
    x, y = fs.splits["train"]
    k = fs.num_classes
    if fs.init_weight is not None:
        w = torch.as_tensor(fs.init_weight, dtype=torch.float32, device=device)
        b = torch.as_tensor(
            fs.init_bias if fs.init_bias is not None else np.zeros(k), dtype=torch.float32, device=device
        )
    else:
        w, b = ce_classifier(fs, schedule, device)
    return FitContext(
        x=torch.as_tensor(x, device=device),
        y=torch.as_tensor(y, device=device),
        counts=fs.train_counts,
        init_weight=w,
        init_bias=b,
        epochs=schedule.epochs,
        seed=seed,
    )


def head_device(head: Head) -> torch.device:
    return next(iter(head.state_dict().values())).device


def logits_of(head: Head, x) -> np.ndarray:
    with torch.no_grad():
        return head.predict_logits(torch.as_tensor(x, dtype=torch.float32, device=head_device(head))).cpu().numpy()


def fit_method(
    method: Method,
    fs: FeatureSet,
    schedule: Schedule | None = None,
    lrs: tuple[float, ...] | None = DEFAULT_LRS,
    fixed: dict[str, Any] | None = None,
    ctx: FitContext | None = None,
    train_source=None,
    device=None,
) -> MethodResult:
    """Search ``method``'s grid (and ``lrs``, for methods that train) on validation.

    ``fixed`` sets hyperparameters of the method (a value, or a list to search), checked
    against its declarations. All settings of a trained method are fitted side by side in
    one pass of the loop. Returns the classifier of the best (hyperparameters, epoch) by
    validation balanced accuracy (the first on ties). Without a validation split every
    hyperparameter not fixed takes its default (the source's, where it publishes one), the
    schedule's lr and the last epoch are used, and the result says so. Test data is
    never touched here. ``train_source`` replaces the cached training features (full
    mode: :class:`lort.stage2.full.BackboneFeatures`). ``device`` (default CPU) is where
    the features are moved once and every classifier trains, unless ``ctx`` gives it."""
    schedule = schedule or Schedule()
    ctx = ctx or context(fs, schedule, schedule.seed, device)
    val = fs.splits.get("val")
    has_val = val is not None and len(val[1]) > 0
    k = fs.num_classes
    t0 = time.perf_counter()
    points = method.settings(fixed, search=has_val)
    if not has_val:
        points = points[:1]
    if method.trains:
        lr_values = list(lrs) if (lrs and has_val) else [schedule.lr]
        settings = [hp | {"lr": lr} for hp in points for lr in lr_values]
    else:
        settings = points
    xv = torch.as_tensor(val[0], device=ctx.device) if has_val else None
    yv = torch.as_tensor(val[1], device=ctx.device) if has_val else None
    search = []
    if method.trains:
        head, curves = fit_head(
            method.build_head(ctx, settings),
            ctx.x if train_source is None else train_source,
            ctx.y,
            method.loss(ctx, settings),
            schedule,
            method.sampler,
            score_fn=(lambda h: head_balanced_accuracy(h, xv, yv, k)) if has_val else None,
            max_norm=method.max_norm(ctx, settings),
            lr=[p["lr"] for p in settings],
            weight_decay=method.weight_decay(settings),
            num_classes=k,
        )
        for g, point in enumerate(settings):
            curve = curves[:, g] if len(curves) else np.zeros(0)
            epoch = int(np.argmax(curve)) + 1 if len(curve) else schedule.epochs
            value = float(curve.max()) if len(curve) else None
            search.append(
                {
                    "hyperparameters": point,
                    "epoch": epoch,
                    "val_balanced_acc": value,
                    "curve": [round(float(c), 5) for c in curve],
                }
            )
        best = max(range(len(settings)), key=lambda g: (search[g]["val_balanced_acc"] or 0.0, -g))
        chosen = method.posthoc(head.select(best), ctx, settings[best])
    else:
        heads = []
        for point in settings:
            h = method.posthoc(method.build_head(ctx, [point]), ctx, point)
            value = float(head_balanced_accuracy(h, xv, yv, k)[0]) if has_val else None
            heads.append(h)
            search.append({"hyperparameters": point, "epoch": None, "val_balanced_acc": value, "curve": []})
        best = max(range(len(settings)), key=lambda g: (search[g]["val_balanced_acc"] or 0.0, -g))
        chosen = heads[best]
    point, epoch = search[best]["hyperparameters"], search[best]["epoch"]
    val_report = accuracy_report(logits_of(chosen, val[0]), val[1], fs.train_counts) if has_val else None
    if not has_val:
        point = point | {"note": "no validation split: defaults, nothing searched"}
    return MethodResult(
        method=method.name,
        title=method.title,
        hyperparameters=point,
        epoch=epoch,
        val=val_report,
        time_s=time.perf_counter() - t0,
        head=chosen,
        search=search,
    )


def check_fixed(fixed: dict[str, dict[str, Any]] | None, methods: list[Method]) -> dict[str, dict[str, Any]]:
    """``{method: {hyperparameter: value}}`` checked against the methods compared: an
    unknown method, or a hyperparameter the method does not declare, is refused."""
    fixed = dict(fixed or {})
    names = [m.name for m in methods]
    for name, values in fixed.items():
        if name not in names:
            raise LortError(
                f"hyperparameters given for {name!r}, which is not among the methods compared ({', '.join(names)})"
            )
        next(m for m in methods if m.name == name).fixed_values(values)
    return fixed


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
    fixed: dict[str, dict[str, Any]] | None = None,
    progress=None,
    train_source=None,
    device=None,
) -> list[MethodResult]:
    """Fit every method (selection on validation), then evaluate each on test once.
    ``fixed`` maps a method name to hyperparameters it fixes (see :func:`fit_method`);
    ``device``: where the features go (once) and the classifiers train; default CPU."""
    schedule = schedule or Schedule()
    fixed = check_fixed(fixed, methods)
    ctx = context(fs, schedule, schedule.seed, device)
    results = []
    for method in methods:
        if progress:
            progress(method.name)
        results.append(fit_method(method, fs, schedule, lrs, fixed.get(method.name), ctx, train_source))
    for r in results:
        evaluate_test(r, fs)
    return results
