import dataclasses
import inspect

import pytest

from fxcompress import passes
from fxcompress.recipes.options import REQUIRED
from fxcompress.recipes.schema import PASSES, PRETRAIN, RECIPE_DEFAULTS, RECIPE_ONLY
from fxcompress.train.loop import TrainConfig

# constructor arguments a YAML file cannot hold (modules, callables) or that the runner owns
NOT_IN_RECIPES = {"teacher", "hooks", "loss_fn", "checkpoint_dir", "resume", "progress"}


@pytest.mark.parametrize("name", sorted(PASSES))
def test_pass_options_mirror_the_constructor(name):
    """Every recipe option is a constructor argument with the same default, and every constructor argument a
    recipe can hold is an option: a new pass option fails here until the schema has it."""
    params = {k: p for k, p in inspect.signature(getattr(passes, name).__init__).parameters.items()
              if k != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    options = {k: o for k, o in PASSES[name].items() if k not in RECIPE_ONLY}
    assert set(options) == set(params) - NOT_IN_RECIPES, name
    for key, option in options.items():
        if (name, key) in RECIPE_DEFAULTS:
            continue
        default = params[key].default
        default = list(default) if isinstance(default, tuple) else default
        assert option.default == default, (name, key, option.default, default)
        assert option.check(option.default, key) == option.default if default is not None or option.nullable \
            else True


def test_pretrain_options_are_train_config_fields():
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for key, option in PRETRAIN.items():
        assert key in fields
        if option.default is not REQUIRED:
            assert option.default == fields[key], key


def test_latency_runtimes_are_the_latency_models():
    from fxcompress.latency.runtime import RUNTIMES
    from fxcompress.recipes.schema import LATENCY_RUNTIMES
    assert LATENCY_RUNTIMES == tuple(RUNTIMES)
