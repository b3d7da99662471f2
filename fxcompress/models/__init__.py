"""The model registry: the project's own models by name, torchvision's zoo, or `file.py:factory`."""
from __future__ import annotations

import importlib.util
import os
from typing import Callable, Dict, List, Optional

import torch.nn as nn

from ..train.checkpoint import load_checkpoint
from ..core.errors import ModelNotFoundError
from .cifar_resnet import CifarResNet
from .small_cnn import SmallCNN

REGISTRY: Dict[str, Callable[..., nn.Module]] = {
    "resnet20": lambda **kw: CifarResNet(20, **kw),
    "resnet32": lambda **kw: CifarResNet(32, **kw),
    "resnet56": lambda **kw: CifarResNet(56, **kw),
    "resnet110": lambda **kw: CifarResNet(110, **kw),
    "resnet20_half": lambda **kw: CifarResNet(20, width=8, **kw),
    "small_cnn": lambda **kw: SmallCNN(**kw),
}
# Input shape each registry model expects, for CLIs that need an example input.
INPUT_SHAPES = {name: (1, 3, 32, 32) for name in REGISTRY} | {"small_cnn": (1, 1, 8, 8)}


def list_models() -> List[str]:
    return sorted(REGISTRY)


def get_model(name: str, **kwargs) -> nn.Module:
    if name not in REGISTRY:
        raise ModelNotFoundError(f"unknown model {name!r}; registry models: {', '.join(list_models())}")
    return REGISTRY[name](**kwargs)


def _from_file(spec: str, **kwargs) -> nn.Module:
    path, _, factory = spec.rpartition(":")
    if not os.path.isfile(path):
        raise ModelNotFoundError(f"model file {path} does not exist (expected path/to/file.py:factory)")
    module_name = f"fxcompress_user_{abs(hash(os.path.abspath(path)))}"
    try:
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
    except Exception as e:
        raise ModelNotFoundError(f"cannot import {path}: {type(e).__name__}: {e}") from e
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise ModelNotFoundError(f"{path} has no callable {factory!r}")
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise ModelNotFoundError(f"{spec} returned {type(model).__name__}, not an nn.Module")
    return model


def _from_torchvision(name: str, **kwargs) -> nn.Module:
    try:
        import torchvision
        return torchvision.models.get_model(name, weights=None, **kwargs)
    except (ImportError, ValueError) as e:
        raise ModelNotFoundError(f"unknown model {name!r}: not a registry model ({', '.join(list_models())}), "
                                 f"not a torchvision model, not a file.py:factory") from e


def load_model(spec: str, checkpoint: Optional[str] = None, **kwargs) -> nn.Module:
    """A model from a registry name, a torchvision model name, or `path/to/file.py:factory`, built with
    `kwargs` (e.g. num_classes=5), with weights from `checkpoint` (loaded with weights_only=True) if given."""
    if spec.endswith(".py") or ".py:" in spec:
        if ":" not in spec.rsplit(".py", 1)[1]:
            raise ModelNotFoundError(f"{spec}: name the factory function too, as path/to/file.py:factory")
        build = _from_file
    else:
        build = get_model if spec in REGISTRY else _from_torchvision
    try:
        model = build(spec, **kwargs)
    except TypeError as e:
        if not kwargs:
            raise
        raise ModelNotFoundError(f"model {spec} does not take {', '.join(kwargs)}: {e}") from e
    if checkpoint:
        load_checkpoint(model, checkpoint)
    return model
