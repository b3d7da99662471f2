"""Reading and writing checkpoints. Reading is always `torch.load(weights_only=True)`."""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from ..core.errors import CheckpointError
from ..core.files import atomic_output


def read_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} cannot be read with torch.load(weights_only=True): "
                              f"{type(e).__name__}: {str(e).split('. ')[0][:160]}. "
                              f"Is it a corrupt or non-PyTorch file?") from e


def load_checkpoint(model: nn.Module, path: str) -> nn.Module:
    """Load a state dict (bare, or under 'state_dict'/'model') into `model`, strictly."""
    state = read_checkpoint(path)
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DDP
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong_shape:
        parts = [f"{label} {names[:3]}{' ...' if len(names) > 3 else ''} ({len(names)})"
                 for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
                 if names]
        raise CheckpointError(f"checkpoint {path} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return model


def save_checkpoint(obj, path: str) -> None:
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)
