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


def test_cpu_features_tell_an_avx2_only_cpu_from_a_vnni_one(tmp_path, monkeypatch):
    """Both machines of this workplace call themselves "AMD EPYC": the kernel features tell them apart."""
    import builtins

    from fxcompress.core import provenance as prov
    cpuinfo = {"avx2": "cpu family\t: 25\nmodel\t\t: 1\nstepping\t: 1\nflags\t\t: fpu sse4_2 fma avx avx2\n",
               "vnni": "cpu family\t: 25\nmodel\t\t: 17\nstepping\t: 1\nflags\t\t: fma avx2 avx512f avx512bw "
                       "avx512_vnni avx512_bf16\n"}
    real_open, seen = builtins.open, {}
    for name, text in cpuinfo.items():
        (tmp_path / name).write_text(text)
        monkeypatch.setattr(builtins, "open", lambda p, *a, name=name, **k: real_open(
            tmp_path / name if p == "/proc/cpuinfo" else p, *a, **k))
        seen[name] = prov.cpu_features()
    assert seen["avx2"] == "avx2 fma | 25/1/1"
    assert seen["vnni"] == "avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 | 25/17/1"
    monkeypatch.setattr(builtins, "open", real_open)
    assert prov.provenance()["cpu_features"] == prov.cpu_features()


def test_the_commit_is_the_one_the_process_started_with(monkeypatch):
    """A commit landing while a long benchmark runs does not relabel its results; the change is recorded."""
    from fxcompress.core import provenance as prov
    monkeypatch.setattr(prov, "_STARTED_AT", None)
    states = iter([{"git_commit": "a" * 40, "git_dirty": False}, {"git_commit": "b" * 40, "git_dirty": False}])
    monkeypatch.setattr(prov, "code_state", lambda: next(states))
    assert prov.record_code_state()["git_commit"] == "a" * 40    # at start
    info = prov.provenance()                                      # at write: the checkout moved on
    assert info["git_commit"] == "a" * 40 and info["git_dirty"] is False
    assert info["checkout_at_write"] == {"git_commit": "b" * 40, "git_dirty": False}
