"""Zoo sweep: every torchvision classification model, random weights: trace, prune, output shape,
forward + backward, ExportONNX with onnxruntime parity. One row per model, a total, JSON + Markdown.

    python benchmarks/zoo_prune.py [--models resnet18 vit_b_16 ...] [--ratio 0.5] [--size 64]
    python benchmarks/zoo_prune.py --method resrep [--target 0.5] [--steps 24]
    python benchmarks/zoo_prune.py --source timm [--models resnet10t ...]   # one model per timm family

--source timm: the models of benchmarks/timm_families.json (one per architecture family, the smallest; see
benchmarks/timm_families.py), random weights, each at its default input size (--size is ignored). A row also
fails when the method removed less than --min-removed of what it reduces (a model left almost unpruned must not
pass silently): of the parameters for magnitude pruning (a fraction of every group's channels), of the MACs for
ResRep (a MACs target; a VGG meets it with few parameters gone, most of them sitting in its classifier: vgg13
at half the MACs keeps 81 % of them). Its reason lists what fixed the groups.

--method magnitude (default): MagnitudePrune(ratio). --method resrep: ResRep to --target of the MACs:
compactors inserted (checked identity), --steps training iterations on random data (batch 2, masking every
3 steps, 4 channels at a time), the remaining channels masked at once to the target, merge (checked exact),
removal (checked exact); the row fails unless the pruned model is at or under the target. Producers wider than
--max-full-channels (1024) get per-channel scales instead of C x C compactors.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
import traceback
import warnings

import torch
import torchvision
from tqdm import tqdm

import fxcompress
from fxcompress.passes import ChannelGroups, ExportONNX, MagnitudePrune, ResRep
from fxcompress.passes.resrep import UnreachableTarget
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from provenance import provenance, scrub_paths  # noqa: E402  (benchmarks/provenance.py)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def build(name: str, size: int, source: str = "torchvision"):
    if source == "timm":
        return build_timm(name)
    return build_torchvision(name, size)


@torch.no_grad()
def perturb(model) -> None:
    """Zero-initialised heads, biases and last BatchNorms would make every check trivially pass."""
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.02)


def timm_families() -> dict:
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "timm_families.json")) as f:
        return json.load(f)


def build_timm(name: str):
    """A timm model with random weights at its default input size."""
    import timm   # a benchmark dependency, never a runtime one
    model = timm.create_model(name, pretrained=False).eval()
    size = list((model.pretrained_cfg or {}).get("input_size", (3, 224, 224)))
    perturb(model)
    return model, torch.randn(1, *size)


def build_torchvision(name: str, size: int):
    """A model with random weights and the smallest input it accepts near `size`."""
    kwargs = {}
    if name.startswith("vit_"):
        patch = int(name.split("_")[-1])
        size = max(patch * 4, (size // patch) * patch)
        kwargs["image_size"] = size
    elif name == "maxvit_t":
        size = 224  # its window partitioning needs 224 / 32 = 7 at the last stage
    elif name == "alexnet" or name.startswith("vgg"):
        size = 224  # ONNX export of adaptive pooling needs the pooled size to divide the feature map (6 or 7)
    elif name == "inception_v3":
        size = max(size, 96)
    if name in ("googlenet", "inception_v3"):
        kwargs["init_weights"] = True
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    perturb(model)
    return model, torch.randn(1, 3, size, size)


def random_batches(x: torch.Tensor, classes: int, steps: int, batch: int = 2) -> list:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, *x.shape[1:], generator=gen), torch.randint(0, classes, (batch,), generator=gen))
            for _ in range(steps)]


def prune_pass(args, x, classes, target=None):
    if args.method == "magnitude":
        return MagnitudePrune(args.ratio), {}
    rr = ResRep(target_macs=target, epochs=1, lr=1e-3, warmup_epochs=0, mask_interval=3, step_channels=4,
                lasso_strength=1e-4, max_full_channels=args.max_full_channels)
    return rr, {"train_loader": random_batches(x, classes, args.steps)}


def run_one(name: str, args, tmpdir: str) -> dict:
    row = {"model": name, "status": "fail", "reason": ""}
    start = time.perf_counter()
    try:
        torch.manual_seed(0)
        model, x = build(name, args.size, args.source)
        row["input"] = list(x.shape)
        with torch.no_grad():
            expected = model(x)
        path = os.path.join(tmpdir, f"{name}.onnx")
        prune_step, loaders = prune_pass(args, x, expected.shape[-1], args.target)
        try:
            result = fxcompress.compile(model, [ChannelGroups(), prune_step, ExportONNX(path)], x, progress=False,
                                        **loaders)
        except UnreachableTarget as e:
            # the fixed groups (e.g. a LayerNorm'd residual stream) keep more than --target: aim halfway
            # between what can be reached and the whole model, and say so in the row
            row["target_note"] = f"--target {args.target} unreachable (floor {e.reachable:.3f})"
            prune_step, loaders = prune_pass(args, x, expected.shape[-1], math.ceil(50 * (1 + e.reachable)) / 100)
            result = fxcompress.compile(model, [ChannelGroups(), prune_step, ExportONNX(path)], x, progress=False,
                                        **loaders)
        groups, prune_rec, export_rec = result.report.records
        row.update(params_before=prune_rec.params_before, params_after=prune_rec.params_after,
                   macs_before=prune_rec.macs_before, macs_after=prune_rec.macs_after,
                   groups=groups.metrics.get("groups"), prunable_groups=groups.metrics.get("prunable_groups"),
                   exact_rel_err=prune_rec.metrics.get("max_rel_error", prune_rec.metrics.get("removal_max_rel_error")),
                   onnx_rel_err=export_rec.metrics.get("max_rel_error"),
                   fixed_reasons=groups.metrics.get("fixed_reasons"), capture=result.report.capture.get("method"))
        row["params_removed"] = round(1 - prune_rec.params_after / prune_rec.params_before, 4)
        row["macs_removed"] = round(1 - prune_rec.macs_after / prune_rec.macs_before, 4)
        quantity = "macs" if args.method == "resrep" else "params"   # what the method is asked to reduce
        if row[f"{quantity}_removed"] < args.min_removed:
            raise RuntimeError(f"only {row[f'{quantity}_removed']:.1%} of the {'MACs' if quantity == 'macs' else 'parameters'} "
                               f"removed (< --min-removed {args.min_removed}); groups fixed by: "
                               f"{groups.metrics.get('fixed_reasons')}")
        if args.method == "resrep":
            m = prune_rec.metrics
            row.update(target=prune_step.target_macs, compactors=m["compactors"], final_step_channels=m["final_step_channels"],
                       merge_rel_err=m["merge_max_rel_error"], insertion_rel_err=m["insertion_max_rel_error"],
                       skipped_groups=len(m["skipped_groups"]))
            if prune_rec.macs_after > prune_step.target_macs * prune_rec.macs_before:
                raise RuntimeError(f"MACs {prune_rec.macs_after} above the target {prune_step.target_macs} x "
                                   f"{prune_rec.macs_before}")
        pruned = result.model
        out = pruned(x)
        if tuple(out.shape) != tuple(expected.shape):
            raise RuntimeError(f"output shape {tuple(out.shape)} != {tuple(expected.shape)}")
        out.float().pow(2).mean().backward()
        grads = [p.grad for p in pruned.parameters() if p.requires_grad]
        if not grads or any(g is None or not torch.isfinite(g).all() for g in grads):
            raise RuntimeError("backward gave missing or non-finite gradients")
        row["status"] = "ok"
        os.unlink(path)
        if args.int8:
            row.update(int8_of(pruned, x, tmpdir, name))
    except Exception as e:  # the sweep records every failure with its reason and goes on
        row["reason"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        row["trace"] = traceback.format_exc(limit=-3)
    row["seconds"] = round(time.perf_counter() - start, 2)
    gc.collect()
    return row


def int8_of(pruned, x: torch.Tensor, tmpdir: str, name: str) -> dict:
    """FoldBatchNorm + QuantizeINT8(kl) + ExportONNX of the pruned model (calibrated on 16 random inputs):
    whether the INT8 check passes, and the share of MACs in integer kernels; recorded, not part of the row's
    status (the pruning sweep's)."""
    from fxcompress.passes import FoldBatchNorm, QuantizeINT8
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(4, *x.shape[1:], generator=gen) for _ in range(4)]
    path = os.path.join(tmpdir, f"{name}_int8.onnx")
    try:
        result = fxcompress.compile(pruned.eval(), [FoldBatchNorm(), QuantizeINT8(method="kl"), ExportONNX(path)], x,
                                    calib_loader=calib, progress=False)
        os.unlink(path)
        m = result.report.records[-1].metrics
        return {"int8": "ok", "int8_mac_fraction": m.get("int8_mac_fraction")}
    except Exception as e:  # noqa: BLE001 - recorded with its reason
        return {"int8": f"{type(e).__name__}: {str(e).splitlines()[0][:600] if str(e) else ''}"}


