"""Bias correction: the quantized layer's mean output shift on the calibration data goes to zero."""
import copy

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from fxcompress.quant.bias_correction import correct_biases
from fxcompress.quant.fake_quant import WeightQuantizer


def _mean_error(layer, reference, data, dims):
    """Mean over the data of (quantized layer with its current bias) - (float reference layer), per channel."""
    with torch.no_grad():
        return torch.stack([(layer(x) - reference(x)).mean(dims) for x in data]).mean(0)


def _check(layer, data, dims):
    reference = copy.deepcopy(layer)
    parametrize.register_parametrization(layer, "weight", WeightQuantizer(layer.weight, 0, True))
    before = _mean_error(layer, reference, data, dims)
    info = correct_biases(nn.Sequential(layer), {"0": layer}, [(x, None) for x in data])
    after = _mean_error(layer, reference, data, dims)
    assert info["bias_corrected_layers"] == 1 and layer.bias is not None
    assert before.abs().max() > 1e-4
    assert after.abs().max() < 1e-3 * before.abs().max() + 1e-7


def test_conv_mean_shift_is_removed_and_a_missing_bias_added():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1, groups=2, bias=False)
    _check(conv, [torch.rand(4, 8, 6, 6) + 2.0 for _ in range(3)], (0, 2, 3))   # positive inputs: rounding shows


def test_linear_mean_shift_is_removed():
    torch.manual_seed(0)
    _check(nn.Linear(32, 5), [torch.rand(4, 32) + 2.0 for _ in range(3)], 0)
