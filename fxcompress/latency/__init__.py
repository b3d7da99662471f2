"""Latency of a model on its deployment runtime (onnxruntime FP32 or INT8 on this CPU, threads, batch),
predicted for pruning plans and measured: what MagnitudePrune(target_latency=...) prunes by.

- layers.py   the conv/linear layers a table can time, and the widths a plan leaves each dim
- graphs.py   one layer as a small ONNX graph (FP32, or the QDQ form the INT8 lowering writes)
- timing.py   onnxruntime's profiler: kernel times side by side, whole models node by node
- table.py    per-layer tables over sampled widths, cached on disk, interpolated
- runtime.py  the runtime, lowering a whole model for it, measuring models side by side
- attribute.py which profiled node runs which layer
- model.py    LatencyModel: the prediction for any plan
- search.py   the greedy plan: least importance per latency saved
- target.py   prune to a target: plan, prune, measure, re-plan
- analyse.py  a model's graph and channel groups outside a pass

    from fxcompress.latency import LatencyModel, Runtime, traced_groups
    gm, groups = traced_groups(model, (x,))
    lm = LatencyModel.build(gm, groups, (x,), Runtime("onnxruntime-int8", threads=2, batch=32), round_to=8)
    lm.predict_ms({group_id: kept_units})
"""
from .analyse import traced_groups
from .model import LatencyModel
from .runtime import RUNTIMES, Runtime, RuntimeSpecError, export_for, measure
from .search import LatencyUnreachable, latency_plan
from .target import LatencyTarget, export_unpruned, measured_fraction, prune_to_latency, search_latency_target

__all__ = ["LatencyModel", "LatencyTarget", "LatencyUnreachable", "RUNTIMES", "Runtime", "RuntimeSpecError",
           "export_for", "export_unpruned", "latency_plan", "measure", "measured_fraction", "prune_to_latency",
           "search_latency_target", "traced_groups"]
