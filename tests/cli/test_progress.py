import io
import logging

import torch

from fxcompress.cli.progress import progress_lines
from fxcompress.data import digits
from fxcompress.models import get_model
from fxcompress.train.loop import TrainConfig, fit


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_one_line_per_epoch_and_bars_only_on_a_terminal():
    log = io.StringIO()
    with progress_lines(Terminal()) as bars:
        assert bars is True
    with progress_lines(log) as bars:
        assert bars is False
        fit(get_model("small_cnn"), digits("train"), TrainConfig(epochs=2, lr=0.05, progress=False,
                                                                 max_steps_per_epoch=2), desc="pretrain")
    lines = log.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["pretrain epoch 1/2", "pretrain epoch 2/2"]
    assert "loss" in lines[0] and torch.get_num_threads() >= 1


def test_the_lines_stop_when_the_run_ends():
    # the CLI called in-process (tests, notebooks) must not leave its handler on fxcompress's logger
    logger = logging.getLogger("fxcompress")
    handlers, level = list(logger.handlers), logger.level
    log = io.StringIO()
    with progress_lines(log):
        pass
    fit(get_model("small_cnn"), digits("train"), TrainConfig(epochs=1, lr=0.05, progress=False,
                                                             max_steps_per_epoch=1), desc="after")
    assert log.getvalue() == "" and logger.handlers == handlers and logger.level == level
