import torch
import torch.nn as nn
import torchvision

import fxcompress
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
