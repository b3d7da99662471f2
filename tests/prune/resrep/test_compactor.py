import torch
import torch.nn as nn

from fxcompress.prune.resrep.compactor import ChannelScale, ConvCompactor, LinearCompactor, is_compactor


def test_compactors_start_as_identity_and_expose_rows():
    x4, x2 = torch.randn(2, 6, 5, 5), torch.randn(3, 6)
    for q, x in ((ConvCompactor(6), x4), (ChannelScale(6), x4), (LinearCompactor(6), x2), (ChannelScale(6, -1, 2), x2)):
        assert torch.equal(q(x), x)
        assert q.rows().shape[0] == 6 and torch.allclose(q.row_norms(), torch.ones(6))
        assert is_compactor(q)
    assert not is_compactor(nn.Conv2d(6, 6, 1))


def test_rows_are_a_view_of_the_weight():
    q = ConvCompactor(4)
    with torch.no_grad():
        q.rows()[2] = 0
    assert q.weight[2].abs().sum() == 0 and q.row_norms()[2] == 0
