"""Matrix products: matmul / bmm / mm / @, addmm / baddbmm, einsum.

MACs: every output element costs one contraction. Channels: the contracted dims of the two operands go
together; the others pass to the output (batch dims aligned from the right, broadcast ones left alone).
"""
from __future__ import annotations

import operator
from typing import Dict

import torch

from .registry import COUPLING, MACS, numel


@MACS.register(torch.matmul, operator.matmul, torch.bmm, torch.mm, "matmul", "bmm")
def matmul_macs(v) -> int:
    a = v.arg(0)
    return numel(v.out()) * (a[-1] if a else 0)


@MACS.register(torch.addmm, torch.baddbmm)
def addmm_macs(v) -> int:
    a = v.arg(1)
    return numel(v.out()) * (a[-1] if a else 0)


@COUPLING.register(torch.matmul, operator.matmul, torch.bmm, "matmul", "bmm", "__matmul__")
def matmul_coupling(r) -> None:
    a, b, y = r.arg(0), r.arg(1), r.out()
    if r.rank(a) < 2 or r.rank(b) < 2:
        raise ValueError("vector operand")
    r.same(a, -1, b, -2, kind="contract")
    r.same(a, -2, y, -2)
    r.same(b, -1, y, -1)
    ry = r.rank(y)
    for k in (a, b):
        rk = r.rank(k)
        for d in range(rk - 2):
            dy = d + (ry - rk)
            if r.shape(k)[d] == r.shape(y)[dy]:
                r.same(k, d, y, dy)


@COUPLING.register(torch.einsum, torch.functional.einsum)
def einsum_coupling(r) -> None:
    eq = r.node.args[0].replace(" ", "")
    operands = r.node.args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = operands[0]
    if "..." in eq or "->" not in eq:
        raise ValueError("implicit or ellipsis einsum")
    lhs, out = eq.split("->")
    letters: Dict[str, list] = {}
    for spec, op in zip(lhs.split(","), operands):
        k = r.key_of(op)
        for d, c in enumerate(spec):
            letters.setdefault(c, []).append((k, d))
    y = r.out()
    for d, c in enumerate(out):
        letters.setdefault(c, []).append((y, d))
    for dims in letters.values():
        first = dims[0]
        for other in dims[1:]:
            r.same(first[0], first[1], other[0], other[1])
