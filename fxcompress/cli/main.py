"""python -m fxcompress [COMMAND] ...: the command-line entry.

    python -m fxcompress                      the main job: the shipped digits recipe, into fxcompress_out/
    python -m fxcompress run RECIPE ...       a recipe (YAML file or shipped name)
    python -m fxcompress compress ...         the same from flags, no file (writes the recipe it ran)
    python -m fxcompress explain --model M    the channel groups, and why a layer cannot be pruned

`python -m fxcompress [--output DIR] [--set ...] [--resume]` takes `run`'s options for the main job.
"""
from __future__ import annotations

import importlib
import sys

from .common import guarded

COMMANDS = {"run": "run", "compress": "compress", "explain": "explain"}
MAIN_JOB = "digits"
MAIN_JOB_OUTPUT = "fxcompress_out"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        return importlib.import_module(f".{COMMANDS[argv[0]]}", __package__).main(argv[1:])
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv and not argv[0].startswith("-"):
        print(f"usage: python -m fxcompress [{'|'.join(COMMANDS)}] ...\nfxcompress: error: unknown command "
              f"{argv[0]!r}; commands: {', '.join(COMMANDS)} (python -m fxcompress --help)", file=sys.stderr)
        return 2
    from . import run
    output = [] if any(a.split("=")[0] in ("--output", "--out-dir") for a in argv) else ["--output", MAIN_JOB_OUTPUT]
    return run.main([MAIN_JOB, *output, *argv])


def entry() -> None:
    sys.exit(guarded("fxcompress", main))
