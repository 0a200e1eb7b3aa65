"""`rank_scaling`, the lr-transfer candidate that scales the update by the number T of rank-one terms each update
entry sums: T on hand-worked shapes, the scale it gives, that alpha keeps PEFT's alpha / r under every rule, that a
"none" config saves and hashes as before the field existed (and a file without the field reads as "none"), that every
config round-trips, and that the model applies exactly that scale to ΔW and the output."""

from __future__ import annotations

import math

import pytest
import torch

from superlora import ConfigError, SuperLoRAConfig, get_superlora_model, preset
from superlora.config import HEAD_ONLY, PRESETS, RANK_SCALINGS
from superlora.defaults import DEFAULT_RANK_SCALING
from superlora.functional.plan import plan_adapter

from toy_models import randomize_trainable, tiny_vit, vit_input

QV = [(192, 192)] * 12  # q and v of the bundled default's 6 blocks


@pytest.mark.parametrize(("name", "fields", "terms"), [
    ("lora", dict(rank=4), 4),  # ΔW = B A^T: each entry sums r products
    ("loha", dict(rank=2), 4),  # (B1 A1^T) ∘ (B2 A2^T): a product of two sums of 2 -> 4 products
    ("lokr", dict(rank=1), 1),  # a full 12 x 12 piece ⊗ a rank-1 16 x 16 piece: 1 x 1
    ("lotr", dict(rank=4), 16),  # Tucker core 12 x 4 x 4, the layer mode uncompressed (it indexes): 4 * 4
    ("lorta", dict(order=3, rank=2), 8),  # 77 x 77 x 77 with a 2 x 2 x 2 core: 2^3
    ("lorta", dict(order=5, rank=1), 1),
    ("lonkr", dict(splits=2, rank=4), 16),  # two rank-4 A B^T pieces, Kronecker: 4 * 4
    ("superlora-2d", dict(rank=16), 16),
])
def test_rank_terms_on_hand_worked_shapes(name, fields, terms):
    plan = plan_adapter(QV, preset(name, **fields))
    assert plan.rank_terms == terms
    config = preset(name, **fields, rank_scaling="none")
    assert config.update_scale(plan.rank_terms) == 1.0  # "none" changes nothing
    assert config.replace(rank_scaling="sqrt").update_scale(terms) == pytest.approx(1 / math.sqrt(terms))
    assert config.replace(rank_scaling="linear").update_scale(terms) == pytest.approx(1 / terms)


@pytest.mark.parametrize("rule", RANK_SCALINGS)
def test_alpha_keeps_alpha_over_r_under_every_rank_scaling(rule):
    assert preset("lora", rank=8, alpha=16, rank_scaling=rule).update_scale(8) == 2.0  # PEFT's alpha / r, T ignored
    assert preset("loha", rank=2, alpha=4, rank_scaling=rule).update_scale(4) == 2.0
    assert preset("lokr", rank=4, alpha=2, rank_scaling=rule).update_scale(4) == 0.5
    assert preset("lora", rank=8, alpha=16).update_scale(8) == 2.0  # whatever the default rule


def test_a_rank_scaling_must_be_known():
    with pytest.raises(ConfigError, match=r"rank_scaling='cubic': is not a rank scaling"):
        preset("lora", rank_scaling="cubic")


def test_a_none_config_saves_and_hashes_as_before_the_field_existed():
    from benchmarks.study.sweep import config_hash

    config = preset("lora", rank=1, rank_scaling="none")
    assert "rank_scaling" not in config.to_dict()
    # the hash the committed study rows carry for LoRA r=1 (benchmarks/results/pareto_*.csv)
    assert config_hash(config) == "42f479dfa0b9"
    scaled = config.replace(rank_scaling="linear")
    assert scaled.to_dict()["rank_scaling"] == "linear"
    assert SuperLoRAConfig.from_json(scaled.to_json()) == scaled and config_hash(scaled) != config_hash(config)
    assert SuperLoRAConfig.from_json(config.to_json()).rank_scaling == "none"
    legacy = {k: v for k, v in preset("lotr", rank=4).to_dict().items() if k != "rank_scaling"}
    assert SuperLoRAConfig.from_dict(legacy).rank_scaling == "none"  # a file written before the field existed


@pytest.mark.parametrize("name", [*PRESETS, HEAD_ONLY])
def test_every_preset_round_trips_with_its_rank_scaling(name):
    config = preset(name)
    assert config.rank_scaling == DEFAULT_RANK_SCALING
    assert SuperLoRAConfig.from_json(config.to_json()) == config
    for rule in RANK_SCALINGS:  # head-only scales nothing, so any rule is accepted and kept
        assert SuperLoRAConfig.from_dict(config.replace(rank_scaling=rule).to_dict()).rank_scaling == rule


@pytest.mark.parametrize("rule", ["sqrt", "linear"])
def test_the_model_scales_delta_w_and_its_output_by_the_rule(rule):
    config = preset("lorta", order=3, rank=2, targets=("qkv",), rank_scaling="none")
    plain = get_superlora_model(tiny_vit(), config)
    scaled = get_superlora_model(tiny_vit(), config.replace(rank_scaling=rule))
    randomize_trainable(plain)
    scaled.load_state_dict(plain.state_dict())
    terms = plain.plan.rank_terms
    assert terms == 8
    factor = 1 / math.sqrt(terms) if rule == "sqrt" else 1 / terms
    for name, delta in plain.delta_weights().items():
        torch.testing.assert_close(scaled.delta_weights()[name], delta * factor)
    x = vit_input()
    with torch.no_grad():  # the merged weights carry the same scale as the layers' own path
        scaled.merge()
        merged_out = scaled(x)
        scaled.unmerge()
        torch.testing.assert_close(scaled(x), merged_out, rtol=1e-5, atol=1e-5)


def test_a_runs_one_line_description_names_a_scale_other_than_one():
    from superlora.runs import describe_adapter

    assert describe_adapter(preset("lotr", rank=4, rank_scaling="none").to_dict()) == "lotr r=4 G=1 on q,v"
    assert describe_adapter(preset("lotr", rank=4, rank_scaling="sqrt").to_dict()) == "lotr r=4 G=1 sqrt-scaled on q,v"
    assert describe_adapter(preset("lora", rank=8, alpha=16, rank_scaling="sqrt").to_dict()) == \
        "lora r=8 G=per-target alpha=16 on q,v"  # alpha sets the scale, whatever the rule
