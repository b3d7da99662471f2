"""Measuring lowered models honestly: onnxruntime accuracy on a loader, and latency of several models
timed side by side (interleaved rounds, medians), so that machine noise hits every variant alike."""
from __future__ import annotations

import statistics
import time
from typing import Dict, Iterable

import torch

from ..data.loader import unpack_batch
from .runtime import ort_session


def onnx_top1(path: str, loader: Iterable, threads: int = 2) -> float:
    session = ort_session(path, threads)
    name = session.get_inputs()[0].name
    correct = total = 0
    for batch in loader:
        x, y = unpack_batch(batch)
        logits = session.run(None, {name: x.numpy()})[0]
        correct += int((logits.argmax(1) == y.numpy()).sum())
        total += len(y)
    return correct / max(total, 1)


def interleaved_latency(paths: Dict[str, str], example: torch.Tensor, runs: int = 30, warmup: int = 5,
                        threads: int = 2) -> Dict[str, float]:
    """Median latency in milliseconds of each ONNX model on `example`: rounds interleave the models, in
    alternating order, so drifts and warm-cache effects hit every model alike."""
    sessions = {k: ort_session(p, threads) for k, p in paths.items()}
    feeds = {k: {s.get_inputs()[0].name: example.numpy()} for k, s in sessions.items()}
    times: Dict[str, list] = {k: [] for k in sessions}
    names = list(sessions)
    for i in range(warmup + runs):
        for k in (names if i % 2 == 0 else names[::-1]):
            s = sessions[k]
            start = time.perf_counter()
            s.run(None, feeds[k])
            if i >= warmup:
                times[k].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}
