"""Running a recipe. Everything that can be checked is checked before the first file is written (recipe,
output folder, data, model and checkpoint, the passes' options, tracing); then the stages run as one
compile, each training stage checkpointing every epoch in OUT/checkpoints/, so that a run killed at any
point and started again with `resume=True` ends with the same weights; then the measurements, the
report (report.json, .md, .html) and the per-stage table.

    outcome = run_recipe(load_recipe("digits"), "out/", resume=False, progress=False)
    outcome.summary["stages"][-1]["top1"], outcome.files
"""
from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import List, Tuple

import torch

from ..core.errors import ExportError, FxCompressError
from ..core.files import atomic_write_text
from ..core.report import Report
from ..recipes import Recipe, RecipeError, load_recipe, recipe_yaml
from ..recipes.build import build_data, build_model, build_passes, checkpoint_dir, located
from ..recipes.schema import TRAINING_PASSES
from .stages import (FloatExport, StageProbe, curve, layer_widths, measure_latency, stage_history, stage_table,
                     widths_before_after)

log = logging.getLogger("fxcompress.run")
RECIPE_FILE = "recipe.yaml"
BASELINE_ONNX, FP32_ONNX = "baseline.onnx", "compressed_fp32.onnx"
WEIGHT_CHANGING = ("ResRep", "MagnitudePrune", "FineTune", "Distill")


def check_output_folder(path: str) -> str:
    """The absolute folder; ExportError naming it if it is a file or cannot be created or written."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ExportError(f"output {path} is a file; give a folder (--output DIR)")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ExportError(f"output {path} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK):
        raise ExportError(f"output folder {existing} is not writable; choose another --output")
    return path


def check_resume(recipe: Recipe, out_dir: str) -> None:
    """--resume continues the run in out_dir only if it ran this same recipe."""
    path = os.path.join(out_dir, RECIPE_FILE)
    if not os.path.isfile(path):
        raise RecipeError(f"--resume: {out_dir} holds no run to resume ({RECIPE_FILE} is missing); run without "
                          f"--resume")
    where = _first_difference(_results_part(load_recipe(path).data), _results_part(recipe.data))
    if where:
        raise RecipeError(f"--resume: {path} ran a different recipe ({where} differs); resume with the same "
                          f"recipe or choose another --output")


def _results_part(data: dict) -> dict:
    """What decides a run's results: the recipe without its title, output folder and latency rounds."""
    out = {k: v for k, v in data.items() if k not in ("title", "output")}
    out["settings"] = {k: v for k, v in data["settings"].items() if k != "latency_runs"}
    return out


def _first_difference(a, b, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            found = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
            if found:
                return found
        return ""
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := _first_difference(x, y, f"{path}[{i}]"))), "")
    return "" if a == b else (path or "(top level)")


def write_run_report(summary: dict, out_dir: str) -> List[str]:
    """report.json, report.md, report.html (fxcompress.reporting)."""
    from ..reporting import write_report
    return list(write_report(summary, out_dir).values())


def _distributed(device: str) -> Tuple[int, int]:
    """(rank, world size); under torchrun the process group is joined now, before any rank reads a checkpoint."""
    from ..train.loop import setup_distributed
    info = setup_distributed(torch.device(device))
    return info.rank, info.world_size


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _pipeline(stages, rows, data, device, files_dir) -> Tuple[list, list]:
    """The passes compile runs, as (on the training device, on the CPU): each pipeline pass followed by its
    probe; the training stages and what comes before them on `device`, the rest (quantization and exports,
    which onnxruntime checks against the model on the CPU) on the CPU. Before QuantizeINT8, the float model
    is written (compressed_fp32.onnx) when an earlier stage changed the weights."""
    from ..passes import ExportONNX, QuantizeINT8
    names = [type(p).__name__ for _, p in stages]
    last_training = max((j for j, name in enumerate(names) if name in TRAINING_PASSES), default=-1)
    on_device, on_cpu = [], []
    for j, (stage, p) in enumerate(stages):
        plan, where = (on_device, device) if j <= last_training else (on_cpu, "cpu")
        if isinstance(p, QuantizeINT8) and set(names[:j]) & set(WEIGHT_CHANGING):
            plan.append((None, FloatExport(os.path.join(files_dir, FP32_ONNX), rows)))
        onnx_file = p.path if isinstance(p, ExportONNX) else None
        plan += [(stage, p), (None, StageProbe(stage, rows, data.val, where, onnx_file))]
    return on_device, on_cpu


@dataclass
class Prepared:
    """A run whose every check passed: what it needs, before anything is written.

        run = prepare(recipe, "out/", resume=False, progress=False)   # raises, naming the culprit, or:
        run.stages                                                     # [("ResRep", ResRep(...)), ...]
    """
    recipe: Recipe
    out_dir: str
    files_dir: str   # where this process writes files: out_dir, or a folder of its own on ranks other than 0
    resume: bool
    progress: bool
    data: object
    model: torch.nn.Module
    stages: list
    rank: int = 0
    world: int = 1


