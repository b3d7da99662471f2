import os

import pytest
import yaml

from fxcompress.recipes import RecipeError, load_recipe, recipe_yaml, shipped_recipes
from fxcompress.recipes.load import recipe_path

MINIMAL = "model: {name: small_cnn}\ndata: {kind: digits}\npipeline: [FoldBatchNorm, {Distill: {epochs: 2}}, " \
          "{Distill: {epochs: 3}}, ExportONNX]\n"


@pytest.fixture
def path(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(MINIMAL)
    return str(p)


def test_set_overrides_reach_passes_sections_and_new_keys(path):
    r = load_recipe(path, ["pipeline.Distill.epochs=5", "pipeline.2.lr=1e-3", "data.batch_size=16",
                           "settings.device=cpu", "title=t", "pipeline.Distill.losses=[kd, irg]"])
    distills = [opts for name, opts in r.passes() if name == "Distill"]
    assert distills[0]["epochs"] == 5 and distills[0]["losses"] == ["kd", "irg"]   # the first of that name
    assert distills[1]["epochs"] == 3 and distills[1]["lr"] == 1e-3                # by index
    assert r.data["data"]["batch_size"] == 16 and r.data["title"] == "t"


@pytest.mark.parametrize("override,expect", [
    ("pipeline.Distill.epochs", "--set pipeline.Distill.epochs: write --set key=value"),
    ("pipeline.ResRep.epochs=3", "--set pipeline.ResRep.epochs=3: the pipeline has no ResRep pass; its passes: "
                                 "FoldBatchNorm, Distill, Distill, ExportONNX"),
    ("pipeline.9.epochs=3", "the pipeline has 4 passes (0..3)"),
    ("pipeline.epochs=3", "a pass option is set as pipeline.PASS.option"),
    ("pipeline.Distill.epochz=3", "--set pipeline.Distill.epochz=3: unknown Distill option 'epochz'; did you mean "
                                  "epochs?"),
    ("pipeline.Distill.epochs=many", "--set pipeline.Distill.epochs=many: expected an integer, got str 'many'"),
    ("pipeline.FoldBatchNorm.x=1", "--set pipeline.FoldBatchNorm.x=1: unknown FoldBatchNorm option 'x'"),
    ("data.kind.sub=1", "--set data.kind.sub=1: data.kind is 'digits', not a section"),
    ("modle.name=x", "--set modle.name=x: unknown top-level key 'modle'; did you mean model?"),
])
def test_bad_overrides_name_the_override(path, override, expect):
    with pytest.raises(RecipeError) as e:
        load_recipe(path, [override])
    assert expect in str(e.value), str(e.value)


def test_written_recipe_reloads_to_the_same(path, tmp_path):
    r = load_recipe(path, ["pipeline.Distill.epochs=5"])
    out = tmp_path / "again.yaml"
    out.write_text(recipe_yaml(r))
    assert load_recipe(str(out)).data == r.data
    assert yaml.safe_load(out.read_text())["pipeline"][1] == {"Distill": r.data["pipeline"][1]["Distill"]}


def test_recipe_by_path_or_shipped_name(tmp_path):
    assert recipe_path("digits").endswith(os.path.join("shipped", "digits.yaml"))
    for bad, expect in ((str(tmp_path / "nope.yaml"), "does not exist: give a YAML file or a shipped recipe "
                                                      "(cifar10_resnet20, digits, torchvision_image_folder)"),
                        (str(tmp_path), "is a folder")):
        with pytest.raises(RecipeError) as e:
            load_recipe(bad)
        assert expect in str(e.value)


def test_shipped_recipes_validate(tmp_path, monkeypatch, shared_dir):
    assert shipped_recipes() == ["cifar10_resnet20", "digits", "torchvision_image_folder"]
    assert load_recipe("digits").passes()[0][0] == "ResRep"
    monkeypatch.setenv("FXCOMPRESS_MODELS", os.path.join(shared_dir, "models"))
    cifar = load_recipe("cifar10_resnet20")
    assert [n for n, _ in cifar.passes()] == ["ResRep", "FoldBatchNorm", "QuantizeINT8", "ExportONNX"]
    assert cifar.data["model"]["checkpoint"] == os.path.join(shared_dir, "models", "cifar_resnet20.pt")
    for split in ("train", "val"):
        (tmp_path / "imgs" / split).mkdir(parents=True)
    (tmp_path / "r18.pt").write_bytes(b"")
    monkeypatch.setenv("IMAGE_FOLDER", str(tmp_path / "imgs"))
    folder = load_recipe("torchvision_image_folder", [f"model.checkpoint={tmp_path / 'r18.pt'}"])
    assert folder.data["data"]["path"] == str(tmp_path / "imgs")
    with pytest.raises(RecipeError) as e:   # the checkpoint left to its variable, which is unset
        monkeypatch.delenv("CHECKPOINT", raising=False)
        load_recipe("torchvision_image_folder")
    assert "torchvision_image_folder.yaml line 9: model.checkpoint: environment variable CHECKPOINT is not set" \
        in str(e.value)
