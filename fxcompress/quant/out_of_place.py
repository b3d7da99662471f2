"""In-place arithmetic rewritten out of place before INT8 quantization.

`x.add_(y)` (csatv2's blocks; a graph may also hold operator.iadd, though fx traces `x += y` on a proxy as
an add) writes its sum into x. Once QuantizeINT8 puts a quantizer after the add and an integer emulation
beside it, the emulation reads x after the add wrote it: it requantized x + y + y, and the INT8 check found
every code of that quantizer off (up to 54 steps). Out of place, the add makes a new tensor, and the later
readers of x read that tensor instead, as they read the written x before: the same function (QuantizeINT8
checks it exact).

    rewritten = out_of_place_arithmetic(gm)   # node names rewritten; gm changed in place, recompiled
"""
from __future__ import annotations

import operator
from typing import List

import torch.fx as fx

IN_PLACE_METHODS = {"add_": "add", "sub_": "sub", "mul_": "mul", "div_": "div"}
IN_PLACE_FUNCTIONS = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                      operator.itruediv: operator.truediv}


def out_of_place_arithmetic(gm: fx.GraphModule) -> List[str]:
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    rewritten = []
    for node in list(gm.graph.nodes):
        if node.op == "call_method" and node.target in IN_PLACE_METHODS:
            node.target = IN_PLACE_METHODS[node.target]
        elif node.op == "call_function" and node.target in IN_PLACE_FUNCTIONS:
            node.target = IN_PLACE_FUNCTIONS[node.target]
        else:
            continue
        x = node.args[0]
        if isinstance(x, fx.Node):   # whoever read x after the write reads the result
            for user in list(x.users):
                if user is not node and order[user] > order[node]:
                    user.replace_input_with(x, node)
        rewritten.append(node.name)
    if rewritten:
        gm.recompile()
    return rewritten
