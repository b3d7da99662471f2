"""VIDLoss against its formula computed independently; its variance stays positive and trains."""
import math

import pytest
import torch

from fxcompress.core.errors import PassError
from fxcompress.distill import VIDLoss


def test_vid_matches_the_gaussian_negative_log_likelihood():
    vid = VIDLoss(4, 6, init_variance=3.0)
    s, t = torch.randn(2, 4, 3, 3), torch.randn(2, 6, 3, 3)
    with torch.no_grad():
        mean = vid.regressor(s)
    var = torch.log1p(torch.exp(vid.alpha.detach())) + 1e-5
    expected = 0.0
    for n in range(2):
        for c in range(6):
            for i in range(3):
                for j in range(3):
                    d = float(t[n, c, i, j] - mean[n, c, i, j])
                    expected += 0.5 * (d * d / float(var[c]) + math.log(float(var[c])))
    assert vid(s, t).item() == pytest.approx(expected / (2 * 6 * 9), rel=1e-5)
    assert torch.allclose(vid.variance(), torch.full((6,), 3.0), atol=1e-5)


def test_vid_trains_regressor_and_variance_never_the_teacher():
    vid = VIDLoss(4, 6)
    s = torch.randn(2, 4, 4, 4, requires_grad=True)
    t = torch.randn(2, 6, 2, 2, requires_grad=True)   # smaller map: both pooled to 2x2
    vid(s, t).backward()
    assert s.grad is not None and t.grad is None
    assert vid.alpha.grad is not None and all(p.grad is not None for p in vid.regressor.parameters())
    with torch.no_grad():
        vid.alpha.fill_(-50.0)
    assert (vid.variance() > 0).all()


def test_vid_names_wrong_widths():
    with pytest.raises(PassError, match="built for 4 -> 6"):
        VIDLoss(4, 6)(torch.randn(2, 5, 3, 3), torch.randn(2, 6, 3, 3))
