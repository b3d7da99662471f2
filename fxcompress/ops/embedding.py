"""Embeddings: the embedding dim is prunable like a producer's output channels; the vocabulary is not."""
from __future__ import annotations

import torch.nn as nn

from .registry import COUPLING, RESIZE


@COUPLING.register(nn.Embedding)
def embedding_coupling(r) -> None:
    x, y, w = r.arg(0, "input"), r.out(), r.param("weight")
    for d in range(r.rank(x)):
        r.same(x, d, y, d)
    r.same(y, -1, w, 1)
    r.produces(w, 1)
    r.block(w, 0, "embedding vocabulary")


@RESIZE.register(nn.Embedding)
def embedding_resize(s, node, m):
    m.embedding_dim = m.weight.shape[1]
