import json
import re

import torch

from fxcompress.core.provenance import provenance


def test_provenance_names_code_libraries_and_threads_not_paths():
    info = provenance(ort_threads=2, device="cpu")
    assert re.fullmatch(r"[0-9a-f]{40}", info["git_commit"] or "0" * 40)   # None outside a checkout
    assert info["versions"]["torch"] == torch.__version__ and info["versions"]["onnxruntime"]
    assert info["torch_num_threads"] == torch.get_num_threads() and info["onnxruntime_threads"] == 2
    assert info["device"] == "cpu" and info["cpu_count"] >= 1
    text = json.dumps(info)
    assert "/work" not in text and "site-packages" not in text and "/home" not in text
