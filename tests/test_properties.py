"""Property tests over random valid configs on a small ViT (METHOD.md: init, no stuck factor, merge, save/load,
shuffle, fixed projection)."""

from __future__ import annotations

import copy

import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from superlora import ConfigError, SuperLoRAModel, get_superlora_model
from superlora.config import SuperLoRAConfig
from superlora.functional.projection import shuffle_permutation

from toy_models import randomize_trainable, tiny_vit, vit_input

BASE = tiny_vit(num_classes=3)
X = vit_input(batch=2)
PROPERTY_SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def configs(draw):
    """Random valid configs: every fold, grouping, factoring, projection and shuffle combination the engine has."""
    fold = draw(st.sampled_from(["native", "stack", "auto", "auto", "explicit"]))
    grouping = "layer" if fold in ("native", "stack") else draw(st.sampled_from(["contiguous", "layer"]))
    order = {"native": 2, "stack": 3}.get(fold, draw(st.integers(2, 4)))
    splits = draw(st.integers(1, 3)) if fold != "stack" else draw(st.integers(1, 2))
    names = ["full", "tucker", "hadamard"] + (["lora"] if order == 2 else [])
    factoring = tuple(draw(st.sampled_from(names)) for _ in range(splits))
    projected = fold in ("auto", "explicit") and draw(st.booleans())
    fields = dict(
        targets=draw(st.sampled_from([("q", "v"), ("qkv",), ("q", "k", "v", "proj"), ("fc1", "fc2"), ("v", "fc2")])),
        rank=draw(st.integers(1, 3)),
        alpha=draw(st.sampled_from([None, 1.0, 4.0])),
        groups=draw(st.integers(1, 4)),
        grouping=grouping,
        order=order,
        splits=splits,
        factoring=factoring if len(set(factoring)) > 1 else factoring[0],
        projection=draw(st.sampled_from(["fastfood", "gaussian"])) if projected else "none",
        ratio=draw(st.sampled_from([1.0, 0.5, 0.1])) if projected else 1.0,
        shuffle=draw(st.booleans()),
        seed=draw(st.integers(0, 1000)),
        uncompressed_modes=(0,) if fold == "stack" and "tucker" in factoring and draw(st.booleans()) else (),
    )
    if fold == "explicit":
        # Sides that hold the largest group: D <= 4 * 96 * 24 for these targets.
        fields["fold"] = draw(st.sampled_from([(48, 48), (16, 16, 16), (12, 12, 12, 12), (40, 60, 4)]))
        fields["order"] = len(fields["fold"])
        fields["factoring"] = fields["factoring"] if fields["order"] == 2 else "tucker"
    else:
        fields["fold"] = fold
    try:
        config = SuperLoRAConfig(**fields)
        get_superlora_model(copy.deepcopy(BASE), config)
    except ConfigError:
        assume(False)
    return config


def _wrapped(config):
    return get_superlora_model(copy.deepcopy(BASE), config)


@given(configs())
@PROPERTY_SETTINGS
def test_update_is_zero_at_init(config):
    wrapped = _wrapped(config)
    assert all(torch.count_nonzero(delta) == 0 for delta in wrapped.delta_weights().values())
    with torch.no_grad():
        torch.testing.assert_close(wrapped(X), BASE(X), rtol=0, atol=0)


@given(configs())
@PROPERTY_SETTINGS
def test_no_factor_is_stuck(config):
    wrapped = _wrapped(config)
    params = dict(wrapped.adapter.named_parameters())
    zero_init = {name for name, p in params.items() if torch.count_nonzero(p) == 0}
    assert len(zero_init) == len(wrapped.plan.groups), "exactly one zero tensor per group"
    optimizer = torch.optim.SGD(params.values(), lr=0.5)
    wrapped(X).square().sum().backward()
    moved = {name for name, p in params.items() if p.grad is not None and torch.count_nonzero(p.grad) > 0}
    assert moved == zero_init, "at step 0 only the zero-initialised factor has a gradient"
    optimizer.step()
    optimizer.zero_grad()
    wrapped(X).square().sum().backward()
    stuck = [name for name, p in params.items() if p.grad is None or torch.count_nonzero(p.grad) == 0]
    assert not stuck


@given(configs())
@PROPERTY_SETTINGS
def test_merge_equals_unmerged_and_unmerge_restores_weights(config):
    wrapped = _wrapped(config)
    randomize_trainable(wrapped.adapter, scale=0.3)
    original = {k: v.clone() for k, v in wrapped.base_model.state_dict().items() if "base_layer" in k}
    with torch.no_grad():
        unmerged = wrapped(X)
        wrapped.merge()
        torch.testing.assert_close(wrapped(X), unmerged, rtol=1e-4, atol=1e-5)
        wrapped.unmerge()
    for key, value in wrapped.base_model.state_dict().items():
        if key in original:
            torch.testing.assert_close(value, original[key], rtol=0, atol=1e-6)


@given(config=configs())
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
def test_save_then_load_gives_identical_outputs(config, tmp_path_factory):
    directory = tmp_path_factory.mktemp("adapter")
    wrapped = _wrapped(config)
    randomize_trainable(wrapped, scale=0.3)
    with torch.no_grad():
        expected = wrapped(X)
    wrapped.save_pretrained(directory)
    loaded = SuperLoRAModel.from_pretrained(copy.deepcopy(BASE), directory)
    with torch.no_grad():
        assert torch.equal(loaded(X), expected)


@given(configs().filter(lambda c: c.shuffle))
@PROPERTY_SETTINGS
def test_shuffle_scatters_group_outputs_by_a_fixed_permutation(config):
    wrapped = _wrapped(config)
    randomize_trainable(wrapped.adapter, scale=0.3)
    adapter = wrapped.adapter
    with torch.no_grad():
        concatenated = torch.cat([adapter.group_vector(g) for g in range(len(adapter.groups))])
        deltas = adapter.delta_weights(include_direct=True)
    delta = torch.cat([deltas[t].reshape(-1) for t in range(len(deltas))])
    perm = shuffle_permutation(adapter.plan.total, config.seed)
    assert torch.equal(delta[perm], concatenated)  # d = P delta exactly: the un-shuffle loses nothing


@given(configs().filter(lambda c: c.projection != "none"))
@PROPERTY_SETTINGS
def test_projection_is_fixed_and_not_trained(config):
    first, second = _wrapped(config), _wrapped(config)
    for g in range(len(first.plan.groups)):
        a, b = first.adapter.projection_params(g), second.adapter.projection_params(g)
        pairs = zip(a.values(), b.values()) if isinstance(a, dict) else [(a, b)]
        for x, y in pairs:
            assert torch.equal(x, y) and not x.requires_grad
    assert not any("_ff" in k or "_gauss" in k for k in first.adapter.state_dict())
    assert first.adapter.fixed_maps_fingerprint() == second.adapter.fixed_maps_fingerprint()
