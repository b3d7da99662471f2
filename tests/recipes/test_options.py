import pytest

from fxcompress.recipes import RecipeError
from fxcompress.recipes.options import Option


@pytest.mark.parametrize("option,value,want", [
    (Option("number", 0.5, low=0, low_open=True), 1, 1.0),
    (Option("int", 1, low=1), 10.0, 10),                      # `epochs: 10.0`
    (Option("strings", []), "layer3", ["layer3"]),            # a single name where a list is expected
    (Option("choices", ["kd"], choices=("kd", "irg")), ["irg", "kd"], ["irg", "kd"]),
    (Option("number_or_numbers", 1.0, low=0), [1, 0.5], [1.0, 0.5]),
    (Option("int", None, nullable=True), None, None),
    (Option("ints", None, low=1, length=2), [224, 224], [224, 224]),
])
def test_accepted_values_are_normalised(option, value, want):
    got = option.check(value, "where")
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("option,value,expect", [
    (Option("number", 0.5, low=0, high=1, low_open=True, high_open=True), 1.0,
     "where: 1.0 is out of range: give a number in (0, 1)"),
    (Option("number", 0.5, low=0, low_open=True), 0, "where: 0 is out of range: give a number > 0"),
    (Option("int", 1, low=1), 2.5, "where: expected an integer, got float 2.5"),
    (Option("int", 1, low=1), True, "where: expected an integer, got bool True"),
    (Option("int", 1, low=1), "ten", "where: expected an integer, got str 'ten'"),
    (Option("bool", True), "yes please", "where: expected true or false, got str 'yes please'"),
    (Option("choice", "kl", choices=("kl", "minmax")), "entropy", "where: str 'entropy' is not one of kl, minmax"),
    (Option("choices", ["kd"], choices=("kd", "irg")), ["kd", "at"], "where[1]: str 'at' is not one of kd, irg"),
    (Option("int", 1), None, "where: needs an integer, got null"),
    (Option("ints", None, low=1, length=2), [1, 2, 3], "where: expected 2 values, got 3"),
    (Option("number", 1.0, low=0), float("nan"), "where: expected a number >= 0, got float nan"),
])
def test_rejected_values_name_the_key_and_what_is_valid(option, value, expect):
    with pytest.raises(RecipeError) as e:
        option.check(value, "where")
    assert expect in str(e.value)


def test_unknown_kind_is_a_programming_error():
    with pytest.raises(ValueError):
        Option("float")
