import os

import pytest

from fxcompress.recipes import RecipeError, load_recipe

MINIMAL = "model: {name: small_cnn}\ndata: {kind: digits}\npipeline: [FoldBatchNorm, ExportONNX]\n"


def recipe(tmp_path, text, name="r.yaml", overrides=()):
    path = tmp_path / name
    path.write_text(text)
    return load_recipe(str(path), overrides)


def error(tmp_path, text, overrides=()):
    with pytest.raises(RecipeError) as e:
        recipe(tmp_path, text, overrides=overrides)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_defaults_are_filled_and_pass_forms_normalised(tmp_path):
    r = recipe(tmp_path, MINIMAL + "settings: {seed: 3}\n")
    assert r.data["settings"] == {"device": "cpu", "seed": 3, "threads": None, "latency_runs": 30}
    assert r.data["model"]["pretrain"] is None and r.data["data"]["calib_images"] == 512
    assert r.passes() == [("FoldBatchNorm", {}), ("ExportONNX", {"path": "compressed.onnx", "opset": None,
                                                                   "dynamic_batch": True, "verify": True})]
    assert r.at(("pipeline", 1, "ExportONNX", "path")) == f"{tmp_path / 'r.yaml'} line 3: pipeline[1].ExportONNX.path"


def test_unknown_names_suggest_the_closest_and_list_the_valid(tmp_path):
    msg = error(tmp_path, MINIMAL.replace("[FoldBatchNorm", "[FoldBatchNorms"))
    assert "line 3: pipeline[0]: unknown pass 'FoldBatchNorms'; did you mean FoldBatchNorm? valid: CountFlops," in msg
    msg = error(tmp_path, MINIMAL.replace("{kind: digits}", "{kind: digits, batchsize: 8}"))
    assert "line 2: data.batchsize: unknown data option 'batchsize'; did you mean batch_size?" in msg
    assert "eval_batch_size" in msg


def test_paths_are_relative_to_the_recipe_and_expand_variables(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.pt").write_bytes(b"x")
    monkeypatch.setenv("FXC_TEST_DIR", str(tmp_path / "sub"))
    r = recipe(tmp_path, MINIMAL.replace("small_cnn}", "small_cnn, checkpoint: sub/w.pt}"))
    assert r.data["model"]["checkpoint"] == str(tmp_path / "sub" / "w.pt")
    r = recipe(tmp_path, MINIMAL.replace("small_cnn}", "small_cnn, checkpoint: \"${FXC_TEST_DIR}/w.pt\"}"))
    assert r.data["model"]["checkpoint"] == str(tmp_path / "sub" / "w.pt")
    monkeypatch.delenv("FXC_TEST_DIR")
    msg = error(tmp_path, MINIMAL.replace("small_cnn}", "small_cnn, checkpoint: \"${FXC_TEST_DIR}/w.pt\"}"))
    assert "line 1: model.checkpoint: environment variable FXC_TEST_DIR is not set" in msg
    # a path given with --set is relative to where the command runs
    monkeypatch.chdir(tmp_path / "sub")
    r = recipe(tmp_path, MINIMAL, overrides=["model.checkpoint=w.pt"])
    assert r.data["model"]["checkpoint"] == str(tmp_path / "sub" / "w.pt")


def test_pipeline_order_and_distill_pairs_are_checked(tmp_path):
    msg = error(tmp_path, MINIMAL.replace("[FoldBatchNorm, ExportONNX]", "[QuantizeINT8, FineTune, ExportONNX]"))
    assert "pipeline[1].FineTune: FineTune cannot follow QuantizeINT8 (pipeline[0])" in msg
    msg = error(tmp_path, MINIMAL.replace("[FoldBatchNorm, ExportONNX]", "[ExportONNX, ExportONNX]"))
    assert "pipeline[1].ExportONNX.path" in msg and "already written by pipeline[0]" in msg
    msg = error(tmp_path, MINIMAL.replace("[FoldBatchNorm", "[{Distill: {losses: [kd, irg], weights: [1]}}"))
    assert "pipeline[0].Distill.weights: 1 weights for 2 losses" in msg
    msg = error(tmp_path, MINIMAL.replace("[FoldBatchNorm", "[{Distill: {student_nodes: [a], teacher_nodes: []}}"))
    assert "pipeline[0].Distill.teacher_nodes: 0 teacher nodes for 1 student nodes" in msg


def test_data_checks(tmp_path):
    (tmp_path / "imgs" / "train").mkdir(parents=True)
    msg = error(tmp_path, MINIMAL.replace("{kind: digits}", "{kind: image_folder, path: imgs}"))
    assert f"line 2: data.val_split: the image folder has no 'val' subfolder ({tmp_path / 'imgs' / 'val'}" in msg
    msg = error(tmp_path, MINIMAL.replace("{kind: digits}", "{kind: digits, path: imgs}"))
    assert "data.path: digits is bundled with scikit-learn and reads no path" in msg
    msg = error(tmp_path, MINIMAL.replace("{kind: digits}", "{kind: digits, mean: [0.5], std: [0.2, 0.3]}"))
    assert "data.std: give data.mean and data.std together, one value per input channel" in msg
    msg = error(tmp_path, MINIMAL + "settings: {device: gpu}\n")
    assert "line 4: settings.device: 'gpu' is not a device" in msg
    assert os.listdir(tmp_path / "imgs") == ["train"]
