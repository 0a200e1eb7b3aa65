"""The lora, loha and lokr presets equal PEFT's LoRA, LoHa and LoKr given the same factor values; lotr equals
ΔW_l = L C_l R with shared L, R."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoHaConfig, LoKrConfig, LoraConfig, get_peft_model

from superlora import get_superlora_model, preset

from toy_models import TwoLayerMLP, randomize_trainable

PEFT_CONFIGS = {
    "lora": lambda targets: LoraConfig(r=4, lora_alpha=8, target_modules=list(targets)),
    "loha": lambda targets: LoHaConfig(r=4, alpha=8, target_modules=list(targets)),
    "lokr": lambda targets: LoKrConfig(r=4, alpha=8, target_modules=list(targets)),
}


def _copy_peft_factors(kind, peft_model, ours):
    """Write PEFT's factor values into our adapter. Our lora piece is left @ right^T = lora_B @ lora_A."""
    params = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for index, target in enumerate(ours.targets):
            group = ours.adapter.groups[index]
            prefix = f"base_model.model.{target.module_name}."
            if kind == "lora":
                group.pieces[0].left.copy_(params[prefix + "lora_B.default.weight"])
                group.pieces[0].right.copy_(params[prefix + "lora_A.default.weight"].T)
            elif kind == "loha":
                piece = group.pieces[0]
                piece.a_left.copy_(params[prefix + "hada_w1_a.default"])
                piece.a_right.copy_(params[prefix + "hada_w1_b.default"].T)
                piece.b_left.copy_(params[prefix + "hada_w2_a.default"])
                piece.b_right.copy_(params[prefix + "hada_w2_b.default"].T)
            else:
                group.pieces[0].full.copy_(params[prefix + "lokr_w1.default"])
                second = group.pieces[1]
                if hasattr(second, "left"):
                    second.left.copy_(params[prefix + "lokr_w2_a.default"])
                    second.right.copy_(params[prefix + "lokr_w2_b.default"].T)
                else:
                    second.full.copy_(params[prefix + "lokr_w2.default"])
    return len(params)


def _vit():
    import timm

    torch.manual_seed(0)
    # Sides 192 (ViT-Ti width) exercise the LoKr split 12 x 16; fc1 is 768 x 192.
    return timm.create_model("vit_tiny_patch16_224", num_classes=5, img_size=32, patch_size=8).eval()


MODELS = {
    "timm_vit": (_vit, lambda: torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)), ("qkv", "fc1")),
    "mlp": (lambda: TwoLayerMLP((12, 20, 16, 4)).eval(), lambda: torch.randn(5, 12), ("fc1", "fc2")),
}


@pytest.mark.parametrize("kind", ["lora", "loha", "lokr"])
@pytest.mark.parametrize("model_name", list(MODELS))
def test_preset_matches_peft(kind, model_name):
    make_model, make_input, targets = MODELS[model_name]
    base = make_model()
    x = make_input()
    peft_model = get_peft_model(copy.deepcopy(base), PEFT_CONFIGS[kind](targets))
    randomize_trainable(peft_model, scale=0.2)
    ours = get_superlora_model(copy.deepcopy(base), preset(kind, rank=4, alpha=8, targets=targets), trainable=())
    peft_tensors = _copy_peft_factors(kind, peft_model, ours)

    peft_count = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert ours.num_trainable_parameters(include_trainable_modules=False) == peft_count
    assert sum(1 for _ in ours.adapter.parameters()) == peft_tensors

    with torch.no_grad():
        expected, actual, plain = peft_model(x), ours(x), base(x)
    assert not torch.allclose(expected, plain, atol=1e-3), "the adapters must change the output for the test to mean anything"
    relative = ((expected - actual).abs().max() / expected.abs().max()).item()
    assert relative <= 1e-5
    # Same ΔW per layer too, not only the same logits.
    for target in ours.targets:
        peft_layer = peft_model.base_model.model.get_submodule(target.module_name)
        torch.testing.assert_close(
            ours.delta_weights()[target.name], peft_layer.get_delta_weight("default"), rtol=1e-5, atol=1e-6
        )


def test_lotr_is_shared_left_core_right():
    model = _vit()
    ours = get_superlora_model(model, preset("lotr", rank=3, alpha=6), trainable=())
    randomize_trainable(ours)
    piece = ours.adapter.groups[0].pieces[0]
    core, left, right = piece.core, piece.factor1, piece.factor2  # core: L x r x r, left: m x r, right: n x r
    assert not hasattr(piece, "factor0")  # the layer mode is uncompressed
    deltas = ours.delta_weights()
    assert len(deltas) == core.shape[0] == 2 * len(model.blocks)
    for layer, (name, delta) in enumerate(deltas.items()):
        torch.testing.assert_close(delta, 2.0 * left @ core[layer] @ right.T, rtol=1e-5, atol=1e-6)
    rank, sides, layers = 3, 192, core.shape[0]
    assert ours.num_trainable_parameters(False) == rank * (sides + sides) + layers * rank * rank
