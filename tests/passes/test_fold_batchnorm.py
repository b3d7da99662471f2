import pytest
import torch
import torch.nn as nn
import torchvision

import fxcompress
from fxcompress.core.errors import VerificationError
from fxcompress.passes import FoldBatchNorm


def _recalibrate_bn(model, shape, batches=3):
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None   # cumulative average
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(*shape))
    return model.eval()


def test_fold_batchnorm_resnet18_exact_and_bn_free():
    torch.manual_seed(0)
    model = _recalibrate_bn(torchvision.models.resnet18(weights=None, num_classes=10), (4, 3, 64, 64))
    x = torch.randn(2, 3, 64, 64)
    result = fxcompress.compile(model, [FoldBatchNorm()], x, progress=False)
    record = result.report.records[0]
    assert record.metrics["folded"] == 20 and record.metrics["skipped"] == 0
    assert record.metrics["max_rel_error"] <= 1e-5      # the manager compared against the unfolded graph
    assert not any(isinstance(m, nn.BatchNorm2d) for m in result.model.modules())
    with torch.no_grad():
        assert torch.allclose(result.model(x), model(x), atol=1e-4, rtol=1e-4)


def test_fold_batchnorm_leaves_unfoldable_bn():
    class PreActivation(nn.Module):     # BN on the input: there is no producer to fold into
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(3)
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(self.bn(x))

    result = fxcompress.compile(PreActivation().eval(), [FoldBatchNorm()], torch.randn(1, 3, 8, 8), progress=False)
    metrics = result.report.records[0].metrics
    assert metrics["folded"] == 0 and metrics["skipped"] == 1
    assert isinstance(result.model.bn, nn.BatchNorm2d)


class Cancelling(nn.Module):
    """Two nearly equal channels subtracted: the float32 rounding of the folded weights (what storing a fold
    costs) is amplified 1000x relative to the output, as deep random-weight networks amplify it (resnet152:
    1e-4 relative), past the exactness tolerance even in float64 unless the check uses the exact fold."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 2)
        self.bn = nn.BatchNorm1d(2)
        with torch.no_grad():
            w = torch.randn(16)
            self.fc.weight.copy_(torch.stack([w, w * 1.001]))
            self.fc.bias.zero_()
            self.bn.running_mean.zero_()
            self.bn.running_var.fill_(0.7)
            self.bn.weight.fill_(3.3)

    def forward(self, x):
        y = self.bn(self.fc(x))
        return y[:, :1] - y[:, 1:]


def test_fold_batchnorm_check_uses_the_exact_fold_not_its_float32_rounding():
    torch.manual_seed(0)
    model = Cancelling().eval()
    x = torch.randn(64, 16)
    result = fxcompress.compile(model, [FoldBatchNorm()], x, progress=False)
    metrics = result.report.records[0].metrics
    assert metrics["folded"] == 1 and metrics["exact_check"] == "float64"
    assert metrics["max_rel_error"] < 1e-9


def test_fold_batchnorm_check_fails_on_a_wrong_fold_formula(monkeypatch):
    """The check recomputes the exact fold with the same function: a formula 1e-6 off still fails, as the
    float64 run compares it with the BatchNorm it replaces."""
    import fxcompress.fold.batchnorm as batchnorm
    folded_parameters = batchnorm.folded_parameters

    def off_by_a_little(module, bn):
        w, b = folded_parameters(module, bn)
        w = w.clone()
        w[0] *= 1 + 1e-6   # one output channel off
        return w, b
    monkeypatch.setattr(batchnorm, "folded_parameters", off_by_a_little)
    torch.manual_seed(0)
    with pytest.raises(VerificationError, match=r"FoldBatchNorm exactness \(float64\)"):
        fxcompress.compile(Cancelling().eval(), [FoldBatchNorm()], torch.randn(64, 16), progress=False)


def test_fold_batchnorm_check_fails_on_a_wrongly_stored_fold(monkeypatch):
    """A stored weight that is not the float32 rounding of the exact fold is checked as stored."""
    import fxcompress.fold.batchnorm as batchnorm
    fold_bn_into = batchnorm.fold_bn_into

    def stored_a_little_off(module, bn):
        fold_bn_into(module, bn)
        with torch.no_grad():
            module.weight[0].mul_(1 + 1e-6)
    monkeypatch.setattr(batchnorm, "fold_bn_into", stored_a_little_off)
    torch.manual_seed(0)
    with pytest.raises(VerificationError, match=r"FoldBatchNorm exactness \(float64\)"):
        fxcompress.compile(Cancelling().eval(), [FoldBatchNorm()], torch.randn(64, 16), progress=False)
