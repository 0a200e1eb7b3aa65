"""SuperLoRAConfig validation, JSON round trip and presets."""

from __future__ import annotations

import pytest

from superlora import ConfigError, SuperLoRAConfig, preset
from superlora.config import PRESETS


@pytest.mark.parametrize(
    ("fields", "must_mention"),
    [
        (dict(rank=0), ["rank=0", "rank=4"]),
        (dict(rank=-2), ["rank=-2"]),
        (dict(rank=(2, 0)), ["rank=(2, 0)"]),
        (dict(alpha=0), ["alpha=0"]),
        (dict(groups=0), ["groups=0", "groups=1"]),
        (dict(groups="per-target"), ["groups='per-target'", "grouping='layer'"]),
        (dict(grouping="rows"), ["grouping='rows'", "contiguous"]),
        (dict(fold="spiral"), ["fold='spiral'", "auto"]),
        (dict(fold=(4,)), ["fold=(4,)"]),
        (dict(order=1), ["order=1", "order=2"]),
        (dict(splits=0), ["splits=0"]),
        (dict(factoring="svd"), ["'svd'", "tucker"]),
        (dict(order=3, factoring="lora"), ["factoring='lora'", "tucker"]),
        (dict(splits=2, factoring=("full",)), ["factoring=('full',)", "2 names"]),
        (dict(projection="fft"), ["projection='fft'", "fastfood"]),
        (dict(ratio=0.0, projection="fastfood"), ["ratio=0.0", "(0, 1]"]),
        (dict(ratio=1.5, projection="fastfood"), ["ratio=1.5"]),
        (dict(ratio=0.1), ["ratio=0.1", "projection='fastfood'"]),
        (dict(fold="native"), ["fold='native'", "grouping='layer'"]),
        (dict(fold="native", grouping="layer", projection="fastfood"), ["fold='native'", "fold='auto'"]),
        (dict(uncompressed_modes=(0,)), ["uncompressed_modes=(0,)", "tucker"]),
        (dict(order=3, factoring="tucker", uncompressed_modes=(3,)), ["uncompressed_modes=(3,)", "0..2"]),
        (dict(targets=()), ["targets=()"]),
        (dict(targets=("q", "q")), ["twice"]),
        (dict(seed=-1), ["seed=-1"]),
        (dict(rank=(1, 2, 3)), ["rank=(1, 2, 3)", "order 2"]),
    ],
)
def test_impossible_configs_raise_config_error_naming_field_value_and_alternative(fields, must_mention):
    with pytest.raises(ConfigError) as info:
        SuperLoRAConfig(**fields)
    message = str(info.value)
    for text in must_mention:
        assert text in message, message


def test_config_error_is_a_value_error_for_callers_that_catch_that():
    with pytest.raises(ValueError):
        SuperLoRAConfig(rank=0)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_round_trips_through_json(name):
    config = preset(name, rank=3, alpha=6, seed=7)
    again = SuperLoRAConfig.from_json(config.to_json())
    assert again == config
    assert again.to_dict() == config.to_dict()


def test_round_trip_keeps_tuples_and_explicit_fold():
    config = SuperLoRAConfig(fold=(8, 8, 8), factoring="tucker", rank=(2, 3, 4), targets=("qkv", "fc1"))
    again = SuperLoRAConfig.from_json(config.to_json())
    assert again.fold == (8, 8, 8) and again.rank == (2, 3, 4) and again.targets == ("qkv", "fc1")


def test_unknown_json_fields_and_bad_json_are_config_errors():
    with pytest.raises(ConfigError, match="unknown config field"):
        SuperLoRAConfig.from_dict({"rank": 2, "rnak": 3})
    with pytest.raises(ConfigError, match="not valid JSON"):
        SuperLoRAConfig.from_json("{rank: 2")


def test_preset_overrides_and_unknown_preset():
    config = preset("lorta", rank=5, order=4, ratio=0.1, projection="fastfood", shuffle=True)
    assert (config.fold_order, config.rank, config.factoring, config.shuffle) == (4, 5, "tucker", True)
    assert preset("LoRA").groups == "per-target"
    with pytest.raises(ConfigError, match="lora, loha"):
        preset("dora")


def test_scaling_is_alpha_over_rank():
    assert preset("lora", rank=4, alpha=8).scaling == 2.0
    assert preset("lora", rank=4).scaling == 1.0
    assert SuperLoRAConfig(order=3, factoring="tucker", rank=(2, 4, 8), alpha=4).scaling == 0.5


def test_presets_have_the_documented_settings():
    lotr = preset("lotr")
    assert (lotr.groups, lotr.fold, lotr.fold_order, lotr.uncompressed_modes) == (1, "stack", 3, (0,))
    lokr = preset("lokr")
    assert (lokr.splits, lokr.piece_factorings) == (2, ("full", "lora"))
    assert preset("loha").factoring == "hadamard"


def test_head_only_is_a_method_without_an_adapter_asked_for_by_name():
    from superlora.config import HEAD_ONLY, METHODS

    config = preset("head-only", seed=3)
    assert (config.targets, config.head_only, config.name, config.seed) == ((), True, HEAD_ONLY, 3)
    assert METHODS[-1] == HEAD_ONLY and HEAD_ONLY not in PRESETS  # PRESETS stays the adapter recipes
    again = SuperLoRAConfig.from_json(config.to_json())
    assert again == config and again.head_only and again.name == HEAD_ONLY
    assert not preset("lora").head_only
    # An empty target list is refused unless head-only was asked for by name, and says how to ask for it.
    with pytest.raises(ConfigError, match=r"targets=\(\).*preset\(\"head-only\"\)"):
        SuperLoRAConfig(targets=())
    # Head-only sets no adapter field: giving one is a clear error, not silently ignored.
    with pytest.raises(ConfigError, match=r"^targets=\('q',\): the 'head-only' method adapts no weights"):
        preset("head-only", targets=("q",))
    with pytest.raises(ConfigError, match=r"^rank=4: the 'head-only' method has no adapter"):
        preset("head-only", rank=4)
    with pytest.raises(ConfigError, match=r"^shuffle=True: the 'head-only' method"):
        config.replace(shuffle=True)
