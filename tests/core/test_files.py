import os
import stat

import pytest

from fxcompress.core.errors import ExportError
from fxcompress.core.files import atomic_output, atomic_write_text, current_umask


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_text_gets_umask_mode_not_mkstemp_0600(tmp_path, umask_022):
    path = tmp_path / "report.json"
    atomic_write_text(str(path), "{}")
    assert path.read_text() == "{}"
    assert _mode(path) == 0o644


def test_atomic_output_honours_a_stricter_umask(tmp_path):
    old = os.umask(0o077)
    try:
        assert current_umask() == 0o077
        with atomic_output(str(tmp_path / "m.bin")) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "m.bin") == 0o600


def test_atomic_output_leaves_nothing_when_the_block_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_output(str(tmp_path / "out.onnx")) as tmp:
            open(tmp, "w").write("partial")
            raise RuntimeError("writer failed")
    assert os.listdir(tmp_path) == []


def test_missing_folder_is_an_export_error_naming_it(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        atomic_write_text(str(tmp_path / "nope" / "r.json"), "")
