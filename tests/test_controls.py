"""The one description of the controls: values -> config for every preset, preset values, ranges, target names
and the count formatter every face uses."""

from __future__ import annotations

import pytest

from superlora import ConfigError, SuperLoRAConfig, count_parameters, preset
from superlora.config import PRESETS
from superlora.controls import (ADAPTER_CONTROLS, ADAPTER_NAMES, CONTROLS, FIELD_LABELS, PRESET_CONTROL_NAMES,
                                TRAINING_CONTROLS, VIT_TARGETS, config_from_values, format_count,
                                lora_r1_comparison, preset_values, target_choices, values_from_config)
from tests.toy_models import TwoLayerMLP, tiny_vit


@pytest.mark.parametrize("name", list(PRESETS))
def test_the_values_of_each_preset_give_exactly_the_preset_config(name):
    values = {"preset_name": name, **preset_values(name), "rank": 1, "alpha": 0, "targets": ["q", "v"]}
    assert config_from_values(values) == preset(name)
    assert config_from_values(values, VIT_TARGETS) == preset(name)
    assert config_from_values({**values, "rank": 4, "alpha": 8, "targets": ["q", "proj"]}, VIT_TARGETS) == \
        preset(name, rank=4, alpha=8.0, targets=("q", "attn.proj"))
    assert config_from_values({"preset_name": name}) == preset(name)  # a missing value is the preset's


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_values_round_trip_through_the_config(name):
    values = preset_values(name)
    assert tuple(values) == PRESET_CONTROL_NAMES
    assert {k: v for k, v in values_from_config(config_from_values({"preset_name": name, **values})).items()
            if k in PRESET_CONTROL_NAMES} == values
    for control_name, value in values.items():
        assert CONTROLS[control_name].contains(value), (control_name, value)


def test_preset_values_of_whole_weight_presets_and_the_order_control():
    assert preset_values("lora") == {"groups": 0, "grouping": "layer", "fold": "native", "order": 2, "splits": 1,
                                     "factoring": "lora", "projection": "none", "ratio": 1.0, "shuffle": False}
    assert preset_values("lokr")["factoring"] == "full ⊗ lora"
    # The order control holds the preset's `order` field (2 for LoTR, whose stack fold makes order-3 tensors), so
    # the values reproduce preset("lotr") field for field.
    assert preset_values("lotr")["order"] == 2 and preset("lotr").order == 2
    assert preset_values("lorta")["order"] == 3


def test_control_rules_groups_alpha_and_lotr_modes():
    lotr = {"preset_name": "lotr", **preset_values("lotr"), "targets": ["q", "v"]}
    assert config_from_values(lotr).uncompressed_modes == (0,)
    assert config_from_values({**lotr, "factoring": "full"}).uncompressed_modes == ()  # only with Tucker
    lorta = {"preset_name": "lorta", **preset_values("lorta")}
    assert config_from_values({**lorta, "groups": 3}).groups == 3
    assert config_from_values({**lorta, "groups": 0, "grouping": "layer"}).groups == "per-target"
    assert config_from_values({**lorta, "groups": "per-target", "grouping": "layer"}).groups == "per-target"
    for empty in (0, 0.0, "", None):
        assert config_from_values({**lorta, "alpha": empty}).alpha is None
    assert config_from_values({**lorta, "rank": 4.0, "alpha": 8}).scaling == 2.0
    assert config_from_values({**lorta, "seed": 5}).seed == 5


@pytest.mark.parametrize("values, message", [
    ({"preset_name": "lorax"}, r"^preset 'lorax' is unknown; choose one of lora, loha"),
    ({"factoring": "svd"}, r"^factoring='svd': not a factoring; choose one of lora, tucker"),
    ({"targets": []}, r"^targets=\(\): tick at least one of q, k, v, proj or mlp$"),
    ({"targets": ["qkv"]}, r"^targets=\['qkv'\]: not a target these controls offer; choose from q, k, v, proj, mlp"),
    ({"fold": "native"}, r"^fold='native': keeps whole weights, so groups must fall on targets"),
    ({"ratio": 0.5}, r"^ratio=0.5: a ratio below 1 needs a projection"),
    ({"rank": "four"}, r"^rank='four': must be a number"),
])
def test_impossible_values_raise_a_config_error_naming_the_field(values, message):
    with pytest.raises(ConfigError, match=message):
        config_from_values({"preset_name": "lorta", **values}, VIT_TARGETS)


def test_every_default_lies_in_its_range_and_the_defaults_are_the_studio_opening():
    for control in (*ADAPTER_CONTROLS, *TRAINING_CONTROLS):
        assert control.contains(control.default), control.name
        if control.kind in ("int", "float") and control.maximum is not None:
            assert control.minimum < control.maximum and 0 < control.step <= control.maximum - control.minimum
    assert not CONTROLS["rank"].contains(0) and not CONTROLS["rank"].contains(65)
    assert not CONTROLS["targets"].contains(["q", "qkv"]) and not CONTROLS["shuffle"].contains(1)
    defaults = {control.name: control.default for control in ADAPTER_CONTROLS}
    assert config_from_values(defaults, VIT_TARGETS) == preset("lorta", rank=4, targets=("q", "v"))
    assert ADAPTER_NAMES == ("preset_name", "rank", "alpha", "groups", "grouping", "fold", "order", "splits",
                             "factoring", "projection", "ratio", "shuffle", "targets", "rank_scaling")
    assert [c.flag for c in ADAPTER_CONTROLS[:2]] == ["--preset", "--rank"] and CONTROLS["batch_size"].flag == \
        "--batch-size"


