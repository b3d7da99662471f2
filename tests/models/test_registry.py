import pytest
import torch

from fxcompress import ModelNotFoundError
from fxcompress.models import get_model, list_models, load_model


@pytest.mark.parametrize("name,params", [("resnet20", 272_474), ("resnet32", 466_906), ("resnet56", 855_770),
                                         ("resnet110", 1_730_714), ("resnet20_half", 68_786)])
def test_cifar_resnets(name, params):
    model = get_model(name)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_list_and_errors(tmp_path):
    assert {"resnet20", "resnet56", "resnet20_half", "small_cnn"} <= set(list_models())
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        get_model("resnet21")
    with pytest.raises(ValueError, match="6n\\+2"):
        from fxcompress.models.cifar_resnet import CifarResNet
        CifarResNet(21)
    (tmp_path / "m.py").write_text("import torch\ndef make():\n    return torch.nn.Linear(2, 2)\ndef bad():\n    return 3\n")
    assert isinstance(load_model(f"{tmp_path}/m.py:make"), torch.nn.Linear)
    with pytest.raises(ModelNotFoundError, match="not an nn.Module"):
        load_model(f"{tmp_path}/m.py:bad")
    with pytest.raises(ModelNotFoundError, match="no callable 'nope'"):
        load_model(f"{tmp_path}/m.py:nope")
    with pytest.raises(ModelNotFoundError, match="name the factory"):
        load_model(f"{tmp_path}/m.py")
