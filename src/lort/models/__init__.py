"""Backbones with ``forward_features`` and a separate linear classifier, over one registry."""

from . import cifar_resnet, imagenet_resnet  # noqa: F401  (register the models)
from .base import LortModel
from .registry import create_model, list_models, model_input_size, register_model

__all__ = ["LortModel", "create_model", "list_models", "model_input_size", "register_model"]
