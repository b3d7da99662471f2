"""MagnitudePrune: argument checks, ranking, rounding, ignore, MACs target; a CI-sized torchvision subset."""
import pytest
import torch
import torch.nn as nn
import torchvision

import fxcompress
from fxcompress.core.errors import PassError
from fxcompress.passes import ChannelGroups, ExportONNX, MagnitudePrune
from pruning_models import ResidualProjection, cbr, randomize

X = torch.randn(2, 3, 32, 32)


def run(model, *passes, x=X):
    return fxcompress.compile(model, list(passes), x, progress=False)


@pytest.mark.parametrize("kwargs", [{"ratio": -0.1}, {"ratio": 1.0}, {"ratio": "half"}, {"round_to": 0},
                                    {"round_to": 2.5}, {"round_to": True}, {"norm": 0}, {"norm": "l1"},
                                    {"target_macs": 1.5}, {"target_macs": 0}, {"target_macs": "half"},
                                    {"min_channels": 0}, {"min_channels": 2.5}])
def test_bad_arguments_raise_pass_error_naming_the_option(kwargs):
    # PassError, not ValueError: the CLI reports fxcompress's typed errors as one line
    (option, value), = kwargs.items()
    with pytest.raises(PassError, match=rf"MagnitudePrune option {option}=.*invalid: give "):
        MagnitudePrune(**kwargs)


def test_unknown_ignore_name_raises_pass_error():
    with pytest.raises(PassError, match="ignore names unknown module.*no_such_layer.*e.g."):
        run(randomize(ResidualProjection()), MagnitudePrune(0.5, ignore=["no_such_layer"]))


def test_unreachable_target_macs_raises_with_the_reachable_fraction():
    model = randomize(ResidualProjection())
    # the most these options can remove: ratio 0.99, every group down to its floor
    floor = run(model, MagnitudePrune(0.99, round_to=4, min_channels=6)).report.records[0]
    reachable = floor.macs_after / floor.macs_before
    assert reachable > 0.2
    with pytest.raises(PassError, match="target_macs=0.1 cannot be reached") as e:
        run(model, MagnitudePrune(target_macs=0.1, round_to=4, min_channels=6))
    msg = str(e.value)
    assert f"keeps {reachable:.1%} of the MACs" in msg
    assert "channel groups are fixed" in msg and "round_to=4, min_channels=6" in msg
    suggested = float(msg.split("Choose target_macs >= ")[1].split(",")[0])
    assert reachable <= suggested < reachable + 0.002
    # the suggested target really is reachable
    rec = run(model, MagnitudePrune(target_macs=suggested, round_to=4, min_channels=6)).report.records[0]
    assert rec.macs_after <= suggested * rec.macs_before


def test_removes_ratio_per_group_and_keeps_the_classifier_width():
    model = randomize(ResidualProjection())
    out = run(model, MagnitudePrune(0.5)).model
    assert out.get_submodule("a1.0").out_channels == 6 and out.get_submodule("b1.0").out_channels == 8
    assert out.get_submodule("stem.0").out_channels == 4
    assert out.get_submodule("head.fc").out_features == 5


def test_round_to_and_never_empty():
    model = randomize(ResidualProjection())
    out = run(model, MagnitudePrune(0.5, round_to=8)).model
    assert out.get_submodule("a1.0").out_channels == 8       # 12 -> 6 rounded up to 8
    assert out.get_submodule("stem.0").out_channels == 8     # 8 -> 4 rounded up to 8: unchanged



@pytest.mark.parametrize("kwargs, widths", [
    ({}, [1, 1, 1, 1, 1, 1]),                                    # 0.99 of every group goes, one unit stays
    ({"round_to": 4}, [4, 4, 4, 4, 4, 4]),                       # 1 rounded up to 4
    ({"min_channels": 6}, [6, 6, 6, 6, 6, 6]),                   # floor wins over rounding
    ({"round_to": 4, "min_channels": 10}, [8, 10, 8, 10, 10, 10]),  # the 8-wide group cannot reach 10: kept whole
])
def test_extreme_ratio_widths(kwargs, widths):
    # convs in order: stem, a1, a2 (coupled to stem by the add), proj, b1, b2 (coupled to proj)
    out = run(randomize(ResidualProjection()), MagnitudePrune(0.99, **kwargs)).model
    assert [m.out_channels for m in out.modules() if isinstance(m, nn.Conv2d)] == widths
    assert out.get_submodule("head.fc").in_features == widths[-1]
    assert out.get_submodule("head.fc").out_features == 5


def test_ignore_leaves_a_module_whole():
    model = randomize(ResidualProjection())
    out = run(model, MagnitudePrune(0.5, ignore=["a1"])).model
    assert out.get_submodule("a1.0").out_channels == 12 and out.get_submodule("b1.0").out_channels == 8