def prepare(recipe: Recipe, out_dir: str, resume: bool, progress: bool) -> Prepared:
    """Every check a run can make before writing: device, output folder, --resume, data, model and
    checkpoint, the passes' options, and a trace of the model on the data's images."""
    from .. import compile
    from ..passes import CountFlops
    settings = recipe.data["settings"]
    device = settings["device"]
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RecipeError(f"{recipe.at(('settings', 'device'))}: {device} is not available here; use cpu")
    if settings["threads"]:
        torch.set_num_threads(settings["threads"])
    out_dir = check_output_folder(out_dir)
    if resume:
        check_resume(recipe, out_dir)
    data = build_data(recipe)
    torch.manual_seed(settings["seed"])   # a model built without a checkpoint starts from the same weights
    model = build_model(recipe).eval()
    rank, world = _distributed(device)
    # only rank 0 writes files; the others write theirs into a folder of their own (checkpoints are rank 0's)
    files_dir = out_dir if rank == 0 else tempfile.mkdtemp(prefix="fxcompress_rank")
    stages = build_passes(recipe, out_dir, teacher=model, progress=progress, files_dir=files_dir)
    try:   # an untraceable model, or one that does not run on the data's images, stops here
        compile(model, [CountFlops()], data.example, leaf_modules=recipe.data["model"]["leaf"], progress=False,
                device=device)
    except FxCompressError as e:
        raise located(recipe, ("model", "name"), e) from e
    return Prepared(recipe, out_dir, files_dir, resume, progress, data, model, stages, rank, world)


def run_recipe(recipe: Recipe, out_dir: str, resume: bool = False, progress: bool = False) -> "RunOutcome":
    """Check, run, measure and report; returns the summary the report is drawn from and the files written.
    Under torchrun every rank runs this; rank 0 writes the files."""
    run = prepare(recipe, out_dir, resume, progress)
    try:
        return _execute(run)
    finally:
        if run.rank != 0:
            shutil.rmtree(run.files_dir, ignore_errors=True)
        if run.world > 1:
            torch.distributed.destroy_process_group()


def _execute(run: Prepared) -> "RunOutcome":
    from .. import compile
    from ..core.provenance import provenance, record_code_state
    from ..train.loop import TrainConfig, fit
    record_code_state()   # the report names the commit the run started from
    recipe, data, model = run.recipe, run.data, run.model
    settings, spec = recipe.data["settings"], recipe.data["model"]
    device, leaf = settings["device"], spec["leaf"]
    recipe_file = os.path.join(run.out_dir, RECIPE_FILE)
    if run.rank == 0:
        os.makedirs(run.out_dir, exist_ok=True)
        if not run.resume:
            shutil.rmtree(os.path.join(run.out_dir, "checkpoints"), ignore_errors=True)
        atomic_write_text(recipe_file, recipe_yaml(recipe))
    _barrier(run.world)
    curves = {}
    if spec["pretrain"]:
        config = TrainConfig(**spec["pretrain"], checkpoint_dir=checkpoint_dir(run.out_dir, 0, "pretrain"),
                             resume=True, progress=run.progress)
        curves["baseline"] = curve(fit(model, data.train, config, val_loader=data.val, device=device,
                                       desc="pretrain"))
        model.eval()
    model.to(device)   # in place: the teacher of `distill` options is this very module
    rows: List[dict] = []
    on_cpu = model if device == "cpu" else copy.deepcopy(model).cpu()
    compile(on_cpu, [StageProbe("baseline", rows, data.val), FloatExport(os.path.join(run.files_dir, BASELINE_ONNX),
                                                                         rows)],
            data.example, progress=False, leaf_modules=leaf)
    plans = _pipeline(run.stages, rows, data, device, run.files_dir)
    records, current = [], model
    for plan, where in zip(plans, (device, "cpu")):
        if not plan:
            continue
        result = compile(current, [p for _, p in plan], data.example, train_loader=data.train, val_loader=data.val,
                         calib_loader=data.calib, device=where, leaf_modules=leaf, progress=run.progress)
        current = result.model.cpu().eval()
        records += zip(plan, result.report.records)
    for (stage, p), record in records:
        history = stage_history(record.metrics, getattr(getattr(p, "config", None), "checkpoint_dir", None)) \
            if stage else None
        if history:
            curves[stage] = curve(history)
    if run.rank != 0:
        return RunOutcome({}, [])
    print(Report(type(model).__name__, [r for (stage, _), r in records if stage]))
    for row in rows:
        row["onnx_bytes"] = os.path.getsize(row["onnx_path"]) if row["onnx_path"] else None
    measure_latency(rows, data.val, settings["latency_runs"])
    summary = {"title": recipe.data["title"] or f"{_model_label(spec['name'])} on {recipe.data['data']['kind']}",
               "recipe": recipe.data, "model": _model_label(spec["name"]), "data": data.description,
               "stages": [{k: v for k, v in r.items() if k not in ("onnx_path", "widths")} for r in rows],
               "widths": widths_before_after(layer_widths(model), rows[1:]), "curves": curves,
               "provenance": provenance(ort_threads=2, device=device, world_size=run.world)}
    print("\n" + stage_table(summary["stages"]))
    onnx_files = sorted({r["onnx_path"] for r in rows if r["onnx_path"]})
    return RunOutcome(summary, onnx_files + write_run_report(summary, run.out_dir) + [recipe_file])


@dataclass
class RunOutcome:
    """What a run produced: `summary` (the report's data) and the files it wrote.

        outcome = run_recipe(recipe, "out/")
        print(outcome.describe())     # wrote out/{baseline.onnx, compressed.onnx, report.json, ...}
    """
    summary: dict
    files: List[str]   # what the run wrote (rank 0), checkpoints aside

    def describe(self) -> str:
        """`wrote FOLDER/{a, b}` (nothing on ranks other than 0, which write no files)."""
        if not self.files:
            return ""
        folders = {os.path.dirname(f) for f in self.files}
        if len(folders) == 1:
            return f"wrote {folders.pop()}/{{{', '.join(os.path.basename(f) for f in self.files)}}}"
        return "wrote " + ", ".join(self.files)


def _model_label(name: str) -> str:
    return os.path.basename(name) if ".py:" in name else name
