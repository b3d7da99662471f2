"""INT8 speed and calibration cost: fxcompress vs onnxruntime's quantize_static, side by side.

For any torchvision classifier at 224x224, by default resnet18, resnet50 and mobilenet_v2 (random weights, BatchNorm statistics re-estimated on random
data so activations are realistic), in one run:
  fp32          the FP32 ONNX model
  ort_minmax    onnxruntime quantize_static: QDQ, uint8 activations, int8 per-channel weights, MinMax
  ort_entropy   the same with Entropy calibration, 2048/128 bins (its calibrator, then quantize_static)
  fx_kl         fxcompress QuantizeINT8(method="kl") (which folds BatchNorm) + ExportONNX
  fx_minmax     fxcompress with method="minmax"
Latency: medians over interleaved rounds (fxcompress.measure) in rotated orders, 2 threads, batch 1 and 8.
Calibration: every calibrator runs in its own subprocess on the same 64 images; peak RSS (VmHWM) and
time are read there. fxcompress KL is also run on 512 images to show its memory does not grow.
onnxruntime gets the same FP32 file (equal constants the exporter shares through Identity nodes are
inlined first; its quantizer otherwise skips those biases and leaves 16 of resnet18's convs in float).

    python benchmarks/int8_speed.py                 # all three models (~15-25 min on 2 cores)
    python benchmarks/int8_speed.py --models resnet18 --runs 20
    python benchmarks/int8_speed.py --models convnext_tiny,swin_t,vit_b_16 --ort-entropy-models none --runs 20
        # transformers (~15 min); onnxruntime's Entropy calibrator needs over 23 GB on swin_t
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from provenance import provenance  # noqa: E402  (benchmarks/provenance.py)

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "int8_speed.json")
CALIB_BATCH = 8
VARIANTS = ("fp32", "ort_minmax", "ort_entropy", "fx_kl", "fx_minmax")


# ----------------------------------------------------------------------------------------------- helpers

def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def rss_mb() -> float:
    return _status_mb("VmRSS")


def reset_peak_rss() -> None:
    """Start peak-RSS accounting afresh (Linux: VmHWM drops to the current RSS), so model building and
    imports before calibration do not count; the resident baseline still does, for every calibrator."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def build_model(name: str):
    import torch
    import torchvision
    from fxcompress.models.random_init import recalibrate_batchnorm
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    return recalibrate_batchnorm(model, (1, 3, 224, 224), batches=4, batch_size=8).eval()


def images(workdir: str, n: int, seed: int) -> np.ndarray:
    """The same random 'images' for every calibrator (normalised-image statistics: N(0, 1))."""
    path = os.path.join(workdir, f"images_{n}_{seed}.npy")
    if not os.path.exists(path):
        np.save(path, np.random.default_rng(seed).standard_normal((n, 3, 224, 224), dtype=np.float32))
    return np.load(path)


class ImageBatches:
    """Re-iterable batches read from the .npy file one at a time (plain reads, no memory map), so that no
    calibrator holds the whole set: memory growth with more images is then the calibrator's own."""

    def __init__(self, path: str, batch: int = CALIB_BATCH):
        self.path, self.batch = path, batch
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            self.shape, _, self.dtype = read_header(f)
            self.offset = f.tell()
        self.per_image = int(np.prod(self.shape[1:]))

    def __iter__(self):
        with open(self.path, "rb") as f:
            for start in range(0, self.shape[0], self.batch):
                count = min(self.batch, self.shape[0] - start)
                f.seek(self.offset + start * self.per_image * self.dtype.itemsize)
                yield np.fromfile(f, self.dtype, count * self.per_image).reshape(count, *self.shape[1:])


def image_batches(workdir: str, n: int, seed: int) -> ImageBatches:
    images(workdir, n, seed)  # written once, then read batch by batch
    return ImageBatches(os.path.join(workdir, f"images_{n}_{seed}.npy"))


# ------------------------------------------------------------------------------- calibrators (subprocess)

