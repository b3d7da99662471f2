import pytest
import torch
import torch.nn as nn

from fxcompress import CheckpointError
from fxcompress.train.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint


def test_round_trip_and_wrapped_state_dicts(tmp_path):
    src, dst = nn.Linear(3, 2), nn.Linear(3, 2)
    save_checkpoint({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, str(tmp_path / "c.pt"))
    load_checkpoint(dst, str(tmp_path / "c.pt"))
    assert torch.equal(src.weight, dst.weight)


def test_pickled_code_is_refused(tmp_path):
    torch.save({"model": nn.Linear(2, 2)}, tmp_path / "obj.pt")  # a whole module: needs unpickling code
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_checkpoint(str(tmp_path / "obj.pt"))


def test_mismatch_names_the_keys(tmp_path):
    torch.save({"weight": torch.zeros(5, 3)}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=r"missing \['bias'\].*wrong shape \['weight'\]"):
        load_checkpoint(nn.Linear(3, 2), str(tmp_path / "w.pt"))


def test_truncated_file(tmp_path):
    torch.save(nn.Linear(3, 2).state_dict(), tmp_path / "c.pt")
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint(str(tmp_path / "c.pt"))
