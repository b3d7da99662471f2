"""The timm sweep's model list: one model per architecture family, the smallest of each.

A family is timm's module (the source file that defines it) together with the alphabetic prefix of the model
name: `efficientnet/mixnet` (mixnet_s, mixnet_m, ...), `byobnet/repvgg`, `efficientnet/tf` (the TensorFlow-
ported variants with same-padding convolutions). Each family is represented by its model with the fewest
parameters, counted on the meta device (nothing is allocated, no weights are downloaded). timm's `test_*`
models (tiny smoke-test configurations) are left out, and so are models over `--max-params` (this machine has
2 cores; the excluded ones are listed in the file with their size).

    python benchmarks/timm_families.py            # writes benchmarks/timm_families.json (about 2 minutes)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from collections import defaultdict

import timm
import torch
from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT = os.path.join(HERE, "timm_families.json")


def families() -> dict:
    """{"module/prefix": [model names]} over every model timm registers."""
    found = defaultdict(list)
    for module in timm.list_modules():
        for name in timm.list_models(module=module):
            found[f"{module}/{re.match(r'[a-z]+', name).group(0)}"].append(name)
    return dict(sorted(found.items()))


def smallest(names) -> tuple:
    """(name, parameters, input size) of the family's smallest model that builds."""
    best = None
    for name in names:
        try:
            with torch.device("meta"):
                model = timm.create_model(name)
        except Exception:  # noqa: BLE001 - a variant timm cannot build without extra files is skipped
            continue
        params = sum(p.numel() for p in model.parameters())
        size = list((model.pretrained_cfg or {}).get("input_size", (3, 224, 224)))
        if best is None or params < best[1]:
            best = (name, params, size)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-params", type=float, default=100e6)
    p.add_argument("--out", default=DEFAULT)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    picked, excluded = {}, {}
    for family, names in tqdm(families().items(), desc="families", unit="family"):
        if family.endswith("/test"):
            continue
        best = smallest(names)
        if best is None:
            excluded[family] = "no model of the family builds"
        elif best[1] > args.max_params:
            excluded[family] = f"{best[0]}: {best[1] / 1e6:.0f}M parameters > --max-params"
        else:
            picked[family] = {"model": best[0], "params": best[1], "input_size": best[2]}
    with open(args.out, "w") as f:
        json.dump({"timm": timm.__version__, "max_params": args.max_params, "families": picked,
                   "excluded": excluded}, f, indent=1)
    print(f"{len(picked)} families, {len(excluded)} excluded -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
