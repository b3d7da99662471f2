"""How a command-line run shows progress: per-step bars only on a terminal; one line per epoch and per
stage always (in a log file, the lines are all there is).

    with progress_lines() as bars:    # bars: True on a terminal; epoch and stage lines go to stderr either way
        run_recipe(recipe, out, progress=bars)
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys

from tqdm.auto import tqdm


class _TqdmHandler(logging.Handler):
    """Writes through tqdm so that a line never tears a bar that is being drawn; to `stream`, else to
    whatever sys.stderr is when the line comes."""

    def __init__(self, stream=None):
        super().__init__(logging.INFO)
        self.stream = stream
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream or sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never end a run
            self.handleError(record)


@contextlib.contextmanager
def progress_lines(stream=None):
    """While open, fxcompress's INFO lines (epochs, stages) go to `stream` (stderr); yields whether per-step
    bars should be drawn, i.e. whether `stream` is a terminal. Under torchrun only rank 0 reports. The
    handler is removed on exit: a program (or a test) that calls the CLI in-process keeps its logging."""
    if os.environ.get("RANK", "0") != "0":
        yield False
        return
    logger = logging.getLogger("fxcompress")
    handler, level = _TqdmHandler(stream), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield bool(getattr(stream or sys.stderr, "isatty", lambda: False)())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
