"""Checking a recipe against the schema before anything runs: every error names the file, line and key.

    recipe = validate(raw, lines, "r.yaml", base_dir="/runs")   # a Recipe: .data (defaults filled), .at(path)
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

from .errors import RecipeError
from .options import Option
from .schema import AFTER_QUANTIZE, PASSES, SECTIONS, SUBSECTIONS, TOP_LEVEL

Path = Tuple[Any, ...]
SET_MARK = "--set "   # a location that is a command-line override, not a line of the file


def dotted(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass
class Recipe:
    """A validated recipe: `data` is plain JSON-able data with every default filled in; `at(path)` names
    where a key came from ("r.yaml line 12: pipeline[0].ResRep.epochs" or "--set ...").

        recipe = load_recipe("digits")
        recipe.passes()[0]                                  # ("ResRep", {"target_macs": 0.5, ...})
        recipe.at(("pipeline", 0, "ResRep", "epochs"))      # "digits.yaml line 13: pipeline[0].ResRep.epochs"
    """
    data: Dict[str, Any]
    source: str
    lines: Dict[Path, Any] = field(default_factory=dict)

    def at(self, path: Path) -> str:
        for n in range(len(path), -1, -1):
            where = self.lines.get(tuple(path[:n]))
            if isinstance(where, str):
                return where
            if where is not None:
                return f"{self.source} line {where}: {dotted(path) or '(top level)'}"
        return f"{self.source}: {dotted(path) or '(top level)'}"

    def passes(self) -> List[Tuple[str, dict]]:
        return [next(iter(item.items())) for item in self.data["pipeline"]]


def _unknown(what: str, key: Any, valid) -> str:
    close = difflib.get_close_matches(str(key), [str(v) for v in valid], n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"unknown {what} {key!r}{hint} valid: {', '.join(map(str, valid)) or '(none)'}"


def _mapping(recipe: Recipe, value, path: Path, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecipeError(f"{recipe.at(path)}: expected a mapping of {what}, got {type(value).__name__} {value!r:.40}")
    return value


def _options(recipe: Recipe, given, schema: Dict[str, Option], path: Path, what: str, subsections=()) -> dict:
    given = _mapping(recipe, given, path, what)
    for key in given:
        if key not in schema and key not in subsections:
            raise RecipeError(f"{recipe.at(path + (key,))}: {_unknown(what, key, [*schema, *subsections])}")
    out = {}
    for key, option in schema.items():
        if key in given:
            out[key] = option.check(given[key], recipe.at(path + (key,)))
        elif option.required:
            raise RecipeError(f"{recipe.at(path)}: missing {key!r} ({option.describe()})")
        else:
            out[key] = list(option.default) if isinstance(option.default, list) else option.default
    return out


def validate(raw: Any, lines: Dict[Path, Any], source: str, base_dir: str) -> Recipe:
    """Check `raw` (as read by load_yaml, with --set overrides applied) and return the Recipe; relative paths
    are resolved against `base_dir` (the recipe file's folder), those given with --set against the cwd."""
    recipe = Recipe({}, source, lines)
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe is a mapping with model, data and pipeline keys; got "
                          f"{'an empty file' if raw is None else type(raw).__name__}")
    for key in raw:
        if key not in TOP_LEVEL:
            raise RecipeError(f"{recipe.at((key,))}: {_unknown('top-level key', key, TOP_LEVEL)}")
    for key in ("model", "data", "pipeline"):
        if key not in raw:
            raise RecipeError(f"{source}: missing the {key!r} section (a recipe needs model, data and pipeline)")
    data = recipe.data
    for key in ("title", "output"):
        data[key] = TOP_LEVEL[key].check(raw.get(key), recipe.at((key,)))
    for name, schema in SECTIONS.items():
        section = _mapping(recipe, raw.get(name), (name,), f"{name} options")
        subs = [sub for (sec, sub) in SUBSECTIONS if sec == name]
        data[name] = _options(recipe, section, schema, (name,), f"{name} option", subs)
        for sub in subs:
            given = section.get(sub)
            data[name][sub] = None if given is None else _options(recipe, given, SUBSECTIONS[(name, sub)],
                                                                  (name, sub), f"{name}.{sub} option")
    data["pipeline"] = _pipeline(recipe, raw["pipeline"])
    _resolve_paths(recipe, base_dir)
    _cross_checks(recipe)
    return recipe


