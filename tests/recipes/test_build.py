import os

import pytest
import torch

from fxcompress.core.errors import CheckpointError, DataError, ModelNotFoundError
from fxcompress.distill import DistillHook
from fxcompress.recipes import RecipeError, load_recipe
from fxcompress.recipes.build import build_data, build_model, build_passes, stage_names

BASE = "model: {name: small_cnn}\ndata: {kind: digits}\n"


def recipe(tmp_path, text, overrides=()):
    (tmp_path / "r.yaml").write_text(text)
    return load_recipe(str(tmp_path / "r.yaml"), overrides)


def test_digits_loaders_and_a_calibration_set_independent_of_training(tmp_path):
    data = build_data(recipe(tmp_path, BASE + "pipeline: [QuantizeINT8]\n", ["data.calib_images=100"]))
    assert data.example[0].shape == (1, 1, 8, 8)
    assert torch.equal(data.example[0], next(iter(data.val))[0][:1])
    assert data.calib.num_samples == 100 and not data.calib.shuffle and data.calib.augment is None
    first = [x for x, _ in data.calib]
    data.train.set_epoch(7)   # where training left the shared loader must not change calibration
    data.calib.set_epoch(7)
    assert all(torch.equal(a, b) for a, b in zip(first, [x for x, _ in data.calib]))
    assert "digits (1348 training / 449 validation images, 1x8x8)" == data.description


def test_loading_errors_keep_their_type_and_gain_the_recipe_location(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"\0junk")
    with pytest.raises(CheckpointError) as e:
        build_model(recipe(tmp_path, BASE.replace("small_cnn}", "small_cnn, checkpoint: bad.pt}")
                           + "pipeline: [FoldBatchNorm]\n"))
    assert str(e.value).startswith(f"{tmp_path / 'r.yaml'} line 1: model.checkpoint: checkpoint ")
    with pytest.raises(ModelNotFoundError) as e:
        build_model(recipe(tmp_path, BASE.replace("small_cnn", "no_such_net") + "pipeline: [FoldBatchNorm]\n"))
    assert "line 1: model.name: unknown model 'no_such_net'" in str(e.value)
    assert build_model(recipe(tmp_path, BASE.replace("small_cnn", "small_cnn, num_classes: 3")
                              + "pipeline: [FoldBatchNorm]\n")).classifier[-1].out_features == 3
    (tmp_path / "imgs" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "imgs" / "val").mkdir()
    with pytest.raises(DataError) as e:
        build_data(recipe(tmp_path, BASE.replace("{kind: digits}", "{kind: image_folder, path: imgs}")
                          + "pipeline: [FoldBatchNorm]\n"))
    assert "line 2: data.path: no images found in" in str(e.value)


def test_passes_get_checkpoints_files_and_teachers(tmp_path):
    r = recipe(tmp_path, BASE + "pipeline:\n  - FineTune: {epochs: 2, distill: kd}\n  - FineTune\n"
                                "  - QuantizeINT8: {method: minmax}\n  - ExportONNX: {path: m.onnx}\n")
    teacher = torch.nn.Linear(2, 2)
    stages = build_passes(r, str(tmp_path / "out"), teacher, progress=False, files_dir=str(tmp_path / "files"))
    assert [s for s, _ in stages] == stage_names(r) == ["FineTune", "FineTune 2", "QuantizeINT8", "ExportONNX"]
    first, second = stages[0][1], stages[1][1]
    assert first.config.checkpoint_dir == os.path.join(tmp_path, "out", "checkpoints", "01_FineTune")
    assert second.config.checkpoint_dir.endswith("02_FineTune_2") and first.config.resume
    assert isinstance(first.hooks[0], DistillHook) and first.hooks[0].teacher is teacher and not second.hooks
    assert stages[2][1].config.method == "minmax" and stages[3][1].path == str(tmp_path / "files" / "m.onnx")


def test_an_option_a_pass_refuses_names_the_pass(tmp_path):
    r = recipe(tmp_path, BASE + "pipeline:\n  - FoldBatchNorm\n  - QuantizeINT8: {num_bins: 1000}\n")
    with pytest.raises(RecipeError) as e:
        build_passes(r, str(tmp_path), torch.nn.Linear(1, 1), progress=False)
    assert f"{tmp_path / 'r.yaml'} line 5: pipeline[1].QuantizeINT8: num_bins must be a power of two" in str(e.value)
