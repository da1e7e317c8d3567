"""LORT on a user's own network: find its last linear layer, cache the features that enter
it, re-train that layer with a stage-2 method, and put the result back in place."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from .errors import LortError
from .estimator import LogitsRetargetingClassifier, RetrainingClassifier
from .model_files import LayerInputs, find_linear, loader_features


def retrain_classifier(
    model: nn.Module,
    train_loader: Iterable,
    *,
    method: str = "lort",
    layer: str | None = None,
    val_loader: Iterable | None = None,
    device: str | torch.device | None = None,
    return_estimator: bool = False,
    progress: bool = False,
    **params,
):
    """Re-train ``model``'s classifier layer on frozen features with ``method``.

    The layer (``layer`` by name, else the last ``nn.Linear``) must map features to the
    class logits; the loaders yield ``(inputs, labels, ...)`` with labels the class indices
    ``0 .. out_features - 1``. The rest of the model is frozen (``requires_grad=False``),
    run once in eval mode over the loaders to cache the layer's inputs, and the layer is
    re-trained from its current weights (LORT's warm start). ``params`` go to
    :class:`lort.LogitsRetargetingClassifier` (``method="lort"``) or
    :class:`lort.RetrainingClassifier`; a ``val_loader`` chooses the epoch and any listed
    hyperparameters. Returns the model (changed in place), and the fitted estimator with
    ``return_estimator=True``."""
    name, fc = find_linear(model, layer)
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    fn = LayerInputs(model, name)
    try:
        x, y = loader_features(fn, train_loader, device, "train_loader", progress)
        val = loader_features(fn, val_loader, device, "val_loader", progress) if val_loader is not None else None
    finally:
        model.train(was_training)
    k = fc.out_features
    for labels, where in [(y, "train_loader")] + ([(val[1], "val_loader")] if val else []):
        bad = labels[(labels < 0) | (labels >= k)]
        if len(bad):
            raise LortError(f"{where}: label {bad[0]} outside the {k} outputs of layer {name!r}")
    missing = np.setdiff1d(np.arange(k), y)
    if len(missing):
        raise LortError(
            f"train_loader has no samples of class {missing[0]} ({len(missing)} of the {k} classes of "
            f"layer {name!r} are missing); every class needs training samples"
        )
    init = {"init_coef": fc.weight.detach().cpu().numpy()}
    if fc.bias is not None:
        init["init_intercept"] = fc.bias.detach().cpu().numpy()
    if method == "lort":
        est = LogitsRetargetingClassifier(**init, **params)
    else:
        est = RetrainingClassifier(method, **init, **params)
    est.fit(x, y, *(val if val else ()))
    new = est.to_linear().to(device=fc.weight.device, dtype=fc.weight.dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    if fc.bias is None:  # the re-trained classifier has a bias: the layer is replaced
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    else:
        with torch.no_grad():
            fc.weight.copy_(new.weight)
            fc.bias.copy_(new.bias)
        fc.weight.requires_grad_(True)
        fc.bias.requires_grad_(True)
    return (model, est) if return_estimator else model