def _pipeline(recipe: Recipe, raw) -> List[dict]:
    if not isinstance(raw, list) or not raw:
        raise RecipeError(f"{recipe.at(('pipeline',))}: expected a non-empty list of passes, e.g. "
                          f"[ResRep: {{target_macs: 0.5}}, FoldBatchNorm, QuantizeINT8, ExportONNX]")
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            name, options = item, None
        elif isinstance(item, dict) and len(item) == 1:
            name, options = next(iter(item.items()))
        else:
            raise RecipeError(f"{recipe.at(('pipeline', i))}: a pass is written `Name` or `Name: {{option: value}}`,"
                              f" got {item!r:.60}")
        if name not in PASSES:
            raise RecipeError(f"{recipe.at(('pipeline', i))}: {_unknown('pass', name, PASSES)}")
        out.append({name: _options(recipe, options, PASSES[name], ("pipeline", i, name), f"{name} option")})
    return out


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def resolve_path(recipe: Recipe, value: str, path: Path, base_dir: str, must_exist: bool, what: str) -> str:
    """`value` with ${VARS} expanded and made absolute; RecipeError naming the key if a variable is unset or
    (with must_exist) nothing is there."""
    def expand(m):
        name = m.group(1) or m.group(2)
        if name not in os.environ:
            raise RecipeError(f"{recipe.at(path)}: environment variable {name} is not set (in {value!r}); set it "
                              f"or write the path out")
        return os.environ[name]
    expanded = os.path.expanduser(_ENV.sub(expand, value))
    from_set = str(recipe.lines.get(path, "")).startswith(SET_MARK)
    full = os.path.normpath(os.path.join(os.getcwd() if from_set else base_dir, expanded))
    if must_exist and not os.path.exists(full):
        raise RecipeError(f"{recipe.at(path)}: {what} {full} does not exist")
    return full


def _resolve_paths(recipe: Recipe, base_dir: str) -> None:
    model, data = recipe.data["model"], recipe.data["data"]
    name = model["name"]
    if name.endswith(".py") or ".py:" in name:
        file, sep, factory = name.rpartition(":") if ".py:" in name else (name, "", "")
        if not factory:
            raise RecipeError(f"{recipe.at(('model', 'name'))}: {name!r}: name the factory too, as file.py:factory")
        model["name"] = resolve_path(recipe, file, ("model", "name"), base_dir, True, "model file") + sep + factory
    if model["checkpoint"]:
        model["checkpoint"] = resolve_path(recipe, model["checkpoint"], ("model", "checkpoint"), base_dir, True,
                                           "checkpoint")
    if data["path"]:
        data["path"] = resolve_path(recipe, data["path"], ("data", "path"), base_dir, True, "data path")
    if recipe.data["output"]:
        recipe.data["output"] = resolve_path(recipe, recipe.data["output"], ("output",), base_dir, False, "")


def _cross_checks(recipe: Recipe) -> None:
    data = recipe.data["data"]
    if data["kind"] == "image_folder":
        if not data["path"]:
            raise RecipeError(f"{recipe.at(('data', 'kind'))}: image_folder needs data.path: a folder or .tar "
                              f"archive holding {data['train_split']}/<class>/<image> and {data['val_split']}/...")
        for key in ("train_split", "val_split"):
            split = os.path.join(data["path"], data[key])
            if os.path.isdir(data["path"]) and not os.path.isdir(split):
                raise RecipeError(f"{recipe.at(('data', key))}: the image folder has no {data[key]!r} subfolder "
                                  f"({split} does not exist)")
    elif data["kind"] == "digits" and data["path"]:
        raise RecipeError(f"{recipe.at(('data', 'path'))}: digits is bundled with scikit-learn and reads no path; "
                          f"remove data.path")
    if (data["mean"] is None) != (data["std"] is None) or (data["mean"] and len(data["mean"]) != len(data["std"])):
        raise RecipeError(f"{recipe.at(('data', 'std' if data['std'] is not None else 'mean'))}: give data.mean and "
                          f"data.std together, one value per input channel")
    device = recipe.data["settings"]["device"]
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise RecipeError(f"{recipe.at(('settings', 'device'))}: {device!r} is not a device: give cpu, cuda or cuda:N")
    quantized_at, paths = None, {}
    for i, (name, opts) in enumerate(recipe.passes()):
        where = recipe.at(("pipeline", i, name))
        if quantized_at is not None and name not in AFTER_QUANTIZE:
            raise RecipeError(f"{where}: {name} cannot follow QuantizeINT8 (pipeline[{quantized_at}]): the graph "
                              f"then carries fake-quant modules; only {', '.join(AFTER_QUANTIZE)} may follow it "
                              f"(QuantizeINT8's qat_epochs trains the quantized model)")
        if name == "QuantizeINT8":
            quantized_at = i
        if name == "ExportONNX":
            if opts["path"] in paths:
                raise RecipeError(f"{recipe.at(('pipeline', i, name, 'path'))}: {opts['path']!r} is already written "
                                  f"by pipeline[{paths[opts['path']]}]; give each ExportONNX its own path")
            paths[opts["path"]] = i
        if name == "Distill":
            _check_distill(recipe, i, opts)


def _check_distill(recipe: Recipe, i: int, opts: dict) -> None:
    path = ("pipeline", i, "Distill")
    if "vid" in opts["losses"] and not opts["student_nodes"]:
        raise RecipeError(f"{recipe.at(path + ('losses',))}: the vid loss needs student_nodes (the layers to "
                          f"match, e.g. [layer3]); add student_nodes")
    if opts["teacher_nodes"] is not None and len(opts["teacher_nodes"]) != len(opts["student_nodes"]):
        raise RecipeError(f"{recipe.at(path + ('teacher_nodes',))}: {len(opts['teacher_nodes'])} teacher nodes for "
                          f"{len(opts['student_nodes'])} student nodes; they are paired in order")
    if isinstance(opts["weights"], list) and len(opts["weights"]) != len(opts["losses"]):
        raise RecipeError(f"{recipe.at(path + ('weights',))}: {len(opts['weights'])} weights for "
                          f"{len(opts['losses'])} losses; give one per loss or a single number")
