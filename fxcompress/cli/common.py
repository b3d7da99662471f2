"""What the command-line tools share: argument parsing helpers and turning typed errors into exit code 2."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Tuple

from ..core.errors import FxCompressError


def parse_shape(text: str) -> Tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: expected comma-separated positive integers, "
                                         f"e.g. 1,3,224,224") from None
    if not shape or any(s <= 0 for s in shape):
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: every dimension must be a positive integer")
    return shape


def guarded(prog: str, main: Callable[..., int], *args) -> int:
    """Run `main(*args)` and return its exit code; a typed fxcompress error (or a missing file) becomes one
    line on stderr and code 2."""
    try:
        code = main(*args)
    except FxCompressError as e:
        print(f"{prog}: error: {type(e).__name__}: {' '.join(str(e).splitlines())}", file=sys.stderr)
        code = 2
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        code = 130
    return code or 0


def run_cli(prog: str, main: Callable[[], int]) -> None:
    """Run `main`; a typed fxcompress error (or a missing file) becomes one line on stderr and exit code 2."""
    sys.exit(guarded(prog, main))
