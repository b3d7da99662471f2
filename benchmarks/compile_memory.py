"""Peak memory of fxcompress.compile against the size of the input model.

Budget (issue 8): the peak memory of compile is at most the input model plus one copy. Running the model
costs activations whatever the tool (a verifying pass must run it at least once), so each model also gets
a "forward" row, a plain `model(x)` under no_grad in its own fresh process, and the budget of every compile
row is: peak growth <= one copy of the model (parameter + buffer bytes) + that forward's own growth. Measured
without this term, densenet121 (31 MiB of weights, 24 MiB of activations for one 224x224 image) could not
meet it even by running the model once.

Each (model, config) pair runs in a fresh subprocess: imports and a warm-up compile of a tiny model
(so lazily loaded code is not charged to the model), then the model is built (random weights, eval), the
kernel's peak-RSS mark is reset (/proc/self/clear_refs, "5") and VmRSS read, compile (or the forward) runs,
and VmHWM is read. Growth = VmHWM after - VmRSS before; model bytes = parameter + buffer bytes.

    python benchmarks/compile_memory.py [--models resnet50 densenet121 vit_b_16]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "compile_memory.json")
CONFIGS = {
    "forward": "the model's own inference, no_grad: the activations of one run (part of every budget)",
    "ChannelGroups": "analysis only: nothing copied",
    "ChannelGroups+MagnitudePrune(0.5)": "one transform: the pruned model, verified by running both",
}


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def passes_for(config: str):
    from fxcompress.passes import ChannelGroups, MagnitudePrune
    return [ChannelGroups()] if config == "ChannelGroups" else [ChannelGroups(), MagnitudePrune(0.5)]


def child(name: str, config: str) -> dict:
    import warnings

    import torch
    import torchvision
    from torch import nn

    import fxcompress

    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    torch.manual_seed(0)
    tiny = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3)).eval()
    fxcompress.compile(tiny, passes_for(config), torch.randn(1, 3, 16, 16), progress=False)   # warm-up
    del tiny
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    model_bytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    gc.collect()
    reset = reset_peak()
    rss_before = status_kb("VmRSS")
    start = time.perf_counter()
    if config == "forward":
        with torch.no_grad():
            model(x)
        result = None
    else:
        result = fxcompress.compile(model, passes_for(config), x, progress=False)
    seconds = time.perf_counter() - start
    hwm_after = status_kb("VmHWM")
    rss_after = status_kb("VmRSS")
    growth = (hwm_after - rss_before) * 1024
    out = result.model if result is not None else model
    out_bytes = sum(t.numel() * t.element_size() for t in list(out.parameters()) + list(out.buffers()))
    return {"model": name, "passes": config, "model_bytes": model_bytes, "result_model_bytes": out_bytes,
            "rss_before_bytes": rss_before * 1024, "vmhwm_after_bytes": hwm_after * 1024,
            "rss_after_bytes": rss_after * 1024, "peak_growth_bytes": growth,
            "growth_over_model": growth / model_bytes, "peak_reset": reset, "compile_s": seconds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet50", "densenet121", "vit_b_16"])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--child", nargs=2, metavar=("MODEL", "PASSES"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(*args.child)), flush=True)
        return 0

    rows = []
    for name in args.models:
        for config in args.configs:
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", name, config],
                                  capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                print(f"{name} {config}: failed ({err})", file=sys.stderr)
                rows.append({"model": name, "passes": config, "error": err})
                continue
            rows.append(json.loads(lines[-1][len("RESULT "):]))
            r = rows[-1]
            forward = next((f for f in rows if f["model"] == name and f["passes"] == "forward" and "error" not in f),
                           None)
            if config != "forward" and forward is not None:
                r["budget_bytes"] = r["model_bytes"] + forward["peak_growth_bytes"]
                r["budget_over_model"] = r["budget_bytes"] / r["model_bytes"]
                r["within_budget"] = r["peak_growth_bytes"] <= r["budget_bytes"]
            print(f"{name} {config}: growth {r['peak_growth_bytes'] / 2**20:.1f} MiB = "
                  f"{r['growth_over_model']:.2f}x model", file=sys.stderr, flush=True)

    print("\n## Peak RSS growth of fxcompress.compile vs the model's parameter + buffer bytes "
          "(fresh process per row, 224x224)\n")
    def budget(r):
        if "within_budget" not in r:
            return "(the forward itself)"
        return f"{'<=' if r['within_budget'] else 'OVER'} {r['budget_over_model']:.2f}x"

    print("| model | passes | model MiB | peak growth MiB | growth / model | budget: 1 copy + forward | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['passes']} | - | - | failed: {r['error']} | - | - |")
            continue
        print(f"| {r['model']} | {r['passes']} | {r['model_bytes'] / 2**20:.1f} | "
              f"{r['peak_growth_bytes'] / 2**20:.1f} | {r['growth_over_model']:.2f}x | "
              f"{budget(r)} | {r['compile_s']:.2f} |")

    sys.path.insert(0, HERE)
    from provenance import provenance
    import torch
    torch.set_num_threads(2)   # as in the children
    payload = {"method": "VmHWM after compile - VmRSS before (peak mark reset just before), fresh process per "
                         "row, after a warm-up compile of a tiny model; model bytes = parameters + buffers",
               "configs": CONFIGS, "rows": rows, "provenance": provenance(ort_threads=None)}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(payload, f, indent=1)
    return 0 if all("error" not in r and r.get("within_budget", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