def table(rows) -> str:
    def m(v):
        return "-" if v is None else f"{v / 1e6:.1f}M"
    lines = ["| model | status | input | params | MACs | MACs kept | groups (prunable) | exact err | ONNX err | s | reason |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kept = f"{r['macs_after'] / r['macs_before']:.2f}" if r.get("macs_before") else "-"
        lines.append(f"| {r['model']} | {r['status']} | {r.get('input', ['-'])[-1]} | {m(r.get('params_before'))} -> "
                     f"{m(r.get('params_after'))} | {m(r.get('macs_before'))} -> {m(r.get('macs_after'))} | {kept} | "
                     f"{r.get('groups', '-')} ({r.get('prunable_groups', '-')}) | "
                     f"{r.get('exact_rel_err') or 0:.1e} | {r.get('onnx_rel_err') or 0:.1e} | {r['seconds']} | "
                     f"{r['reason']} |")
    ok = sum(r["status"] == "ok" for r in rows)
    lines.append(f"\n**{ok} / {len(rows)} models pruned, exact, exported and verified in onnxruntime.**")
    int8 = [r for r in rows if "int8" in r]
    if int8:
        lines.append(f"\nINT8 (FoldBatchNorm + QuantizeINT8 + the INT8 check) of the pruned models: "
                     f"{sum(r['int8'] == 'ok' for r in int8)} / {len(int8)} pass.\n")
        lines += ["| model | INT8 | integer MACs |", "|---|---|---|"]
        lines += [f"| {r['model']} | {r['int8']} | {r.get('int8_mac_fraction') or 0:.1%} |" for r in int8]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", help="default: every torchvision classification model")
    p.add_argument("--method", choices=("magnitude", "resrep"), default="magnitude")
    p.add_argument("--ratio", type=float, default=0.5, help="magnitude: fraction of each group's channels to remove")
    p.add_argument("--target", type=float, default=0.5, help="resrep: fraction of the MACs to keep")
    p.add_argument("--steps", type=int, default=12, help="resrep: training iterations on random data")
    p.add_argument("--max-full-channels", type=int, default=1024,
                   help="resrep: wider producers get a per-channel scale, not a C x C compactor (memory: "
                        "convnext_large's 6144-wide MLPs would need 1.4 G compactor weights)")
    p.add_argument("--source", choices=("torchvision", "timm"), default="torchvision")
    p.add_argument("--int8", action="store_true", help="also FoldBatchNorm + QuantizeINT8 + INT8 export of each "
                                                       "pruned model (recorded, not part of the status)")
    p.add_argument("--min-removed", type=float, default=0.25,
                   help="a row fails when it removes less than this fraction of the parameters (magnitude) or of "
                        "the MACs (resrep)")
    p.add_argument("--size", type=int, default=64, help="input side where the model allows it")
    p.add_argument("--out", default=os.path.join(RESULTS, "zoo_prune"))
    p.add_argument("--shard", default="0/1", help="i/n: run every n-th model starting at i (parallel workers)")
    p.add_argument("--merge", nargs="*", help="merge the JSON files of finished shards into --out and exit")
    p.add_argument("--note", default="", help="a sentence recorded in the results file (how it was run)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (1 when sharing the machine with a benchmark)")
    args = p.parse_args(argv)
    if args.merge:
        by_model = {}
        for path in args.merge:  # later files win: reruns replace earlier rows
            with open(path) as f:
                data = json.load(f)
            commit = data.get("provenance", {}).get("git_commit") if isinstance(data, dict) else None
            for r in (data["rows"] if isinstance(data, dict) else data):
                if commit:   # each row keeps the commit it was run at (the file's provenance is the merge's)
                    r.setdefault("git_commit", commit)
                by_model[r["model"]] = r
        order = ([v["model"] for v in timm_families()["families"].values()] if args.source == "timm"
                 else torchvision.models.list_models(module=torchvision.models))
        rows = sorted(by_model.values(), key=lambda r: order.index(r["model"]) if r["model"] in order else len(order))
        return write(rows, args)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    if args.source == "timm":
        names = args.models or [v["model"] for v in timm_families()["families"].values()]
    else:
        names = args.models or torchvision.models.list_models(module=torchvision.models)
    i, n = (int(v) for v in args.shard.split("/"))
    names = names[i::n]
    rows = []
    partial = args.out + ".partial.json"  # written after every model: a crash (out of memory) loses one row
    if os.path.exists(partial):
        with open(partial) as f:
            rows = json.load(f)
    done = {r["model"] for r in rows}
    with tempfile.TemporaryDirectory() as tmpdir:
        bar = tqdm([n for n in names if n not in done], desc="zoo", unit="model")
        for name in bar:
            bar.set_postfix_str(name)
            rows.append(run_one(name, args, tmpdir))
            if rows[-1]["status"] != "ok":
                tqdm.write(f"{name}: {rows[-1]['reason']}")
            os.makedirs(os.path.dirname(partial), exist_ok=True)
            with open(partial, "w") as f:
                json.dump(rows, f)
    status = write(rows, args)
    os.remove(partial)   # finished: the next run starts afresh instead of resuming from these rows
    return status


def write(rows, args) -> int:
    text = table(rows)
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    payload = {"torch": torch.__version__, "torchvision": torchvision.__version__, "source": args.source,
               "min_removed": args.min_removed, "method": args.method,
               "ratio": args.ratio if args.method == "magnitude" else None,
               "target": args.target if args.method == "resrep" else None,
               "size": args.size, "passed": sum(r["status"] == "ok" for r in rows), "total": len(rows), "rows": rows,
               "provenance": provenance(ort_threads=None)}   # onnxruntime only checks parity here, untimed
    int8 = [r for r in rows if "int8" in r]
    if int8:
        payload.update(int8_run=len(int8), int8_passed=sum(r["int8"] == "ok" for r in int8))
    if args.note:
        payload["note"] = args.note
    with open(args.out + ".json", "w") as f:
        f.write(scrub_paths(json.dumps(payload, indent=1)))
    with open(args.out + ".md", "w") as f:
        f.write(scrub_paths(text) + "\n")
    return 0 if payload["passed"] == payload["total"] else 1


if __name__ == "__main__":
    sys.exit(main())
