"""Loading a recipe: a YAML file (or a shipped recipe by name), --set overrides, validation; and writing one.

    recipe = load_recipe("cifar10_resnet20", overrides=["pipeline.ResRep.epochs=2"])
    recipe.data["pipeline"][0]       # {"ResRep": {"target_macs": 0.5, "epochs": 2, ...}}
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Sequence

import yaml

from .errors import RecipeError
from .validate import SET_MARK, Recipe, validate
from .yaml_lines import load_yaml

SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shipped")


def shipped_recipes() -> List[str]:
    """Names of the recipes that come with the package (`python -m fxcompress run NAME`)."""
    return sorted(f[:-5] for f in os.listdir(SHIPPED_DIR) if f.endswith(".yaml"))


def recipe_path(name_or_path: str) -> str:
    """A shipped recipe's file for its name, else the path as given; RecipeError naming it if neither exists."""
    if os.path.isfile(name_or_path):
        return name_or_path
    shipped = os.path.join(SHIPPED_DIR, f"{name_or_path}.yaml")
    if os.sep not in name_or_path and os.path.isfile(shipped):
        return shipped
    if os.path.isdir(name_or_path):
        raise RecipeError(f"recipe {name_or_path} is a folder; give a .yaml file")
    raise RecipeError(f"recipe {name_or_path} does not exist: give a YAML file or a shipped recipe "
                      f"({', '.join(shipped_recipes())})")


def load_recipe(name_or_path: str, overrides: Sequence[str] = ()) -> Recipe:
    path = recipe_path(name_or_path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"recipe {path} cannot be read: {e}") from None
    source = os.path.basename(path) if path.startswith(SHIPPED_DIR) else path
    raw, lines = load_yaml(text, source)
    return recipe_from_data(raw, lines, source, os.path.dirname(os.path.abspath(path)), overrides)


def recipe_from_data(raw: Any, lines: Dict, source: str, base_dir: str, overrides: Sequence[str] = ()) -> Recipe:
    for text in overrides:
        raw = apply_override(raw, lines, text)
    return validate(raw, lines, source, base_dir)


def apply_override(raw: Any, lines: Dict, text: str) -> Any:
    """Apply one `--set key.path=value` (value read as YAML: 3, 0.5, [kd, irg], null); `pipeline.NAME.option`
    sets an option of the first pass of that name, `pipeline.N.option` of the N-th pass."""
    where = f"{SET_MARK}{text}"
    key, sep, value_text = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise RecipeError(f"{where}: write --set key=value, e.g. --set pipeline.ResRep.epochs=5 or "
                          f"--set data.batch_size=64")
    value, _ = load_yaml(value_text, where) if value_text.strip() else (None, {})
    if not isinstance(raw, dict):
        raw = {}
    if parts[0] == "pipeline":
        if len(parts) != 3:
            raise RecipeError(f"{where}: a pass option is set as pipeline.PASS.option or pipeline.INDEX.option")
        path = _pass_path(raw, parts[1], where) + (parts[2],)
    else:
        path = tuple(parts)
    node = raw
    for i, part in enumerate(path[:-1]):
        child = node.get(part) if isinstance(node, dict) else node[part]
        if child is None:
            child = {}
        if not isinstance(child, (dict, list)):
            raise RecipeError(f"{where}: {'.'.join(map(str, path[:i + 1]))} is {child!r}, not a section to set a "
                              f"key in")
        node[part] = child
        node = child
    node[path[-1]] = value
    lines[path] = where
    for n in range(1, len(path)):   # keys the override creates are located at the override too
        lines.setdefault(path[:n], where)
    return raw


def _pass_path(raw: dict, which: str, where: str) -> tuple:
    items = raw.get("pipeline")
    if not isinstance(items, list):
        raise RecipeError(f"{where}: the recipe has no pipeline list to set an option in")
    names = [item if isinstance(item, str) else next(iter(item), None) if isinstance(item, dict) else None
             for item in items]
    if which.isdigit():
        index = int(which)
        if index >= len(items):
            raise RecipeError(f"{where}: the pipeline has {len(items)} passes (0..{len(items) - 1})")
    elif which in names:
        index = names.index(which)
    else:
        raise RecipeError(f"{where}: the pipeline has no {which} pass; its passes: {', '.join(map(str, names))}")
    if isinstance(items[index], str):
        items[index] = {items[index]: None}
    return ("pipeline", index, names[index])


def recipe_yaml(recipe: Recipe) -> str:
    """The validated recipe as YAML (every default written out), runnable as it is."""
    header = "# the recipe as run (defaults filled in); rerun with: python -m fxcompress run recipe.yaml\n"
    return header + yaml.safe_dump(recipe.data, sort_keys=False, default_flow_style=None, width=110)
