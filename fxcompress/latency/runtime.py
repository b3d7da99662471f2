"""The deployment runtime a latency is measured on: onnxruntime on this machine's CPU, FP32 or INT8, with a
thread count and a batch size; and the whole model, lowered as fxcompress lowers it, timed there.

    rt = Runtime("onnxruntime-int8", threads=2, batch=32)
    export_for(model, example_inputs, rt, "model.onnx")       # FP32 file, or QuantizeINT8 + ExportONNX's INT8 file
    measure({"a": "a.onnx", "b": "b.onnx"}, rt, example_inputs)["a"].wall_ms    # side by side
"""
from __future__ import annotations

import hashlib
import platform
import statistics
from dataclasses import dataclass
from typing import Dict, Sequence

import onnx
import torch

from ..core.errors import PassError
from ..core.provenance import cpu_features, cpu_model
from ..onnx.write import to_onnx_proto
from .timing import Profile, interleaved_runs

RUNTIMES = {"onnxruntime-fp32": "fp32", "onnxruntime-int8": "int8"}


class RuntimeSpecError(PassError):
    """A runtime name, thread count or batch size the latency model cannot time."""


@dataclass(frozen=True)
class Runtime:
    """A deployment target: one of RUNTIMES, intra-op threads, batch size."""
    name: str = "onnxruntime-fp32"
    threads: int = 2
    batch: int = 1

    def __post_init__(self):
        if self.name not in RUNTIMES:
            raise RuntimeSpecError(f"runtime={self.name!r} is unknown; choose one of {sorted(RUNTIMES)}")
        for option, value in (("threads", self.threads), ("batch", self.batch)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise RuntimeSpecError(f"{option}={value!r} is invalid for runtime {self.name}: give an integer >= 1")

    @property
    def precision(self) -> str:
        return RUNTIMES[self.name]

    def tag(self) -> str:
        """Cache folder name: the runtime, threads and batch, and a digest of what else fixes a timing (the
        CPU and the onnxruntime version): a table measured elsewhere is never reused."""
        import onnxruntime as ort
        machine = f"{cpu_model()}|{cpu_features()}|{ort.__version__}|{platform.machine()}"
        digest = hashlib.sha256(machine.encode()).hexdigest()[:12]
        return f"{self.name}-t{self.threads}-b{self.batch}-{digest}"

    def describe(self) -> str:
        return f"{self.name}, {self.threads} thread(s), batch {self.batch}"


def runtime_input(example_inputs: Sequence[torch.Tensor], runtime: Runtime, seed: int = 0) -> torch.Tensor:
    """A random input of the runtime's batch size, shaped like the (single) example input."""
    if len(example_inputs) != 1 or not isinstance(example_inputs[0], torch.Tensor):
        raise RuntimeSpecError(f"latency is measured on models with one tensor input; this one takes "
                               f"{len(example_inputs)} inputs")
    shape = (runtime.batch, *example_inputs[0].shape[1:])
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def export_for(model: torch.nn.Module, example_inputs: Sequence[torch.Tensor], runtime: Runtime, path: str) -> str:
    """Write `model` as the runtime runs it: FP32 as ExportONNX writes it, INT8 through QuantizeINT8 and
    ExportONNX (minmax ranges from one random batch, no bias correction, no parity check: the kernels'
    speed does not depend on the values, and this file is only timed)."""
    if runtime.precision == "fp32":
        onnx.save(to_onnx_proto(model, example_inputs), path)
        return path
    # the compiler and passes sit above this module; imported here, where a whole model is lowered
    from ..core.compiler import compile as compile_model
    from fxcompress.passes.export_onnx import ExportONNX   # the pass modules, not the package: no cycle
    from fxcompress.passes.quantize_int8 import QuantizeINT8
    calib = [runtime_input(example_inputs, Runtime(runtime.name, runtime.threads, 1), seed=1)]
    compile_model(model, [QuantizeINT8("minmax", bias_correction=False, progress=False, calib_batches=1),
                          ExportONNX(path, verify=False)], tuple(example_inputs), calib_loader=calib, progress=False)
    return path


@dataclass
class Measurement:
    """One model's latency from interleaved runs (ms): `wall_ms` the fastest end-to-end run of a plain
    session, `wall_median_ms` their median, `quiet_ms` the profiled session's nodes at their fastest plus
    its overhead (timing.Profile), and that `profile`, less the profiler's own cost.

    `ms`, the measured latency, is the lower of wall_ms and quiet_ms: each errs only upwards, wall_ms by
    the disturbances of other processes (which a long run cannot escape: resnet50 INT8 at batch 32, 388 ms
    against 327 for its nodes at their fastest), quiet_ms by the profiler's few microseconds per node
    (ResNet-20 at batch 1: 0.54 ms against 0.41)."""
    wall_ms: float
    wall_median_ms: float
    quiet_ms: float
    profile: Profile

    @property
    def ms(self) -> float:
        return min(self.wall_ms, self.quiet_ms)

    def to_dict(self) -> dict:
        return {"ms": self.ms, "wall_ms": self.wall_ms, "wall_median_ms": self.wall_median_ms,
                "quiet_ms": self.quiet_ms}


def measure(paths: Dict[str, str], runtime: Runtime, example_inputs: Sequence[torch.Tensor], runs: int = 20,
            warmup: int = 3, budget_s: float = 4.0) -> Dict[str, Measurement]:
    """Each file timed at the runtime's batch and threads, all side by side (timing.interleaved_runs: at least
    `runs` rounds, more while they fit `budget_s`)."""
    x = runtime_input(example_inputs, runtime).numpy()
    models = {k: (p, {onnx.load(p, load_external_data=False).graph.input[0].name: x}) for k, p in paths.items()}
    out = {}
    for k, (walls, profile) in interleaved_runs(models, runtime.threads, runs, warmup, budget_s).items():
        out[k] = Measurement(min(walls), statistics.median(walls), profile.quiet_ms,
                             profile.without_profiler(min(walls)))
    return out