def test_a_control_of_an_unknown_kind_is_refused():
    from superlora.controls import Control

    with pytest.raises(ConfigError, match="kind='slider' is not a kind"):
        Control("rank", "slider", "Rank r", "r", 4, 1, 64, 1)


def test_field_labels_name_the_control_of_each_field():
    assert FIELD_LABELS == {
        "targets": "Adapt these weights", "rank": "Rank r", "alpha": "α", "groups": "Groups G",
        "grouping": "Grouping", "fold": "Fold", "order": "Tensor order M", "splits": "Kronecker splits K",
        "factoring": "Factoring", "projection": "Projection", "ratio": "Projection ratio ρ", "shuffle": "Shuffle",
        "rank_scaling": "Scale rule",
        "uncompressed_modes": "Method (preset)", "steps": "Steps", "epochs": "Epochs", "lr": "Learning rate",
        "batch_size": "Batch size", "good_class": "Good (defect-free) class", "head_lr": "Head learning rate",
            "pick_lr": "Pick the learning rate"}


def test_values_from_config_refuses_what_no_control_shows():
    with pytest.raises(ConfigError, match=r"^fold=\(8, 8\)"):
        values_from_config(SuperLoRAConfig(fold=(8, 8)))
    with pytest.raises(ConfigError, match=r"^rank=\(2, 3\)"):
        values_from_config(preset("lora", rank=(2, 3)))


def test_target_choices_offer_the_patterns_of_the_model():
    assert target_choices(tiny_vit()) == ["q", "k", "v", "qkv", "proj", "fc1", "fc2"]  # head stays trainable
    assert target_choices(tiny_vit(), exclude=()) == ["q", "k", "v", "qkv", "proj", "fc1", "fc2", "head"]
    assert target_choices(TwoLayerMLP()) == ["fc1", "fc2"]
    assert set(VIT_TARGETS) == set(CONTROLS["targets"].choices)


def test_the_count_formatter_on_a_hand_counted_example():
    model = TwoLayerMLP()  # fc1 20x12, fc2 16x20, head 4x16 + 4: 260 + 336 + 68 = 664 parameters
    # LoRA r=2: 2 x (20 + 12) + 2 x (16 + 20) = 136; LoRA r=1 = 68, so the adapter is twice LoRA r=1.
    lora = count_parameters(model, preset("lora", rank=2, targets=("fc1", "fc2")))
    assert (lora.adapter, lora.lora_r1, lora.base_model) == (136, 68, 664)
    markdown = format_count(lora, "markdown").splitlines()
    assert markdown[:8] == ["| trainable parameters | |", "|---|---:|", "| **adapter parameters** | **136** |",
                            "| head (trainable) | 68 |", "| total trainable | 204 |",
                            "| share of the model (664) | 30.723 % |", "| LoRA r=1 on the same targets | 68 |",
                            "| adapter file (float32) | 0.5 KiB |"]
    assert markdown[-1] == ("The adapter has **2.0×** more parameters than LoRA r=1 on the same 2 target matrices "
                            "(560 update entries, 2 group(s)).")
    html = format_count(lora, "html").split("<br>")
    assert html[0] == "<b>adapter parameters: 136</b>" and html[3] == "share of the model (664): 30.723 %"
    assert html[-1].startswith("The adapter has <b>2.0×</b> more parameters than LoRA r=1")
    text = format_count(lora, "text").splitlines()
    assert text[0].split() == ["adapter", "parameters", "136"] and text[1].split() == ["head", "(trainable)", "68"]
    assert len({len(line) for line in text[:6]}) == 1  # aligned columns
    assert text[-1].startswith("The adapter has 2.0x more parameters than LoRA r=1")

    # SuperLoRA 2D, one group: D = 560 entries folded into 24 x 24 (23² = 529 < 560), rank 1: 24 + 24 = 48.
    folded = count_parameters(model, preset("superlora-2d", targets=("fc1", "fc2")))
    assert folded.adapter == 48
    assert "**1.4×** fewer parameters than LoRA r=1" in format_count(folded)


def test_one_rule_compares_with_lora_r1_in_every_style():
    assert lora_r1_comparison(1.04) == lora_r1_comparison(0.96, "text") == "about as many parameters as"
    assert lora_r1_comparison(10.0, "text") == "10.0x fewer parameters than"
    assert lora_r1_comparison(0.25, "html") == "<b>4.0×</b> more parameters than"
    assert lora_r1_comparison(1.06) == "**1.1×** fewer parameters than"
    with pytest.raises(ConfigError, match="style='latex'"):
        format_count(count_parameters(TwoLayerMLP(), preset("lora", targets=("fc1",))), "latex")


def test_head_only_is_offered_and_ignores_the_adapter_controls():
    from superlora.config import HEAD_ONLY

    assert CONTROLS["preset_name"].contains(HEAD_ONLY) and CONTROLS["preset_name"].choices[-1] == HEAD_ONLY
    # Whatever the adapter controls hold (even no targets), head-only is the config without an adapter.
    values = {"preset_name": HEAD_ONLY, **preset_values("lorta"), "rank": 8, "alpha": 4, "targets": [], "seed": 2}
    assert config_from_values(values, VIT_TARGETS) == preset(HEAD_ONLY, seed=2)
    assert config_from_values({"preset_name": HEAD_ONLY}).head_only
    count = count_parameters(tiny_vit(), config_from_values(values, VIT_TARGETS))
    text = format_count(count, "text")
    assert text.splitlines()[0].split()[-1] == "0"  # adapter parameters
    assert text.splitlines()[-1] == "No adapter: only the head's 75 parameters train, the baseline every adapter " \
                                    "must beat."
    assert "<b>adapter parameters: 0</b>" in format_count(count, "html")
