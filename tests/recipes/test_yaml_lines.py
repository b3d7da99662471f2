import pytest

from fxcompress.recipes import RecipeError
from fxcompress.recipes.yaml_lines import load_yaml

TEXT = """\
model:
  name: resnet20
pipeline:
  - ResRep: {target_macs: 0.5,
             lasso_strength: 1e-4}
  - FoldBatchNorm
"""


def test_every_key_and_item_has_its_line():
    data, lines = load_yaml(TEXT, "r.yaml")
    assert lines[("model", "name")] == 2
    assert lines[("pipeline",)] == 3
    assert lines[("pipeline", 0, "ResRep", "lasso_strength")] == 5
    assert lines[("pipeline", 1)] == 6
    # YAML 1.1 would read 1e-4 as the string '1e-4'; a recipe's learning rates are written that way
    assert data["pipeline"][0]["ResRep"]["lasso_strength"] == 1e-4
    assert isinstance(data["pipeline"][0]["ResRep"]["lasso_strength"], float)
    assert load_yaml("a: 1e5\nb: -2.5E-3\nc: '1e-4'\nd: 10\n", "x")[0] == {"a": 1e5, "b": -2.5e-3, "c": "1e-4", "d": 10}


@pytest.mark.parametrize("text,expect", [
    ("model:\n  name: [a\n", "r.yaml line 3"),                      # unclosed flow sequence
    ("a: 1\n  b: 2\n", "r.yaml line 2"),                             # bad indentation
    ("model: {name: a}\nmodel: {name: b}\n", "r.yaml line 2: duplicate key 'model' (first at line 1)"),
    ("1: x\n", "r.yaml line 1: key 1 is not a name"),
])
def test_bad_yaml_names_the_line(text, expect):
    with pytest.raises(RecipeError) as e:
        load_yaml(text, "r.yaml")
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_empty_document():
    assert load_yaml("", "r.yaml") == (None, {})
    assert load_yaml("# only a comment\n", "r.yaml")[0] is None
