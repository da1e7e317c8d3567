"""Analysis sweeps (figures 4 and 5 of the report). They show how accuracy *depends* on a
hyperparameter; they choose nothing. Every choice lort makes uses validation only."""

from __future__ import annotations

import numpy as np
import torch

from ..analysis.metrics import accuracy_report
from ..data.features import FeatureSet
from .compare import evaluate_test, fit_method
from .context import context
from .losses import DEFAULT_SMOOTH, ratio_from_smooth, smooth_from_ratio
from .methods import get_method
from .trainer import Schedule, fit_head

SMOOTH_VALUES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
TARGET_RATIOS = (1.5, 2.0, 3.0, 5.0, 10.0)


def smoothing_sweep(
    fs: FeatureSet,
    schedule: Schedule | None = None,
    smooth=SMOOTH_VALUES,
    ratios=TARGET_RATIOS,
    lr: float | None = None,
) -> list[dict]:
    """LORT at each ``s`` and each target ratio ``r`` (converted to ``s`` for this K), the
    epoch chosen on validation, validation and test accuracy of each point."""
    schedule = schedule or Schedule()
    k = fs.num_classes
    points = [{"smooth": float(s), "target_ratio": ratio_from_smooth(s, k), "set_by": "s"} for s in smooth]
    points += [{"smooth": smooth_from_ratio(r, k), "target_ratio": float(r), "set_by": "ratio"} for r in ratios]
    out = []
    for p in points:
        r = fit_method(
            get_method("lort"),
            fs,
            schedule,
            lrs=(lr or schedule.lr,),
            fixed={"smooth": p["smooth"]},
        )
        evaluate_test(r, fs)
        ratio = None if not np.isfinite(p["target_ratio"]) else p["target_ratio"]
        out.append(
            p
            | {
                "target_ratio": ratio,
                "epoch": r.epoch,
                "val": _brief(r.val),
                "test": _brief(r.test),
            }
        )
    return out


def _brief(rep: dict | None) -> dict:
    return {k: rep[k] for k in ("acc", "balanced_acc", "many", "medium", "few")} if rep else {}


def sensitivity_grid(
    fs: FeatureSet,
    methods=("lort", "ce"),
    lrs=(5e-4, 2e-3, 5e-3, 2e-2, 5e-2),
    weight_decays=(0.0, 5e-4, 5e-3, 5e-2),
    epochs: int = 10,
    smooth: float = DEFAULT_SMOOTH,
) -> dict:
    """Test accuracy after a fixed budget of ``epochs`` (no early stopping) for every
    learning rate x weight decay, per method; all cells of a method trained side by side."""
    schedule = Schedule(epochs=epochs)
    ctx = context(fs, schedule)
    xt, yt = fs.splits["test"]
    result = {
        "lrs": list(lrs),
        "weight_decays": list(weight_decays),
        "epochs": epochs,
        "smooth": smooth,
        "methods": {},
    }
    for name in methods:
        method = get_method(name)
        cells = [{"lr": lr, "weight_decay": wd} for lr in lrs for wd in weight_decays]
        hps = [{"smooth": smooth} | c for c in cells] if method.has_param("smooth") else [dict(c) for c in cells]
        head, _ = fit_head(
            method.build_head(ctx, hps),
            ctx.x,
            ctx.y,
            method.loss(ctx, hps),
            schedule,
            method.sampler,
            lr=[c["lr"] for c in cells],
            weight_decay=[c["weight_decay"] for c in cells],
            num_classes=fs.num_classes,
        )
        with torch.no_grad():
            logits = head(torch.as_tensor(xt, device=ctx.device)).cpu().numpy()
        acc = [accuracy_report(logits[g], yt, fs.train_counts)["acc"] for g in range(len(cells))]
        result["methods"][name] = np.asarray(acc).reshape(len(lrs), len(weight_decays)).tolist()
    return result
