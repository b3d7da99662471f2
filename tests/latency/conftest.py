"""The tiny residual CNN's channel groups and latency models, built once per test session with the latency
cache in a temporary folder (tables are measured, never read from the user's cache)."""
import contextlib
import os
import sys

import pytest

from fxcompress.latency import LatencyModel, Runtime, traced_groups

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from latency_models import BATCH, X, tiny_model  # noqa: E402


@contextlib.contextmanager
def cache_env(folder: str):
    old = os.environ.get("FXCOMPRESS_CACHE")
    os.environ["FXCOMPRESS_CACHE"] = folder
    try:
        yield folder
    finally:
        if old is None:
            os.environ.pop("FXCOMPRESS_CACHE", None)
        else:
            os.environ["FXCOMPRESS_CACHE"] = old


@pytest.fixture(scope="session")
def latency_cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fxcompress_cache"))


@pytest.fixture(autouse=True)
def latency_cache(latency_cache_dir):
    """FXCOMPRESS_CACHE pointed at the session's temporary folder during each test of this folder only (the
    rest of the suite keeps its own cache: the decoded CIFAR-10 lives there)."""
    with cache_env(latency_cache_dir):
        yield latency_cache_dir


@pytest.fixture(scope="session")
def tiny(latency_cache_dir):
    model = tiny_model()
    gm, groups = traced_groups(model, (X,))
    return model, gm, groups


def build(tiny, precision: str, folder: str) -> LatencyModel:
    _, gm, groups = tiny
    with cache_env(folder):
        return LatencyModel.build(gm, groups, (X,), Runtime(f"onnxruntime-{precision}", 2, BATCH), round_to=8,
                                  points=3, runs=5, measure_runs=15, measure_budget_s=1.5, progress=False)


@pytest.fixture(scope="session")
def tiny_fp32(tiny, latency_cache_dir):
    return build(tiny, "fp32", latency_cache_dir)


@pytest.fixture(scope="session")
def tiny_int8(tiny, latency_cache_dir):
    return build(tiny, "int8", latency_cache_dir)


@pytest.fixture(scope="session")
def rebuild_latency_model(tiny):
    """A factory: a freshly measured latency model of the tiny CNN for a precision, cached in a given folder."""
    return lambda precision, folder: build(tiny, precision, folder)
