"""What the stage-2 methods see (:class:`lort.stage2.methods.FitContext`): the training
features moved once to the device, and the classifier to start from — the stage-1
classifier where the features carry one, else a cross-entropy warm start fitted here."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..data.features import FeatureSet
from ..runtime.heap import return_large_blocks
from .heads import LinearHead, Standardised, centre_and_spread
from .losses import SoftCrossEntropy
from .methods import FitContext
from .schedule import Schedule
from .selection import best_index, head_validation_scores
from .trainer import fit_head

CE_INIT_LRS = (5e-3, 5e-2, 0.5)


def ce_classifier(fs: FeatureSet, schedule: Schedule, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A plain cross-entropy classifier fitted from zero on the training features, for
    methods that warm-start when the features carry no classifier (``init_weight``).
    It is fitted on the features centred on their training mean and divided by their
    root-mean-square norm about it, then written back as the equivalent classifier of the
    raw features, so that its learning rates mean the same on features of any scale. Its
    learning rate (of ``CE_INIT_LRS``) and epoch are chosen on validation by the selection
    rule (:mod:`lort.stage2.selection`) when there is a validation split, else the middle rate and the last epoch are used."""
    x, y = (torch.as_tensor(a, device=device) for a in fs.splits["train"])
    center, spread = centre_and_spread(x)
    k = fs.num_classes
    has_val = fs.has_split("val")
    lrs = CE_INIT_LRS if has_val else CE_INIT_LRS[1:2]
    xv, yv = (torch.as_tensor(a, device=device) for a in fs.splits["val"]) if has_val else (None, None)
    xv = None if xv is None else Standardised(xv, center, spread)
    head, curves = fit_head(
        LinearHead(x.new_zeros(k, x.shape[1]), x.new_zeros(k), len(lrs)),
        Standardised(x, center, spread),
        y,
        SoftCrossEntropy(len(lrs), k, device=device),
        dataclasses.replace(schedule, epochs=max(schedule.epochs, 1)),
        score_fn=(lambda h: head_validation_scores(h, xv, yv, k)) if has_val else None,
        lr=list(lrs),
        num_classes=k,
    )
    # each rate's best epoch is the weights kept; the rates compared by the same rule
    g = best_index([curves[best_index(curves[:, i]), i] for i in range(len(lrs))]) if len(curves) else 0
    w, b = head.linear_params()
    fs.meta["init_classifier"] = (
        f"cross-entropy fit from zero on standardised features (lr {lrs[g]:g}), no classifier was given"
    )
    weight = w[g] / spread
    return weight.clone(), (b[g] - weight @ center).clone()


def stage2_device(device=None) -> torch.device:
    """The device stage 2 runs on: ``device`` if given, else the CPU."""
    return torch.device(device if device is not None else "cpu")


def context(fs: FeatureSet, schedule: Schedule, seed: int = 0, device=None) -> FitContext:
    """What the methods see, with the training features moved once to ``device``."""
    return_large_blocks()  # short-lived blocks of a large stage 2 go back to the OS when freed
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
        given_classifier=fs.init_weight is not None,
    )
