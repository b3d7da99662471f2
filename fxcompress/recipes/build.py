"""From a validated recipe to the objects a run needs: the model, the data loaders and the passes. Errors
from loading (a missing checkpoint, an empty image folder, a pass refusing its options) keep their type and
gain the recipe location they come from.

    model = build_model(recipe)
    data = build_data(recipe)                       # RunData: train, val, calib loaders and an example input
    stages = build_passes(recipe, "out/", teacher=model, progress=False)   # [(stage name, pass), ...]
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch
import torch.nn as nn

from ..core.errors import FxCompressError
from .errors import RecipeError
from .schema import RECIPE_ONLY, TRAINING_PASSES
from .validate import Recipe

CALIB_BATCH = 64


def located(recipe: Recipe, path: tuple, error: FxCompressError) -> FxCompressError:
    """The same error type, its message prefixed with where in the recipe the culprit was named."""
    located = type(error).__new__(type(error))
    located.args = (f"{recipe.at(path)}: {error}",)
    return located


def build_model(recipe: Recipe) -> nn.Module:
    from ..models import load_model
    spec = recipe.data["model"]
    try:
        kwargs = {"num_classes": spec["num_classes"]} if spec["num_classes"] else {}
        return load_model(spec["name"], spec["checkpoint"], **kwargs)
    except FxCompressError as e:
        raise located(recipe, ("model", "checkpoint" if spec["checkpoint"] and "checkpoint" in str(e) else "name"),
                       e) from e


@dataclass
class RunData:
    train: Any
    val: Any
    calib: Any
    example: Tuple[torch.Tensor, ...]
    description: str


def _plain(loader, limit, seed: int, batch_size: int):
    """A copy of `loader` over at most `limit` samples (a fixed random choice), in a fixed order, without
    augmentation: calibration must not depend on where a shuffled loader's epoch was left."""
    out = loader.subset(limit, seed) if limit and limit < loader.num_samples else loader.subset(loader.num_samples, 0)
    out.shuffle, out.augment, out.batch_size, out.epoch = False, None, batch_size, 0
    return out


def build_data(recipe: Recipe) -> RunData:
    from ..data import cifar10, digits, image_folder, random_crop_flip
    d, seed = recipe.data["data"], recipe.data["settings"]["seed"]
    norm = {"mean": tuple(d["mean"]), "std": tuple(d["std"])} if d["mean"] is not None else {}
    try:
        if d["kind"] == "digits":
            train = digits("train", batch_size=d["batch_size"] or 64, seed=seed)
            val = digits("test", batch_size=d["eval_batch_size"], shuffle=False)
        elif d["kind"] == "cifar10":
            augment = True if d["augment"] is None else d["augment"]
            train = cifar10(d["path"], "train", d["batch_size"] or 128, augment=augment, seed=seed, **norm)
            val = cifar10(d["path"], "test", d["eval_batch_size"], shuffle=False, **norm)
        else:
            size = tuple(d["image_size"]) if d["image_size"] else None
            augment = random_crop_flip(4) if d["augment"] else None
            train = image_folder(d["path"], d["batch_size"] or 64, size, shuffle=True, augment=augment,
                                 split=d["train_split"], seed=seed, **norm)
            val = image_folder(d["path"], d["eval_batch_size"], size, split=d["val_split"], **norm)
    except FxCompressError as e:
        raise located(recipe, ("data", "path" if d["path"] else "kind"), e) from e
    if d["train_limit"]:
        train = train.subset(d["train_limit"], seed)
    if d["val_limit"]:
        val = _plain(val, d["val_limit"], seed, d["eval_batch_size"])
    calib = _plain(train, d["calib_images"], seed, CALIB_BATCH)
    example = (next(iter(val))[0][:1],)
    shape = "x".join(map(str, example[0].shape[1:]))
    where = f" {d['path']}" if d["path"] else ""
    text = f"{d['kind']}{where} ({train.num_samples} training / {val.num_samples} validation images, {shape})"
    return RunData(train, val, calib, example, text)


def stage_names(recipe: Recipe) -> List[str]:
    """One name per pass: the pass name, numbered from its second occurrence (FineTune, FineTune 2)."""
    seen, names = {}, []
    for name, _ in recipe.passes():
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name} {seen[name]}")
    return names


def checkpoint_dir(out_dir: str, index: int, stage: str) -> str:
    return os.path.join(out_dir, "checkpoints", f"{index:02d}_{stage.replace(' ', '_')}")


def build_passes(recipe: Recipe, out_dir: str, teacher: nn.Module, progress: bool,
                 files_dir: Optional[str] = None) -> List[Tuple[str, Any]]:
    """[(stage name, pass instance)] in pipeline order. Training passes checkpoint every epoch in
    out_dir/checkpoints/NN_Stage and resume from there; ONNX files go to `files_dir` (default out_dir);
    `teacher` is what `distill` options distil from."""
    from .. import passes as P
    from ..distill import DistillHook, IRGLoss, KDLoss
    out = []
    for i, ((name, opts), stage) in enumerate(zip(recipe.passes(), stage_names(recipe)), start=1):
        kwargs = {k: v for k, v in opts.items() if k not in RECIPE_ONLY}
        if name in TRAINING_PASSES:
            kwargs.update(checkpoint_dir=checkpoint_dir(out_dir, i, stage), resume=True)
        if opts.get("distill"):
            losses = [KDLoss(opts["distill_temperature"]) if loss == "kd" else IRGLoss() for loss in opts["distill"]]
            kwargs["hooks"] = [DistillHook(teacher, losses)]
        if "ignore" in kwargs:
            kwargs["ignore"] = tuple(kwargs["ignore"])
        if name == "ExportONNX":
            kwargs["path"] = os.path.join(files_dir or out_dir, opts["path"])
        if name == "QuantizeINT8":
            kwargs["progress"] = progress
        try:
            out.append((stage, getattr(P, name)(**kwargs)))
        except FxCompressError as e:
            raise RecipeError(f"{recipe.at(('pipeline', i - 1, name))}: {e}") from e
    return out
