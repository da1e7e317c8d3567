"""A user's model as a feature extractor: load a model file (``torch.export`` program,
TorchScript or a pickled ``nn.Module``), find its classifier layer, and turn any module
into a feature function (the input of that layer) for ``lort extract`` and
:func:`lort.retrain_classifier`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .errors import LortError

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def find_linear(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Linear]:
    """The classifier layer: ``layer`` by its dotted name (as in ``model.named_modules()``),
    or else the last ``nn.Linear`` registered in ``model``."""
    if layer is not None:
        try:
            module = model.get_submodule(layer)
        except AttributeError:
            names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            raise LortError(
                f"the model has no submodule {layer!r}; its linear layers: {', '.join(names) or 'none'}"
            ) from None
        if not isinstance(module, nn.Linear):
            raise LortError(f"{layer!r} is a {type(module).__name__}, not an nn.Linear classifier layer")
        return layer, module
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise LortError(
            f"{type(model).__name__} has no nn.Linear layer to re-train; name the classifier with layer=... "
            "or give the features directly to lort.LogitsRetargetingClassifier"
        )
    return found[-1]


class _Captured(Exception):
    """Raised by the hook to stop the forward pass once the layer's input is caught."""


class LayerInputs:
    """A feature function: runs ``model`` until ``layer`` is called and returns that call's
    input (the features the classifier sees), flattened to ``(batch, in_features)``."""

    def __init__(self, model: nn.Module, layer: str | None = None) -> None:
        self.model = model
        self.name, self.layer = find_linear(model, layer)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        caught: list[torch.Tensor] = []

        def hook(module, inputs):
            caught.append(inputs[0])
            raise _Captured

        handle = self.layer.register_forward_pre_hook(hook)
        try:
            self.model(x)
        except _Captured:
            pass
        finally:
            handle.remove()
        if not caught:
            raise LortError(f"layer {self.name!r} was not called by {type(self.model).__name__}.forward")
        feats = caught[0]
        if feats.dim() != 2:
            raise LortError(
                f"layer {self.name!r} receives input of shape {tuple(feats.shape)}; lort re-trains a classifier "
                "on one feature vector per sample (batch, features)"
            )
        return feats


def feature_fn(model: nn.Module, layer: str | None = None) -> FeatureFn:
    """How to get features from ``model``: a TorchScript or exported program's output; else the input
    of ``layer`` (or of the last linear layer) unless the model has ``forward_features``
    (lort's own backbones) and no layer is named."""
    if isinstance(model, torch.jit.ScriptModule | ExportedFeatures):
        if layer is not None:
            raise LortError("a TorchScript or exported model cannot be cut at a layer: export the feature extractor")
        return model
    if layer is None and hasattr(model, "forward_features"):
        return model.forward_features
    return LayerInputs(model, layer)


class ExportedFeatures(nn.Module):
    """A ``torch.export`` program as a module whose output is the features."""

    def __init__(self, program) -> None:
        super().__init__()
        self.program = program.module()

    def train(self, mode: bool = True):  # an exported program has a fixed mode
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)


def load_module_file(path: str | Path) -> nn.Module:
    """A model file: ``torch.export.save`` (``.pt2``; its output is the features),
    TorchScript (``torch.jit.save``; likewise) or a whole pickled ``nn.Module``
    (``torch.save(model)``; unpickling runs code from the file, so load only files you trust)."""
    path = Path(path)
    if not path.is_file():
        raise LortError(f"{path}: no such model file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated but still loads
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception:  # not TorchScript
            pass
    try:
        return ExportedFeatures(torch.export.load(str(path)))
    except Exception:  # not an exported program
        pass
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise LortError(
            f"{path}: not a torch.export, TorchScript or saved nn.Module file ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(obj, nn.Module):
        hint = (
            " (a state dict: save the module itself with torch.save(model), or export it)"
            if isinstance(obj, dict)
            else ""
        )
        raise LortError(f"{path}: holds a {type(obj).__name__}, not an nn.Module{hint}")
    return obj


def _batch_xy(batch, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, list | tuple) and len(batch) >= 2:
        return batch[0], torch.as_tensor(batch[1])
    raise LortError(f"{where}: each batch must be (inputs, labels, ...), got {type(batch).__name__}")


@torch.no_grad()
def loader_features(
    fn: FeatureFn, loader: Iterable, device: torch.device, where: str = "train_loader", progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Features (float32, on the CPU) and labels of every batch of ``loader``."""
    xs, ys = [], []
    for batch in tqdm(loader, desc=f"features ({where})", disable=not progress, leave=False, unit="batch"):
        x, y = _batch_xy(batch, where)
        xs.append(fn(x.to(device)).float().cpu())
        ys.append(y.reshape(-1).cpu())
    if not xs:
        raise LortError(f"{where} yielded no batches")
    x, y = torch.cat(xs).numpy(), torch.cat(ys).numpy()
    if len(x) != len(y):
        raise LortError(f"{where}: {len(x)} feature rows but {len(y)} labels")
    if not np.issubdtype(y.dtype, np.integer):
        raise LortError(f"{where}: labels must be integer class indices, got {y.dtype}")
    return x, y
