"""Recipe option kinds: what a value must be (type, range, choices), checked with the key's location named.

    Option("number", 0.5, low=0, high=1, low_open=True, high_open=True).check(1.5, "r.yaml line 9: x")
    # RecipeError: r.yaml line 9: x: 1.5 is out of range: give a number in (0, 1)
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from .errors import RecipeError

REQUIRED = object()   # the default of an option the recipe must give

_WHAT = {"int": "an integer", "number": "a number", "bool": "true or false", "str": "a text", "path": "a file path",
         "choice": "one of the choices", "strings": "a list of names", "choices": "a list of choices",
         "ints": "a list of integers", "numbers": "a list of numbers",
         "number_or_numbers": "a number or a list of numbers"}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Option:
    """One option of a recipe section or pass: `kind` (see _WHAT), a default (REQUIRED if it has none), an
    inclusive or open range for numbers, `choices` for choice kinds, `nullable` if null is allowed."""

    def __init__(self, kind: str, default: Any = REQUIRED, *, low: Optional[float] = None,
                 high: Optional[float] = None, low_open: bool = False, high_open: bool = False,
                 choices: Sequence[str] = (), nullable: bool = False, length: Optional[int] = None):
        if kind not in _WHAT:
            raise ValueError(f"unknown option kind {kind!r}")
        self.kind, self.default, self.choices, self.nullable = kind, default, tuple(choices), nullable
        self.low, self.high, self.low_open, self.high_open, self.length = low, high, low_open, high_open, length

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe(self) -> str:
        if self.kind in ("choice", "choices"):
            text = ("one of " if self.kind == "choice" else "a list of ") + ", ".join(map(str, self.choices))
        else:
            text = _WHAT[self.kind]
            if self.low is not None or self.high is not None:
                text += " " + self._range()
        return text + (" or null" if self.nullable else "")

    def _range(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def check(self, value: Any, where: str) -> Any:
        """The value, normalised (ints as floats for numbers, tuples as lists); RecipeError naming `where`."""
        if value is None:
            if self.nullable:
                return None
            raise RecipeError(f"{where}: needs {self.describe()}, got null")
        kind = self.kind
        if kind in ("int", "number"):
            return self._number(value, where)
        if kind == "bool":
            if not isinstance(value, bool):
                raise RecipeError(f"{where}: expected true or false, got {_shown(value)}")
            return value
        if kind in ("str", "path"):
            if not isinstance(value, str) or not value.strip():
                raise RecipeError(f"{where}: expected {_WHAT[kind]}, got {_shown(value)}")
            return value
        if kind == "choice":
            if value not in self.choices:
                raise RecipeError(f"{where}: {_shown(value)} is not one of {', '.join(map(str, self.choices))}")
            return value
        if kind == "number_or_numbers" and _is_number(value):
            return float(value)
        if isinstance(value, str) and kind in ("strings", "choices"):
            value = [value]   # a single name where a list is expected: `losses: kd`
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected {self.describe()}, got {_shown(value)}")
        if self.length is not None and len(value) != self.length:
            raise RecipeError(f"{where}: expected {self.length} values, got {len(value)}: {value}")
        item = {"strings": Option("str"), "choices": Option("choice", choices=self.choices),
                "ints": Option("int", low=self.low, high=self.high, low_open=self.low_open),
                "numbers": Option("number", low=self.low, high=self.high, low_open=self.low_open),
                "number_or_numbers": Option("number", low=self.low, high=self.high, low_open=self.low_open)}[kind]
        return [item.check(v, f"{where}[{i}]") for i, v in enumerate(value)]

    def _number(self, value, where: str):
        if self.kind == "int" and not _is_int(value):
            if _is_number(value) and float(value).is_integer():
                value = int(value)   # `epochs: 10.0`
            else:
                raise RecipeError(f"{where}: expected an integer, got {_shown(value)}")
        if not _is_number(value) or value != value:
            raise RecipeError(f"{where}: expected {self.describe()}, got {_shown(value)}")
        low_bad = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        high_bad = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if low_bad or high_bad:
            raise RecipeError(f"{where}: {value!r} is out of range: give {_WHAT[self.kind]} {self._range()}")
        return value if self.kind == "int" else float(value)


def _shown(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) < 50 else text[:47] + '...'}"
