"""Giving randomly initialised models realistic activations, for tests and benchmarks without weights.

torchvision initialises some heads to zero (ViT) or tiny values, and with BatchNorm statistics at their
defaults activations can vanish through depth (EfficientNet's outputs are ~1e-20): a parity check on
such outputs proves nothing. Re-initialising the linear layers and re-estimating BatchNorm statistics on
random data gives activations of order one everywhere.
"""
from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, input_shape, batches: int = 4, batch_size: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.reset_parameters()
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    was_training = model.training
    model.train()
    for _ in range(batches):
        model(torch.randn(batch_size, *input_shape[1:], generator=gen))
    model.train(was_training)
    return model