def test_smallest_channels_go_first_locally_and_globally():
    model = nn.Sequential(cbr(3, 8), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        model[0][0].weight.mul_(torch.tensor([5, .01, 5, .02, 5, .03, 5, .04]).view(8, 1, 1, 1))
    for global_ranking in (False, True):
        out = run(model, MagnitudePrune(0.5, global_ranking=global_ranking)).model
        kept = out.get_submodule("0.0").weight
        assert kept.shape[0] == 4
        assert torch.equal(kept, model[0][0].weight[[0, 2, 4, 6]])


def test_global_ranking_prunes_unevenly():
    model = randomize(ResidualProjection())
    with torch.no_grad():  # make one group's channels very uneven in norm
        model.a1[0].weight.mul_(torch.logspace(-3, 0, 12).view(12, 1, 1, 1))
    out = run(model, MagnitudePrune(0.5, global_ranking=True)).model
    widths = [out.get_submodule(n).out_channels for n in ("a1.0", "b1.0", "stem.0")]
    assert widths != [6, 8, 4] and sum(widths) < 36


def test_target_macs_halves_macs():
    model = randomize(ResidualProjection())
    res = run(model, MagnitudePrune(target_macs=0.5, round_to=2))
    rec = res.report.records[0]
    assert rec.macs_after <= 0.5 * rec.macs_before and rec.macs_after > 0.3 * rec.macs_before
    assert 0 < rec.metrics["ratio"] < 1


def test_target_macs_with_rounding_gives_channels_back_up_to_the_target():
    # 16-wide layers with round_to=8: a uniform ratio can only keep 8 or 16 of each, and the first ratio
    # under the target removes half of every layer (~25% of the MACs left); refining fills up to the target
    model = randomize(nn.Sequential(cbr(3, 16), cbr(16, 16), cbr(16, 16), cbr(16, 16), nn.AdaptiveAvgPool2d(1),
                                    nn.Flatten(), nn.Linear(16, 10)))
    coarse = run(model, MagnitudePrune(target_macs=0.5, round_to=8, refine=False)).report.records[0]
    fine = run(model, MagnitudePrune(target_macs=0.5, round_to=8)).report.records[0]
    assert coarse.macs_after < 0.35 * coarse.macs_before
    assert 0.4 * fine.macs_before < fine.macs_after <= 0.5 * fine.macs_before
    out = run(model, MagnitudePrune(target_macs=0.5, round_to=8)).model
    assert all(m.out_channels % 8 == 0 for m in out.modules() if isinstance(m, nn.Conv2d))


def test_min_channels_keeps_narrow_groups_whole():
    model = randomize(nn.Sequential(cbr(3, 16), cbr(16, 32), cbr(32, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                    nn.Linear(32, 10)))
    out = run(model, MagnitudePrune(0.5, round_to=8, min_channels=16)).model
    assert [m.out_channels for m in out.modules() if isinstance(m, nn.Conv2d)] == [16, 16, 16]
    out = run(model, MagnitudePrune(0.75, round_to=8, min_channels=24)).model
    assert [m.out_channels for m in out.modules() if isinstance(m, nn.Conv2d)] == [16, 24, 24]


def tiny_vit():
    from torchvision.models.vision_transformer import VisionTransformer
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                             num_classes=10)


def tiny_swin():
    from torchvision.models.swin_transformer import SwinTransformer, SwinTransformerBlockV2, PatchMergingV2
    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 1], num_heads=[2, 2], window_size=[4, 4],
                           num_classes=10, block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2)


def tiny_swin_v1():
    from torchvision.models.swin_transformer import SwinTransformer
    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 1], num_heads=[2, 2], window_size=[4, 4],
                           num_classes=10)


def tiny_convnext():
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt
    return ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10)


ZOO = {"resnet18": lambda: torchvision.models.resnet18(num_classes=10),
       "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
       "shufflenet_v2_x0_5": lambda: torchvision.models.shufflenet_v2_x0_5(num_classes=10),
       "regnet_y_400mf": lambda: torchvision.models.regnet_y_400mf(num_classes=10),
       "densenet121": lambda: torchvision.models.densenet121(num_classes=10),
       "efficientnet_b0": lambda: torchvision.models.efficientnet_b0(num_classes=10),
       "vit_tiny": tiny_vit, "swin_v1_tiny": tiny_swin_v1, "swin_v2_tiny": tiny_swin, "convnext_tiny": tiny_convnext}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_torchvision_subset(name, tmp_path):
    torch.manual_seed(0)
    model = ZOO[name]().eval()
    with torch.no_grad():  # zero-initialised heads would make the checks trivial
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    x = torch.randn(1, 3, 32, 32)
    res = run(model, ChannelGroups(), MagnitudePrune(0.5), ExportONNX(str(tmp_path / "m.onnx")), x=x)
    groups, prune, export = res.report.records
    assert groups.metrics["prunable_groups"] > 0
    assert prune.macs_after < 0.8 * prune.macs_before, "pruning removed too little"
    assert prune.metrics["max_rel_error"] < 1e-5 and export.metrics["max_rel_error"] < 1e-4
    y = res.model(x)
    assert y.shape == (1, 10)
    y.sum().backward()
    # the pruned model trains: every parameter gets a finite gradient of its own (pruned) shape
    original = dict(model.named_parameters())
    shrunk = 0
    for n, p in res.model.named_parameters():
        assert p.grad is not None, f"{n} got no gradient"
        assert p.grad.shape == p.shape and torch.isfinite(p.grad).all(), n
        shrunk += n in original and p.shape != original[n].shape and p.numel() < original[n].numel()
    assert shrunk > 0, "no parameter was pruned"


class _LayerNormed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.n, self.b = torch.nn.Conv2d(3, 64, 3), torch.nn.LayerNorm([64, 6, 6]), torch.nn.Conv2d(64, 10, 1)

    def forward(self, x):
        return self.b(self.n(self.a(x))).mean((2, 3))


def test_a_model_that_barely_prunes_says_so_naming_what_blocks_it():
    import warnings
    from fxcompress.passes.magnitude_prune import PruningWarning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fxcompress.compile(_LayerNormed().eval(), [MagnitudePrune(0.5)], torch.randn(1, 3, 8, 8),
                                    progress=False)
    message = result.report.records[0].metrics["warning"]
    assert "0.0% of the parameters removed" in message and "normalised by LayerNorm (n)" in message
    assert any(issubclass(w.category, PruningWarning) for w in caught)
