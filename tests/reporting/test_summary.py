"""The run summary's validation: every malformed key is named by its path before anything is written."""
import math

import pytest

from fxcompress.core.errors import FxCompressError
from fxcompress.reporting.summary import ReportError, validate_summary


def test_a_valid_summary_comes_back_normalised(summary):
    del summary["stages"][1]["onnx_bytes"]          # optional: not measured
    summary["stages"][2]["latency_ms"] = None
    summary["widths"] = None                        # nothing pruned
    clean = validate_summary(summary)
    assert clean["stages"][1]["onnx_bytes"] is None and clean["stages"][2]["latency_ms"] is None
    assert clean["stages"][0]["latency_ms"] == {"b1": 0.91, "b32": 11.2} and clean["widths"] is None
    assert clean["curves"]["Distill"][0] == {"epoch": 0, "loss": 0.4, "val_top1": 0.89}
    assert issubclass(ReportError, FxCompressError)


def _set(d, path, value):
    *head, last = path
    for k in head:
        d = d[k]
    if value is KeyError:
        del d[last]
    else:
        d[last] = value


@pytest.mark.parametrize("path, value, named", [
    (("title",), KeyError, "title: missing"),
    (("stages",), [], "stages: expected a non-empty list"),
    (("stages", 1, "macs"), KeyError, "stages[1].macs: missing"),
    (("stages", 0, "params"), 1.5, "stages[0].params: expected a non-negative int"),
    (("stages", 0, "params"), True, "stages[0].params: expected a non-negative int, got bool"),
    (("stages", 2, "precision"), "fp16", "stages[2].precision: expected one of fp32, int8"),
    (("stages", 0, "top1"), 91.6, "stages[0].top1: expected a fraction in [0, 1]"),
    (("stages", 3, "latency_ms"), {"b1": 0.3}, "stages[3].latency_ms.b32: missing"),
    (("stages", 3, "latency_ms", "b1"), math.nan, "stages[3].latency_ms.b1: expected a positive finite number"),
    (("stages", 3, "latency_ms", "b1"), "fast", "stages[3].latency_ms.b1: expected a positive finite number"),
    (("widths", "after"), [1, 2], "widths.after: has 2 entries for 9 layers"),
    (("widths", "layers"), KeyError, "widths.layers: missing"),
    (("curves", "ResRep", 3, "loss"), KeyError, "curves['ResRep'][3].loss: missing"),
    (("curves", "ResRep", 0, "masked_channels"), 1.5, "curves['ResRep'][0].masked_channels: expected an int"),
    (("provenance",), "abc", "provenance: expected a dict"),
])
def test_a_malformed_key_is_named(summary, path, value, named):
    _set(summary, path, value)
    with pytest.raises(ReportError) as e:
        validate_summary(summary)
    assert named in str(e.value)


def test_not_a_dict():
    with pytest.raises(ReportError, match="expected a dict"):
        validate_summary([("title", "x")])
