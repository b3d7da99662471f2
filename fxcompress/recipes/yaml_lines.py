"""Reading a recipe's YAML with the line of every key and list item, so that an error can name its line.

    data, lines = load_yaml(text, "recipe.yaml")
    lines[("pipeline", 0, "ResRep", "epochs")]     # 1-based line of that key
"""
from __future__ import annotations

import re
from typing import Any, Dict, Tuple

import yaml

from .errors import RecipeError

Path = Tuple[Any, ...]


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading `1e-4` as a float (YAML 1.2 does; YAML 1.1 wants `1.0e-4` and would
    hand a learning rate over as the string '1e-4')."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                              list("-+0123456789."))


def load_yaml(text: str, source: str) -> Tuple[Any, Dict[Path, int]]:
    """(plain data, {path: line}); RecipeError naming the line on invalid YAML, a duplicate or non-string key."""
    lines: Dict[Path, int] = {}
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else _build(loader, node, (), lines, source)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(e.problem or e.context or "unreadable").split())
        raise RecipeError(f"{source}{where}: not valid YAML: {problem}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{source}: not valid YAML: {' '.join(str(e).split())}") from None
    finally:
        loader.dispose()
    return data, lines


def _build(loader: _Loader, node, path: Path, lines: Dict[Path, int], source: str):
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                raise RecipeError(f"{source} line {line}: key {key!r} is not a name; keys are words like 'model'")
            if key in out:
                raise RecipeError(f"{source} line {line}: duplicate key {key!r} (first at line "
                                  f"{lines[path + (key,)]}); keep one")
            lines[path + (key,)] = line
            out[key] = _build(loader, value_node, path + (key,), lines, source)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, path + (i,), lines, source) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)
