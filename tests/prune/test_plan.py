"""A plan's MACs predicted from the shapes it implies (PlanMacs) equal the MACs of the model the plan
builds, on convs, depthwise and grouped convs, attention (packed MHA, Swin v1/v2 windows) and ConvNeXt."""
import numpy as np
import pytest
import torch
import torchvision

from fxcompress.core.context import PassContext
from fxcompress.graph.macs import count_macs
from fxcompress.graph.shapes import record_shapes
from fxcompress.graph.tracing import trace
from fxcompress.passes import ChannelGroups
from fxcompress.prune.apply import apply_plan
from fxcompress.prune.plan import PlanMacs


def tiny_vit():
    from torchvision.models.vision_transformer import VisionTransformer
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                             num_classes=10)


def tiny_swin(v2: bool):
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2
    extra = dict(block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2) if v2 else {}
    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 1], num_heads=[2, 2], window_size=[4, 4],
                           num_classes=10, **extra)


def tiny_convnext():
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt
    return ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10)


MODELS = {"resnet18": lambda: torchvision.models.resnet18(num_classes=10),
          "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
          "regnet_x_400mf": lambda: torchvision.models.regnet_x_400mf(num_classes=10),
          "vit": tiny_vit, "swin_v1": lambda: tiny_swin(False), "swin_v2": lambda: tiny_swin(True),
          "convnext": tiny_convnext}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_predicted_macs_equal_the_built_models(name):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    ctx = PassContext(gm=trace(MODELS[name]().eval()), example_inputs=(x,))
    ctx.refresh_shapes()
    result = ctx.get(ChannelGroups)
    rng = np.random.default_rng(0)
    plan = {g.id: np.sort(rng.choice(g.size, max(1, g.size // 2), replace=False)) for g in result.prunable()}
    assert plan, "the model has prunable groups"
    predicted = PlanMacs(ctx.gm, result)(plan)
    pruned = apply_plan(ctx.gm, result, plan)
    record_shapes(pruned, (x,))
    assert predicted == count_macs(pruned).macs < count_macs(ctx.gm).macs
