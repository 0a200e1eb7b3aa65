"""Parameter counts: METHOD.md's worked numbers from shapes alone, and agreement with the real module."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

from superlora import ConfigError, count_parameters, get_superlora_model, preset
from superlora.config import PRESETS, SuperLoRAConfig

from toy_models import TwoLayerMLP, tiny_vit


@pytest.fixture(scope="module")
def vit_base_meta():
    with torch.device("meta"):
        return timm.create_model("vit_base_patch16_224")


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (preset("lora", rank=1), 36_864),
        (preset("superlora-2d", rank=1), 7_526),
        (preset("lorta", rank=4, order=3), 2_968),
        (preset("lorta", rank=1, order=5), 136),
    ],
)
def test_vit_b16_q_v_worked_numbers(vit_base_meta, config, expected):
    count = count_parameters(vit_base_meta, config)
    assert count.update_size == 14_155_776
    assert len(count.targets) == 24
    assert count.adapter == expected
    assert count.trainable_module_parameters == 768 * 1000 + 1000
    assert next(vit_base_meta.parameters()).is_meta


def test_vit_b16_worked_numbers_equal_real_trainable_numel():
    model = timm.create_model("vit_base_patch16_224")
    for config, expected in [(preset("lora", rank=1), 36_864), (preset("superlora-2d", rank=1), 7_526),
                             (preset("lorta", rank=4, order=3), 2_968), (preset("lorta", rank=1, order=5), 136)]:
        wrapped = get_superlora_model(model, config, trainable=())
        assert sum(p.numel() for p in wrapped.parameters() if p.requires_grad) == expected
        model = wrapped.unload()


class DiffusionLikeTargets(nn.Module):
    """Twelve 184x256 projections: D = 565,248 entries, the size of the paper's diffusion-model figures."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(256, 184, bias=False) for _ in range(12))


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (preset("lorta", order=3, groups=12, rank=5), 8_160),
        (preset("lorta", order=5, groups=1, rank=1, ratio=0.01, projection="fastfood"), 31),
        (preset("lorta", order=3, groups=4, rank=4, ratio=0.01, projection="fastfood"), 832),
        (preset("superlora-2d", groups=4, rank=4, ratio=0.5, projection="fastfood"), 8_512),
    ],
)
def test_published_d565248_figures(config, expected):
    with torch.device("meta"):
        model = DiffusionLikeTargets()
    count = count_parameters(model, config.replace(targets=("layers",)), trainable=())
    assert count.update_size == 565_248
    assert count.adapter == expected
    wrapped = get_superlora_model(DiffusionLikeTargets(), config.replace(targets=("layers",)), trainable=())
    assert sum(p.numel() for p in wrapped.parameters() if p.requires_grad) == expected


def _configs_for_real_count():
    yield from (preset(name, rank=2) for name in PRESETS)
    yield preset("lorta", order=4, groups=3, rank=(1, 2, 2, 3), ratio=0.3, projection="fastfood", shuffle=True)
    yield preset("superlora-2d", grouping="layer", groups=3, rank=2, projection="gaussian", ratio=0.5)
    yield SuperLoRAConfig(fold=(9, 11, 12), factoring="tucker", rank=2, groups=2, splits=1)
    yield preset("lonkr", splits=3, order=3, factoring="tucker", rank=1)
    yield preset("lokr", factoring=("lora", "lora"), rank=1)
    yield preset("loha", rank=3, targets=("qkv", "fc1", "fc2", "proj"))


@pytest.mark.parametrize("config", list(_configs_for_real_count()), ids=lambda c: c.name)
def test_count_equals_numel_of_real_trainable_parameters(config):
    model = tiny_vit()
    expected = count_parameters(model, config)
    wrapped = get_superlora_model(model, config)
    real_adapter = sum(p.numel() for p in wrapped.adapter.parameters() if p.requires_grad)
    real_total = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    assert expected.adapter == real_adapter == wrapped.num_trainable_parameters(include_trainable_modules=False)
    assert expected.total_trainable == real_total == wrapped.num_trainable_parameters()
    assert sum(g.parameters for g in expected.groups) == expected.adapter


def test_breakdown_describes_groups():
    count = count_parameters(tiny_vit(), preset("lotr", rank=2))
    (group,) = count.groups
    assert group.shape == (4, 24, 24) and group.size == 4 * 24 * 24
    assert group.targets == ("blocks.0.attn.qkv.q", "blocks.0.attn.qkv.v", "blocks.1.attn.qkv.q", "blocks.1.attn.qkv.v")
    assert group.parameters == 2 * (24 + 24) + 4 * 2 * 2
    assert count.lora_r1 == 4 * 48 and math.isclose(count.factor_vs_lora_r1, 192 / group.parameters)


def test_lora_count_matches_formula_on_mixed_shapes():
    model = TwoLayerMLP((12, 20, 16, 4))
    count = count_parameters(model, preset("lora", rank=3, targets=("fc1", "fc2")), trainable=("head",))
    assert count.adapter == 3 * (20 + 12) + 3 * (16 + 20)
    assert count.trainable_module_parameters == 16 * 4 + 4


def test_layer_grouping_with_more_groups_than_targets_is_a_config_error():
    with pytest.raises(ConfigError, match=r"groups=5.*only 4 targets.*groups<=4"):
        count_parameters(tiny_vit(), preset("superlora-2d", grouping="layer", groups=5))


def test_native_fold_over_unequal_shapes_is_a_config_error():
    with pytest.raises(ConfigError, match="mixes"):
        count_parameters(TwoLayerMLP(), preset("lora", groups=1, targets=("fc1", "fc2")))


def test_explicit_fold_too_small_is_a_config_error():
    with pytest.raises(ConfigError, match="holds 8 entries"):
        count_parameters(tiny_vit(), SuperLoRAConfig(fold=(2, 2, 2), factoring="tucker"))


def test_gaussian_projection_too_large_is_a_config_error(vit_base_meta):
    model = timm.create_model("vit_small_patch16_224")
    with pytest.raises(ConfigError, match="fastfood"):
        get_superlora_model(model, preset("superlora-2d", projection="gaussian", ratio=0.5))


def test_head_only_counts_no_adapter_parameters_and_the_whole_head():
    model = tiny_vit()
    head = sum(p.numel() for p in model.head.parameters())
    count = count_parameters(model, "head-only")
    assert (count.adapter, int(count), count.update_size, count.lora_r1, count.groups, count.targets) == \
        (0, 0, 0, 0, (), ())
    assert count.trainable_module_parameters == count.total_trainable == head == 3 * 24 + 3
    assert count.adapter_bytes == 0
    wrapped = get_superlora_model(model, "head-only")
    assert wrapped.num_trainable_parameters(include_trainable_modules=False) == 0
    assert sum(p.numel() for p in wrapped.parameters() if p.requires_grad) == head
    assert wrapped.delta_weights() == {}
