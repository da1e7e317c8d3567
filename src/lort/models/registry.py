"""A registry of backbones: ``create_model(name, num_classes)``."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import LortError

_MODELS: dict[str, Callable] = {}
_INPUT_SIZE: dict[str, int] = {}


def register_model(name: str, input_size: int) -> Callable:
    def wrap(fn: Callable) -> Callable:
        _MODELS[name] = fn
        _INPUT_SIZE[name] = input_size
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_MODELS)


def model_input_size(name: str) -> int:
    _check(name)
    return _INPUT_SIZE[name]


def _check(name: str) -> None:
    if name not in _MODELS:
        raise LortError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")


def create_model(name: str, num_classes: int, **kwargs):
    """Build a registered backbone with a ``num_classes``-way linear classifier."""
    _check(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise LortError(f"num_classes must be a positive integer, got {num_classes!r}")
    return _MODELS[name](num_classes=num_classes, **kwargs)
