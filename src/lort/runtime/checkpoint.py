"""Checkpoints: one file with model, optimizer, scheduler, epoch, RNG states and config,
written atomically; loading checks architecture and class count."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import LortError
from ..io import save_torch
from ..models import create_model


def save_checkpoint(path: str | Path, **state: Any) -> None:
    save_torch(path, {"lort_version": __version__, **state})


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise LortError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (
        RuntimeError,
        EOFError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        OSError,
        ValueError,
    ) as exc:
        raise LortError(f"{path}: corrupt or truncated checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "arch" not in ckpt:
        raise LortError(f"{path}: not a lort checkpoint (no model/arch entries)")
    return ckpt


def load_model_state(model: torch.nn.Module, state: dict, where: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln.strip() for ln in first[1:] if ln.strip()), first[0] if first else "")
        raise LortError(f"{where}: checkpoint does not fit the model ({detail[:200]})") from None


def load_model(path: str | Path, arch: str | None = None, num_classes: int | None = None):
    """The model stored in a lort checkpoint, checked against the expected arch / classes."""
    ckpt = read_checkpoint(path)
    if arch is not None and ckpt["arch"] != arch:
        raise LortError(f"{path}: checkpoint is a {ckpt['arch']}, expected {arch}")
    if num_classes is not None and ckpt["num_classes"] != num_classes:
        raise LortError(f"{path}: checkpoint has {ckpt['num_classes']} classes, the dataset {num_classes}")
    model = create_model(ckpt["arch"], ckpt["num_classes"])
    load_model_state(model, ckpt["model"], str(path))
    return model, ckpt
