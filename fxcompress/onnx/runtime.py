"""Running ONNX files in onnxruntime: CPU sessions, inputs from torch tensors, and the graph onnxruntime
actually runs after its optimizations."""
from __future__ import annotations

import os
import tempfile
from typing import List, Optional, Sequence

import numpy as np
import onnx
import torch


def ort_session(path: str, threads: int = 2, optimized_model_path: Optional[str] = None, spinning: bool = False):
    """A CPU session. Spinning is off by default: idle spinning threads of one session steal the cores of
    another, which makes side-by-side timings of several sessions depend on their order (seen here: 1.9x)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_model_path:
        opts.optimized_model_filepath = optimized_model_path
        # saving an optimized graph always warns that NCHWc layouts are hardware specific: we only read it
        opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def run_ort(session, inputs: Sequence[torch.Tensor]) -> List[np.ndarray]:
    feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), inputs)}
    return session.run(None, feeds)


def optimized_graph(path: str, threads: int = 2) -> onnx.ModelProto:
    """The graph onnxruntime's CPU provider actually runs (all graph optimizations applied)."""
    fd, opt_path = tempfile.mkstemp(suffix=".opt.onnx")
    os.close(fd)
    try:
        ort_session(path, threads=threads, optimized_model_path=opt_path)
        return onnx.load(opt_path)
    finally:
        os.unlink(opt_path)
