"""IRGLoss against an independent numpy computation; zero for equal lists; 1..N tapped layers."""
import numpy as np
import pytest
import torch

from fxcompress.core.errors import PassError
from fxcompress.distill import IRGLoss


def reference_irg(s_feats, t_feats, w):
    s = [f.detach().double().numpy() for f in s_feats]
    t = [f.detach().double().numpy() for f in t_feats]

    def edges(x):
        x = x.reshape(len(x), -1)
        d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
        return d / d.max()

    def common(a, b):   # as documented: maps pooled to the smaller, map vs vector by channel means
        if a.ndim == 4 and b.ndim == 4:
            h, w_ = min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3])
            a = a.reshape(a.shape[0], a.shape[1], h, a.shape[2] // h, w_, a.shape[3] // w_).mean((3, 5))
            b = b.reshape(b.shape[0], b.shape[1], h, b.shape[2] // h, w_, b.shape[3] // w_).mean((3, 5))
        else:
            a = a.mean((2, 3)) if a.ndim == 4 else a.reshape(len(a), -1)
            b = b.mean((2, 3)) if b.ndim == 4 else b.reshape(len(b), -1)
        c = min(a.shape[1], b.shape[1])

        def pool(x):   # channel groups of equal size (the test uses divisible counts)
            k = x.shape[1] // c
            return x.reshape(x.shape[0], c, k, *x.shape[2:]).mean(2)
        return pool(a), pool(b)

    def trans(feats):
        out = []
        for a, b in zip(feats, feats[1:]):
            a, b = common(a, b)
            d = np.sqrt(((a - b).reshape(len(a), -1) ** 2).sum(1))
            out.append(d / d.max())
        return out
    loss = w[0] * ((s[-1] - t[-1]) ** 2).mean()
    loss += w[1] * sum(((edges(a) - edges(b)) ** 2).mean() for a, b in zip(s, t)) / len(s)
    if len(s) > 1:
        loss += w[2] * sum(((a - b) ** 2).mean() for a, b in zip(trans(s), trans(t))) / (len(s) - 1)
    return loss


def feats(seed, shapes):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g) for s in shapes]


@pytest.mark.parametrize("shapes", [[(6, 10)], [(6, 8, 4, 4), (6, 16)],
                                    [(6, 8, 8, 8), (6, 16, 4, 4), (6, 4, 2, 2), (6, 12)]])
def test_irg_matches_an_independent_computation(shapes):
    s, t = feats(0, shapes), feats(1, shapes)
    w = (0.3, 2.0, 1.5)
    assert IRGLoss(w)(s, t).item() == pytest.approx(reference_irg(s, t, w), rel=1e-5)


def test_irg_is_zero_for_equal_lists_and_gradients_reach_only_the_student():
    shapes = [(5, 8, 4, 4), (5, 16, 2, 2), (5, 10)]
    s = [f.requires_grad_() for f in feats(0, shapes)]
    assert IRGLoss()(s, [f.detach().clone() for f in s]).item() == pytest.approx(0, abs=1e-10)
    t = [f.requires_grad_() for f in feats(1, shapes)]
    IRGLoss()(s, t).backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in s)
    assert all(f.grad is None for f in t)


def test_irg_names_mismatched_lists_and_bad_weights():
    with pytest.raises(PassError, match="equal-length"):
        IRGLoss()(feats(0, [(4, 10)]), feats(0, [(4, 3, 2, 2), (4, 10)]))
    with pytest.raises(PassError, match="weights"):
        IRGLoss((1.0, -1.0, 1.0))
