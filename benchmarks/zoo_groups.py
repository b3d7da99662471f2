"""Channel groups of every torchvision classification model (random weights), fingerprinted: a SHA-256 of
every group's size, prunability, reasons, per-unit MACs and parameters, and members (tensor, dim,
positions, units, role). Refactors must leave them identical.

    python benchmarks/zoo_groups.py [--models resnet18 ...] [--compare benchmarks/results/zoo_groups.json]

Writes benchmarks/results/zoo_groups.json ({model: hash}); with --compare, lists the models whose groups
differ from that file's (keep its "hashes" from the code you compare against).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import warnings

import torch
import torchvision
from tqdm import tqdm

import fxcompress
from fxcompress.core.files import atomic_write_text
from fxcompress.passes import ChannelGroups

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from provenance import provenance  # noqa: E402
from zoo_prune import build  # noqa: E402  (the sweep's models and input sizes)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def fingerprint(result) -> str:
    groups = []
    for g in result.groups:
        members = sorted((str(m.key), m.dim, m.positions.tolist(), m.units.tolist(), str(m.role)) for m in g.members)
        groups.append({"size": int(g.size), "prunable": bool(g.prunable), "reasons": list(g.reasons),
                       "macs": round(float(g.macs_per_unit), 3), "params": round(float(g.params_per_unit), 3),
                       "members": members})
    return hashlib.sha256(json.dumps(groups, sort_keys=True).encode()).hexdigest()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=None)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--compare", help="a previous zoo_groups.json")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    names = args.models or torchvision.models.list_models(module=torchvision.models)
    hashes = {}
    for name in tqdm(names, desc="zoo groups"):
        torch.manual_seed(0)
        model, x = build(name, args.size)
        ctx = fxcompress.PassContext(gm=fxcompress.trace(model), example_inputs=(x,))
        ctx.refresh_shapes()
        hashes[name] = fingerprint(ctx.get(ChannelGroups))
    out = {"provenance": provenance(), "size": args.size, "hashes": hashes}
    if args.compare:
        with open(args.compare) as f:
            old = json.load(f)["hashes"]
        differ = sorted(n for n in hashes if n in old and old[n] != hashes[n])
        out["compared_with"] = {"file": os.path.basename(args.compare), "models": len(set(old) & set(hashes)),
                                "differ": differ}
        print(f"{len(set(old) & set(hashes))} models compared, groups differ on {len(differ)}: {differ}")
    atomic_write_text(os.path.join(RESULTS, "zoo_groups.json"), json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
