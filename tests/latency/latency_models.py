"""The tiny residual CNN the latency tests time (shared by the test files of this folder)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

X = torch.randn(1, 3, 32, 32)
BATCH = 32


class TinyResidual(nn.Module):
    """stem (3 -> 32), a strided conv (32 -> 64), a residual conv (64 -> 64), a classifier: two prunable
    groups, the stem's outputs and the residual stream."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.down(self.stem(x))
        x = F.relu(x + self.body(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    model = TinyResidual()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):   # distinct channel norms: magnitude ranking is not a tie
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()
