"""A full ΔW from plain tensors (no nn.Module): `functional.delta` against textbook formulas and the adapter module."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from superlora import get_superlora_model, preset
from superlora.adapter import SuperLoRAAdapter
from superlora.functional import projection as proj
from superlora.functional.delta import delta_weights, fixed_maps_fingerprint, make_fixed_maps
from superlora.functional.plan import plan_adapter
from superlora.layers import AdaptedLinear
from tests.toy_models import randomize_trainable, tiny_vit

SQUARE = [(24, 24)] * 4  # e.g. q and v of two blocks
MIXED = [(24, 24), (48, 24), (24, 48), (12, 24)]  # shapes only the folded presets accept
CONFIGS = {
    "lora": (preset("lora", rank=2), SQUARE),
    "loha": (preset("loha", rank=2), SQUARE),
    "lokr": (preset("lokr", rank=2), SQUARE),
    "lotr": (preset("lotr", rank=2), SQUARE),
    "lorta": (preset("lorta", rank=2, groups=3), MIXED),
    "lonkr": (preset("lonkr", rank=2, groups=2), MIXED),
    "superlora-groups-shuffle-fastfood": (
        preset("superlora-2d", rank=2, groups=3, ratio=0.4, projection="fastfood", shuffle=True, seed=5), MIXED),
    "superlora-layer-gaussian": (
        preset("superlora-2d", rank=3, groups=2, grouping="layer", ratio=0.5, projection="gaussian"), MIXED),
}


def random_factors(plan, seed: int = 0) -> list[list[dict[str, torch.Tensor]]]:
    """Plain tensors for every factor of the plan ([group][piece] name -> tensor), all non-zero."""
    gen = torch.Generator().manual_seed(seed)
    return [[{name: torch.randn(shape, generator=gen) * 0.3 for name, shape in piece.parameter_shapes().items()}
             for piece in group.pieces] for group in plan.groups]


def adapter_with(plan, config, factors) -> SuperLoRAAdapter:
    adapter = SuperLoRAAdapter(plan, config)
    with torch.no_grad():
        for group, group_factors in zip(adapter.groups, factors):
            for piece, tensors in zip(group.pieces, group_factors):
                for name, tensor in tensors.items():
                    piece.get_parameter(name).copy_(tensor)
    return adapter


@pytest.mark.parametrize("name", list(CONFIGS))
def test_pure_delta_equals_the_adapter_module(name):
    config, shapes = CONFIGS[name]
    plan = plan_adapter(shapes, config)
    factors = random_factors(plan)
    maps = make_fixed_maps(plan, config.projection, config.seed)
    pure = delta_weights(plan, factors, maps)
    adapter = adapter_with(plan, config, factors)
    with torch.no_grad():
        module = adapter.delta_weights(include_direct=True)
    assert sorted(pure) == sorted(module) == list(range(len(shapes)))
    for t, shape in enumerate(shapes):
        assert pure[t].shape == shape and pure[t].dtype == torch.float32
        assert torch.equal(pure[t], module[t]), t
        assert pure[t].abs().max() > 0
    assert fixed_maps_fingerprint(maps) == adapter.fixed_maps_fingerprint()
    scaled = delta_weights(plan, factors, maps, targets=[1, 3], scaling=2.5)
    assert sorted(scaled) == [1, 3] and all(torch.equal(scaled[t], 2.5 * pure[t]) for t in (1, 3))


def test_lora_loha_lokr_lotr_follow_their_formulas():
    built = {}
    for name in ("lora", "loha", "lokr", "lotr"):
        config, shapes = CONFIGS[name]
        plan = plan_adapter(shapes, config)
        factors = random_factors(plan, seed=1)
        built[name] = (factors, delta_weights(plan, factors, make_fixed_maps(plan, config.projection, config.seed)))
    for t in range(len(SQUARE)):
        (lora,), deltas = built["lora"][0][t], built["lora"][1]
        torch.testing.assert_close(deltas[t], lora["left"] @ lora["right"].T, rtol=0, atol=1e-6)
        (loha,), deltas = built["loha"][0][t], built["loha"][1]
        expected = (loha["a_left"] @ loha["a_right"].T) * (loha["b_left"] @ loha["b_right"].T)
        torch.testing.assert_close(deltas[t], expected, rtol=0, atol=1e-6)
        (full, low), deltas = built["lokr"][0][t], built["lokr"][1]
        expected = torch.kron(full["full"], low["left"] @ low["right"].T)
        torch.testing.assert_close(deltas[t], expected, rtol=0, atol=1e-6)
    (lotr,), deltas = built["lotr"][0][0], built["lotr"][1]  # one group: shared left/right, one core slice each
    for t in range(len(SQUARE)):
        expected = lotr["factor1"] @ lotr["core"][t] @ lotr["factor2"].T
        torch.testing.assert_close(deltas[t], expected, rtol=0, atol=1e-6)


def test_shuffled_projected_groups_scatter_back_by_the_permutation():
    config, shapes = CONFIGS["superlora-groups-shuffle-fastfood"]
    plan = plan_adapter(shapes, config)
    factors = random_factors(plan, seed=2)
    maps = make_fixed_maps(plan, config.projection, config.seed)
    deltas = delta_weights(plan, factors, maps)
    # The pipeline written out on its own: fold, truncate to P_g, Fastfood to D_g, concatenate, δ[perm] = d.
    outputs = []
    for group, (piece,) in zip(plan.groups, factors):
        assert group.projected and group.input_size < group.size
        flat = (piece["left"] @ piece["right"].T).reshape(-1)[: group.input_size]
        outputs.append(proj.fastfood(flat, maps.projections[group.index], group.size))
    d = torch.cat(outputs)
    delta = torch.empty_like(d)
    delta[proj.shuffle_permutation(plan.total, config.seed)] = d
    for t, (rows, cols) in enumerate(shapes):
        assert torch.equal(deltas[t], delta[plan.offsets[t] : plan.offsets[t] + rows * cols].view(rows, cols))


@pytest.mark.parametrize("name", ["superlora-groups-shuffle-fastfood", "lokr"])
def test_model_delta_is_the_pure_delta_times_the_scale(name):
    config = CONFIGS[name][0].replace(alpha=7.0)
    wrapped = get_superlora_model(tiny_vit(), config)
    randomize_trainable(wrapped.adapter, scale=0.3)
    factors = [[{n: p.detach().clone() for n, p in piece.named_parameters()} for piece in group.pieces]
               for group in wrapped.adapter.groups]
    maps = make_fixed_maps(wrapped.plan, config.projection, config.seed)
    pure = delta_weights(wrapped.plan, factors, maps, scaling=config.scaling)
    model = wrapped.delta_weights()
    assert config.scaling == 3.5 and list(model) == [t.name for t in wrapped.targets]
    for t, target in enumerate(wrapped.targets):
        assert torch.equal(pure[t], model[target.name]), target.name


def test_half_precision_factors_give_the_adapter_delta():
    config, shapes = CONFIGS["lorta"]
    plan = plan_adapter(shapes, config)
    factors = [[{n: t.bfloat16() for n, t in piece.items()} for piece in group] for group in random_factors(plan)]
    maps = make_fixed_maps(plan, config.projection, config.seed)
    adapter = adapter_with(plan, config, factors).to(torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        pure = delta_weights(plan, factors, maps)
        module = adapter.delta_weights(include_direct=True)
    for t in range(len(shapes)):
        assert pure[t].dtype == torch.float32 and torch.equal(pure[t], module[t])


def test_the_direct_lora_path_equals_the_pure_delta():
    config = preset("lora", rank=2, alpha=6.0)
    wrapped = get_superlora_model(tiny_vit(), config)
    randomize_trainable(wrapped.adapter, scale=0.3)
    assert wrapped.adapter.direct_targets == frozenset(range(len(wrapped.targets)))
    factors = [[{n: p.detach().clone() for n, p in piece.named_parameters()} for piece in group.pieces]
               for group in wrapped.adapter.groups]
    deltas = delta_weights(wrapped.plan, factors, make_fixed_maps(wrapped.plan, "none", config.seed),
                           scaling=config.scaling)
    x = torch.randn(2, 5, 24, generator=torch.Generator().manual_seed(4))
    for name, module in wrapped.base_model.named_modules():
        if not isinstance(module, AdaptedLinear):
            continue
        weight = module.weight.detach().clone()
        for t, (start, stop) in module.parts:
            weight[start:stop] += deltas[t]
        with torch.no_grad():
            out = module(x)  # x·R·Lᵀ on the rank-r intermediate, ΔW never built
        # Same numbers in another order of float32 products: equal to rounding (about 1e-6 relative).
        torch.testing.assert_close(out, F.linear(x, weight, module.bias), rtol=1e-6, atol=1e-6)
        assert (out - F.linear(x, module.weight, module.bias)).abs().max() > 1e-3, name