def calibrate_ort(model: str, method: str, n: int, workdir: str) -> dict:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    data = image_batches(workdir, n, seed=1)
    fp32 = os.path.join(workdir, f"{model}_fp32.onnx")
    out = os.path.join(workdir, f"{model}_ort_{method}.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = ({"input": batch} for batch in data)

        def get_next(self):
            return next(self.batches, None)

    reset_peak_rss()
    base = rss_mb()
    start = time.perf_counter()
    common = dict(quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                  per_channel=True)
    if method == "minmax":
        quantize_static(fp32, out, Reader(), calibrate_method=CalibrationMethod.MinMax, **common)
        calib_seconds, peak = time.perf_counter() - start, peak_rss_mb()
    else:  # Entropy with TensorRT's 2048/128 bins: through its calibrator (quantize_static cannot set bins)
        from onnxruntime.quantization.calibrate import create_calibrator
        from onnxruntime.quantization.calibrate import save_tensors_data
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
        ops = sorted(set(QDQRegistry) | set(QLinearOpsRegistry))
        with tempfile.TemporaryDirectory() as tmp:
            calibrator = create_calibrator(fp32, ops, augmented_model_path=os.path.join(tmp, "aug.onnx"),
                                           calibrate_method=CalibrationMethod.Entropy,
                                           extra_options={"num_bins": 2048, "num_quantized_bins": 128})
            calibrator.collect_data(Reader())
            ranges = calibrator.compute_data()
            calib_seconds, peak = time.perf_counter() - start, peak_rss_mb()
            del calibrator
        cache = os.path.join(workdir, f"{model}_entropy_cache.json")
        save_tensors_data(ranges, cache)
        quantize_static(fp32, out, None, calibrate_method=CalibrationMethod.Entropy, calibration_cache_path=cache,
                        **common)
    return {"calib_seconds": calib_seconds, "peak_rss_mb": peak, "baseline_rss_mb": base, "path": out}


def calibrate_fx(model: str, method: str, n: int, workdir: str, export: bool) -> dict:
    import torch
    import fxcompress
    from fxcompress.core.pass_base import AnalysisPass
    from fxcompress.passes import ExportONNX, QuantizeINT8

    net = build_model(model)
    class Loader:  # re-iterable: QuantizeINT8 reads it for calibration and again for the agreement check
        def __iter__(self):
            return ((torch.from_numpy(b), torch.zeros(len(b), dtype=torch.long))
                    for b in image_batches(workdir, n, seed=1))

    loader = Loader()
    probe = {}

    class Probe(AnalysisPass):   # reads the peak RSS right after calibration, before the export runs ORT
        def cache_key(self):
            return ("probe", id(self))

        def run(self, ctx):
            probe.update(peak_rss_mb=peak_rss_mb(), at=time.perf_counter())

    out = os.path.join(workdir, f"{model}_fx_{method}.onnx")
    # random weights amplify ORT-vs-float rounding differences into near-tied logits (see QuantizeINT8):
    # the agreement is reported, not enforced at 99% here
    # QuantizeINT8 folds BatchNorm itself (FoldBatchNorm's float32 exactness check at 1e-5 trips on
    # float rounding alone in resnet50's depth: see the report)
    passes = [QuantizeINT8(method=method), Probe()] + ([ExportONNX(out)] if export else [])
    reset_peak_rss()
    base = rss_mb()
    start = time.perf_counter()
    result = fxcompress.compile(net, passes, torch.randn(1, 3, 224, 224), calib_loader=loader, progress=False)
    quant = next(r for r in result.report.records if r.name == "QuantizeINT8")
    row = {"calib_seconds": probe["at"] - start, "observe_and_search_seconds": quant.metrics["calib_seconds"],
           "peak_rss_mb": probe["peak_rss_mb"], "baseline_rss_mb": base, "path": out}
    if export:
        row["export"] = {k: v for k, v in result.report.records[-1].metrics.items()}
    return row


def run_calibrator(kind: str, model: str, method: str, n: int, workdir: str, export: bool = True) -> dict:
    """Run one calibrator in a fresh process so its peak memory is its own."""
    cmd = [sys.executable, __file__, "--calibrator", kind, "--method", method, "--images", str(n),
           "--workdir", workdir, "--models", model] + ([] if export else ["--no-export"])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"calibrator {kind}/{method} on {model} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ main

def agreement(paths: dict, workdir: str, n: int = 32) -> dict:
    """Top-1 agreement with FP32 and relative output error on held-out random inputs."""
    from fxcompress.onnx.runtime import ort_session
    x = images(workdir, n, seed=2)
    ref = ort_session(paths["fp32"]).run(None, {"input": x})[0]
    out = {}
    for k, p in paths.items():
        if k == "fp32":
            continue
        y = ort_session(p).run(None, {"input": x})[0]
        out[k] = {"top1_agreement_vs_fp32": float((y.argmax(1) == ref.argmax(1)).mean()),
                  "rel_error_vs_fp32": float(np.abs(y - ref).max() / np.abs(ref).max())}
    return out


def rotated_latency(paths: dict, example, runs: int) -> dict:
    """Median latency per variant over interleaved rounds, repeated with the variants' order rotated so
    that no variant always follows the same neighbour (ORT thread pools spin briefly after a run)."""
    from fxcompress.onnx.measure import interleaved_latency
    names = list(paths)
    per_rotation = max(runs // len(names), 2)
    samples = {k: [] for k in names}
    for r in range(len(names)):
        order = names[r:] + names[:r]
        result = interleaved_latency({k: paths[k] for k in order}, example, runs=per_rotation, warmup=2)
        for k, v in result.items():
            samples[k].append(v)
    return {k: float(np.median(v)) for k, v in samples.items()}


def bench_model(name: str, args, workdir: str) -> dict:
    import torch
    from fxcompress.onnx.write import to_onnx_proto
    from fxcompress.quant.lower import inline_constant_identities
    import onnx

    fp32 = os.path.join(workdir, f"{name}_fp32.onnx")
    onnx.save(inline_constant_identities(to_onnx_proto(build_model(name), (torch.randn(1, 3, 224, 224),))), fp32)
    rows = {"fp32": {"path": fp32}}
    for kind, method in (("ort", "minmax"), ("ort", "entropy"), ("fx", "kl"), ("fx", "minmax")):
        if (kind, method) == ("ort", "entropy") and args.ort_entropy_models != "all" \
                and name not in args.ort_entropy_models.split(","):
            rows["ort_entropy"] = {"error": "not run (--ort-entropy-models): its graph and speed are MinMax's"}
            continue
        print(f"  [{name}] calibrating {kind}_{method} on {args.images} images ...", flush=True)
        try:
            rows[f"{kind}_{method}"] = run_calibrator(kind, name, method, args.images, workdir)
        except RuntimeError as e:   # a calibrator that fails (onnxruntime's Entropy runs out of memory on
            if kind == "fx":        # swin_t at 224x224 with 64 images) is a result: recorded, not timed
                raise
            rows[f"{kind}_{method}"] = {"error": str(e).splitlines()[0], "stderr_tail": str(e)[-300:]}
            print(f"  [{name}] {kind}_{method} failed: {str(e).splitlines()[0]}", flush=True)
    if name in args.streaming_models:
        print(f"  [{name}] fxcompress kl on {args.big_images} images (memory growth) ...", flush=True)
        rows["fx_kl_big"] = run_calibrator("fx", name, "kl", args.big_images, workdir, export=False)
    paths = {k: rows[k]["path"] for k in VARIANTS if "path" in rows[k]}
    for k in paths:
        rows[k]["file_mb"] = os.path.getsize(paths[k]) / 2 ** 20
    agree = agreement(paths, workdir)
    latency = {}
    for batch, runs in ((1, args.runs), (8, args.runs)):   # as many rounds at batch 8: its ratios are as noisy
        print(f"  [{name}] latency batch {batch} ({runs} interleaved rounds per variant) ...", flush=True)
        latency[batch] = rotated_latency(paths, torch.randn(batch, 3, 224, 224), runs)
    for k in paths:
        rows[k]["latency_ms"] = {b: latency[b][k] for b in latency}
        rows[k].update(agree.get(k, {}))
    return rows


def summarize(name: str, rows: dict, args) -> list:
    lines = []
    def ms(k, b):
        return f"{rows[k]['latency_ms'][b]:.1f}" if "latency_ms" in rows[k] else "failed"
    for b in (1, 8):
        best_ort = min(rows[k]["latency_ms"][b] for k in ("ort_minmax", "ort_entropy") if "latency_ms" in rows[k])
        fx = rows["fx_kl"]["latency_ms"][b]
        lines.append(f"| {name} | {b} | {ms('fp32', b)} | {ms('ort_minmax', b)} | {ms('ort_entropy', b)} | {fx:.1f} | "
                     f"{ms('fx_minmax', b)} | {fx / best_ort:.3f} | {rows['fp32']['latency_ms'][b] / fx:.2f}x |")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,resnet50,mobilenet_v2")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--big-images", type=int, default=512)
    ap.add_argument("--streaming-models", default="resnet50", help="models also calibrated on --big-images")
    ap.add_argument("--ort-entropy-models", default="all",
                    help="models to calibrate with onnxruntime's Entropy too (it needs > 23 GB on swin_t at 224x224 "
                         "with 64 images; its file runs as fast as MinMax's, only the ranges differ)")
    ap.add_argument("--runs", type=int, default=50, help="timed runs per variant at batch 1 and at batch 8")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=RESULTS, help="JSON results file")
    ap.add_argument("--calibrator", choices=["ort", "fx"], help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--no-export", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.calibrator:   # subprocess mode: one calibrator, JSON on the last stdout line
        fn = calibrate_ort(args.models, args.method, args.images, args.workdir) if args.calibrator == "ort" else \
            calibrate_fx(args.models, args.method, args.images, args.workdir, not args.no_export)
        print(json.dumps(fn, default=float))
        return
    args.streaming_models = args.streaming_models.split(",")
    workdir = args.workdir or tempfile.mkdtemp(prefix="int8_speed_")
    os.makedirs(workdir, exist_ok=True)
    results = {"threads": 2, "calib_images": args.images, "models": {}}
    for name in args.models.split(","):
        print(f"== {name}", flush=True)
        results["models"][name] = bench_model(name, args, workdir)
        print("\n".join(summarize(name, results["models"][name], args)), flush=True)
        save(results, args.out)   # after each model, so a later failure keeps the earlier figures
    print("\n| model | batch | FP32 ms | ORT MinMax ms | ORT Entropy ms | fx KL ms | fx MinMax ms | fx KL / ORT best | fx KL speed-up vs FP32 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rows in results["models"].items():
        print("\n".join(summarize(name, rows, args)))
    print("\n| model | calibrator | images | time s | peak RSS MB | RSS before MB | file MB | top-1 vs FP32 | int8 MACs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rows in results["models"].items():
        for k in VARIANTS[1:] + ("fx_kl_big",):
            if k not in rows:
                continue
            r = rows[k]
            n = args.big_images if k == "fx_kl_big" else args.images
            if "error" in r:
                print(f"| {name} | {k} | {n} | failed: {r['error'][:80]} | | | | | |")
                continue
            mac = r.get("export", {}).get("int8_mac_fraction")
            print(f"| {name} | {k} | {n} | {r['calib_seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['baseline_rss_mb']:.0f} | "
                  f"{r.get('file_mb', float('nan')):.1f} | {r.get('top1_agreement_vs_fp32', float('nan')):.3f} | "
                  f"{'' if mac is None else f'{mac:.3f}'} |")
        print(f"| {name} | fp32 file | | | | | {rows['fp32']['file_mb']:.1f} | | |")
    for name, rows in results["models"].items():
        if "fx_kl_big" in rows:
            kl, ent, big = rows["fx_kl"], rows["ort_entropy"], rows["fx_kl_big"]
            print(f"\n{name}: fx KL peak {kl['peak_rss_mb']:.0f} MB = {kl['peak_rss_mb'] / ent['peak_rss_mb']:.1%} of ORT "
                  f"Entropy's {ent['peak_rss_mb']:.0f} MB; time {kl['calib_seconds']:.1f} s vs {ent['calib_seconds']:.1f} s; "
                  f"{args.big_images} vs {args.images} images: peak {big['peak_rss_mb']:.0f} vs {kl['peak_rss_mb']:.0f} MB "
                  f"({big['peak_rss_mb'] / kl['peak_rss_mb'] - 1:+.1%})")
    save(results, args.out)
    print(f"\nwrote {args.out}")


def _file_names_only(o):
    """Results name files, not this machine's temporary paths."""
    if isinstance(o, dict):
        return {("file" if k == "path" else k): (os.path.basename(v) if k == "path" else _file_names_only(v))
                for k, v in o.items()}
    return [_file_names_only(v) for v in o] if isinstance(o, list) else o


def save(results: dict, path: str) -> None:
    results = {**_file_names_only(results), "provenance": provenance(ort_threads=results.get("threads", 2))}
    from fxcompress.core.files import atomic_write_text
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
