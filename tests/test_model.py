"""Injection, targets, merge/unmerge, disable, unload, save/load and training through SuperLoRAModel."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from superlora import CheckpointError, ConfigError, SuperLoRAModel, get_superlora_model, preset
from superlora.layers import AdaptedLinear
from superlora.targets import resolve_targets

from toy_models import TwoLayerMLP, randomize_trainable, tiny_vit, vit_input


def test_q_v_targets_are_row_blocks_of_fused_qkv_in_model_order():
    targets = resolve_targets(tiny_vit(), ("v", "q"))
    assert [t.name for t in targets] == [
        "blocks.0.attn.qkv.q", "blocks.0.attn.qkv.v", "blocks.1.attn.qkv.q", "blocks.1.attn.qkv.v"
    ]
    assert targets[0].rows == (0, 24) and targets[1].rows == (48, 72) and targets[1].shape == (24, 24)


def test_glob_suffix_and_container_patterns():
    model = tiny_vit()
    assert [t.name for t in resolve_targets(model, ("blocks.1.*.fc?",))] == ["blocks.1.mlp.fc1", "blocks.1.mlp.fc2"]
    assert [t.name for t in resolve_targets(model, ("mlp",))][:2] == ["blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]
    assert [t.name for t in resolve_targets(model, ("proj",))] == ["blocks.0.attn.proj", "blocks.1.attn.proj"]


def test_targets_that_match_nothing_or_overlap_are_config_errors():
    with pytest.raises(ConfigError, match=r"'query' matches no nn.Linear.*q, k, v.*qkv"):
        get_superlora_model(tiny_vit(), preset("lora", targets=("query",)))
    with pytest.raises(ConfigError, match="selected whole and by its row block"):
        get_superlora_model(tiny_vit(), preset("lora", targets=("qkv", "q")))
    with pytest.raises(ConfigError, match="trainable: 'classifier'"):
        get_superlora_model(tiny_vit(), preset("lora"), trainable=("classifier",))


def test_adapting_twice_is_refused():
    model = tiny_vit()
    get_superlora_model(model, preset("lora"))
    with pytest.raises(ConfigError, match="already carries"):
        get_superlora_model(model, preset("lora"))


def test_base_is_frozen_and_head_trainable():
    wrapped = get_superlora_model(tiny_vit(), preset("lorta", order=3, rank=2))
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert {n for n in trainable if not n.startswith("adapter.")} == {"base_model.head.weight", "base_model.head.bias"}
    assert all(n.startswith(("adapter.", "base_model.head.")) for n in trainable)


def test_print_trainable_parameters_uses_peft_format(capsys):
    wrapped = get_superlora_model(tiny_vit(), preset("lora", rank=2))
    wrapped.print_trainable_parameters()
    line = capsys.readouterr().out.strip()
    trainable = 4 * 2 * (24 + 24) + 24 * 3 + 3
    total = sum(p.numel() for p in wrapped.parameters())
    assert line == f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"


@pytest.mark.parametrize("name", ["lora", "lorta"])
def test_disable_merge_unmerge_and_unload(name):
    base = tiny_vit()
    x = vit_input()
    with torch.no_grad():
        plain = base(x)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    wrapped = get_superlora_model(base, preset(name, rank=2, alpha=4))
    randomize_trainable(wrapped.adapter)
    with torch.no_grad():
        adapted = wrapped(x)
        assert not torch.allclose(adapted, plain, atol=1e-4)
        with wrapped.disable_adapter():
            torch.testing.assert_close(wrapped(x), plain)
        wrapped.merge()
        torch.testing.assert_close(wrapped(x), adapted, rtol=1e-5, atol=1e-5)
        wrapped.unmerge()
        torch.testing.assert_close(wrapped(x), adapted, rtol=1e-5, atol=1e-5)
    restored = wrapped.unload()
    assert not any(isinstance(m, AdaptedLinear) for m in restored.modules())
    for key, value in restored.state_dict().items():
        torch.testing.assert_close(value, original[key], rtol=0, atol=1e-6)


def test_merge_and_unload_gives_a_plain_model_with_the_same_outputs():
    wrapped = get_superlora_model(tiny_vit(), preset("loha", rank=2))
    randomize_trainable(wrapped.adapter)
    x = vit_input()
    with torch.no_grad():
        adapted = wrapped(x)
    plain = wrapped.merge_and_unload()
    assert type(plain.blocks[0].attn.qkv) is nn.Linear
    assert not plain._forward_pre_hooks and not plain._forward_hooks
    with torch.no_grad():
        torch.testing.assert_close(plain(x), adapted, rtol=1e-5, atol=1e-5)


def test_merged_state_dict_loads_into_the_plain_model_and_leaves_the_wrapper_untouched():
    wrapped = get_superlora_model(TwoLayerMLP(), preset("lorta", rank=2, targets=("fc1", "fc2")))
    randomize_trainable(wrapped.adapter, scale=0.3)
    x = torch.randn(4, 12, generator=torch.Generator().manual_seed(0))
    before = {key: value.clone() for key, value in wrapped.base_model.state_dict().items()}
    with torch.no_grad():
        adapted = wrapped(x)
        with wrapped.temporarily_merged():
            assert wrapped.runtime.merged
            torch.testing.assert_close(wrapped(x), adapted, rtol=1e-5, atol=1e-5)
    state = wrapped.merged_state_dict()
    assert not wrapped.runtime.merged
    after = wrapped.base_model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)  # bit for bit
    plain = TwoLayerMLP(seed=1)
    plain.load_state_dict(state)  # strict: the plain names, no `.base_layer.`
    deltas = wrapped.delta_weights()
    assert deltas["fc1"].abs().max() > 1e-3
    torch.testing.assert_close(state["fc1.weight"], before["fc1.base_layer.weight"] + deltas["fc1"], rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), adapted, rtol=1e-5, atol=1e-5)


def test_save_and_load_round_trip(tmp_path):
    config = preset("lorta", order=3, rank=2, ratio=0.5, projection="fastfood", shuffle=True, seed=4)
    wrapped = get_superlora_model(tiny_vit(num_classes=3, seed=0), config)
    randomize_trainable(wrapped)
    x = vit_input()
    with torch.no_grad():
        expected = wrapped(x)
    wrapped.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["config"]["projection"] == "fastfood" and saved["trainable_modules"] == ["head"]
    assert saved["targets"][0] == {"name": "blocks.0.attn.qkv.q", "shape": [24, 24]}
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]

    # A different random head and base: loading must restore adapter and head; the base is the user's.
    fresh = tiny_vit(num_classes=3, seed=0)
    loaded = SuperLoRAModel.from_pretrained(fresh, tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected)


def test_fixed_maps_are_not_saved(tmp_path):
    from safetensors.torch import load_file

    wrapped = get_superlora_model(tiny_vit(), preset("superlora-2d", ratio=0.5, projection="fastfood", shuffle=True))
    wrapped.save_pretrained(tmp_path)
    keys = set(load_file(str(tmp_path / "adapter_model.safetensors")))
    assert keys == {"adapter.groups.0.pieces.0.left", "adapter.groups.0.pieces.0.right", "modules.head.weight",
                    "modules.head.bias"}


def test_loading_into_a_mismatched_model_names_the_first_mismatch(tmp_path):
    get_superlora_model(tiny_vit(), preset("lora", rank=2)).save_pretrained(tmp_path / "a")
    import timm

    other = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3
    )
    with pytest.raises(CheckpointError, match=r"target 0 was blocks.0.attn.qkv.q \(24, 24\).*\(32, 32\)"):
        SuperLoRAModel.from_pretrained(other, tmp_path / "a")
    with pytest.raises(CheckpointError, match="does not fit the model"):
        SuperLoRAModel.from_pretrained(TwoLayerMLP(), tmp_path / "a")
    deeper = timm.models.vision_transformer.VisionTransformer(img_size=16, patch_size=8, embed_dim=24, depth=3,
                                                              num_heads=2, num_classes=3)
    with pytest.raises(CheckpointError, match="first unmatched: blocks.2.attn.qkv.q"):
        SuperLoRAModel.from_pretrained(deeper, tmp_path / "a")
    # A failed load leaves the model untouched.
    assert not any(isinstance(m, AdaptedLinear) for m in deeper.modules())


def test_loading_broken_files_gives_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        SuperLoRAModel.from_pretrained(tiny_vit(), tmp_path)
    get_superlora_model(tiny_vit(num_classes=3), preset("lora")).save_pretrained(tmp_path)
    model = tiny_vit(num_classes=5)
    with pytest.raises(CheckpointError, match=r"modules.head.weight has shape \(3, 24\), this model needs \(5, 24\)"):
        SuperLoRAModel.from_pretrained(model, tmp_path)
    assert not any(isinstance(m, AdaptedLinear) for m in model.modules())
    (tmp_path / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        SuperLoRAModel.from_pretrained(tiny_vit(num_classes=3), tmp_path)
    (tmp_path / "adapter_config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        SuperLoRAModel.from_pretrained(tiny_vit(num_classes=3), tmp_path)


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    wrapped = get_superlora_model(tiny_vit(), preset("lora"))
    wrapped.save_pretrained(tmp_path)
    before = (tmp_path / "adapter_model.safetensors").read_bytes()
    randomize_trainable(wrapped)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("superlora.model.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        wrapped.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


def test_delta_is_built_once_per_forward(monkeypatch):
    wrapped = get_superlora_model(tiny_vit(), preset("lorta", order=3, rank=2))
    calls = []
    original = wrapped.adapter.delta_weights
    monkeypatch.setattr(wrapped.adapter, "delta_weights", lambda **kw: calls.append(1) or original(**kw))
    wrapped(vit_input()).sum().backward()
    assert len(calls) == 1
    # A sub-module called on its own still gets the update (computed for that call).
    wrapped.base_model.blocks[0](torch.randn(1, 5, 24)).sum().backward()
    assert len(calls) == 2


def test_a_few_steps_of_training_fit_a_tiny_task():
    torch.manual_seed(0)
    x = torch.randn(32, 3, 16, 16)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    wrapped = get_superlora_model(tiny_vit(num_classes=2), preset("lorta", order=3, rank=4, shuffle=True))
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=3e-2)
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(wrapped(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert any(d.abs().max() > 0 for d in wrapped.delta_weights().values())


def test_works_on_a_hugging_face_transformer():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, num_labels=3)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    ids = torch.randint(0, 50, (2, 7))
    wrapped = get_superlora_model(model, preset("lorta", order=3, rank=2, targets=("query", "value")),
                                  trainable=("classifier",))
    assert len(wrapped.targets) == 4 and wrapped.targets[0].name == "bert.encoder.layer.0.attention.self.query"
    randomize_trainable(wrapped.adapter, scale=1.0)
    with torch.no_grad():
        adapted = wrapped(input_ids=ids).logits
        with wrapped.disable_adapter():
            plain = wrapped(input_ids=ids).logits
        assert (adapted - plain).abs().max() > 1e-3
        merged = wrapped.merge_and_unload()
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted, rtol=1e-5, atol=1e-5)


def test_row_update_gradients_equal_plain_autograd():
    """The custom backward (gradient only for adapted rows) matches autograd on the merged weight."""
    x = vit_input().requires_grad_(True)
    grads = []
    for train_base in (False, True):
        wrapped = get_superlora_model(tiny_vit(), preset("lorta", order=3, rank=2, targets=("q", "v", "fc1")))
        randomize_trainable(wrapped.adapter)
        if train_base:  # forces the plain autograd path in every adapted layer
            for layer in wrapped.base_model.modules():
                if isinstance(layer, AdaptedLinear):
                    layer.base_layer.weight.requires_grad_(True)
        x.grad = None
        wrapped(x).square().sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in wrapped.adapter.parameters()])
    for custom, plain in zip(*grads):
        torch.testing.assert_close(custom, plain, rtol=1e-4, atol=1e-6)


def test_saved_files_get_ordinary_permissions(tmp_path):
    import os
    import stat

    get_superlora_model(tiny_vit(), preset("lora")).save_pretrained(tmp_path)
    mask = os.umask(0)
    os.umask(mask)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask


# ------------------------------------------------------------------ the no-grad ΔW cache never serves stale values
def _cached_model(monkeypatch=None):
    """A LoRTA model (ΔW built by the adapter) whose no-grad cache has been filled once."""
    wrapped = get_superlora_model(tiny_vit(), preset("lorta", rank=2))
    randomize_trainable(wrapped.adapter, scale=0.3)
    with torch.no_grad():
        wrapped(vit_input())
    assert wrapped.runtime._frozen_cache is not None
    return wrapped


def _fresh_output(wrapped, x):
    """The output computed with autograd on, which never reads the no-grad cache."""
    with torch.enable_grad():
        return wrapped(x).detach()


def _count_builds(monkeypatch, wrapped) -> list:
    calls = []
    original = wrapped.adapter.delta_weights
    monkeypatch.setattr(wrapped.adapter, "delta_weights", lambda **kw: calls.append(1) or original(**kw))
    return calls


def test_repeated_no_grad_forwards_build_delta_once(monkeypatch):
    wrapped = _cached_model()
    calls = _count_builds(monkeypatch, wrapped)
    with torch.no_grad():
        for _ in range(3):
            wrapped(vit_input())
    assert calls == []


def test_writes_through_data_invalidate_the_cache():
    wrapped = _cached_model()
    x = vit_input()
    for param in wrapped.adapter.parameters():
        param.data.mul_(0)  # does not bump the parameter's version counter
    with torch.no_grad():
        zeroed = wrapped(x)
        with wrapped.disable_adapter():
            base = wrapped(x)
    torch.testing.assert_close(zeroed, base, rtol=0, atol=0)


def test_load_state_dict_invalidates_the_cache():
    wrapped = _cached_model()
    other = get_superlora_model(tiny_vit(), preset("lorta", rank=2))
    randomize_trainable(other.adapter, scale=0.3, seed=7)
    wrapped.adapter.load_state_dict(other.adapter.state_dict())
    x = vit_input()
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), _fresh_output(wrapped, x))
        torch.testing.assert_close(wrapped(x), other(x), rtol=1e-5, atol=1e-6)


def test_vector_to_parameters_invalidates_the_cache():
    wrapped = _cached_model()
    x = vit_input()
    with torch.no_grad():
        before = wrapped(x)
    vector = torch.nn.utils.parameters_to_vector(wrapped.adapter.parameters())
    torch.nn.utils.vector_to_parameters(vector * -2, wrapped.adapter.parameters())
    with torch.no_grad():
        after = wrapped(x)
    assert not torch.allclose(after, before, atol=1e-4)
    torch.testing.assert_close(after, _fresh_output(wrapped, x))


def test_a_change_of_autocast_rebuilds_the_cache(monkeypatch):
    wrapped = _cached_model()
    calls = _count_builds(monkeypatch, wrapped)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            wrapped(vit_input())
            wrapped(vit_input())
        assert len(calls) == 1
        with torch.autocast("cpu", dtype=torch.float16):
            wrapped(vit_input())
        assert len(calls) == 2
        wrapped(vit_input())
    assert len(calls) == 3


def test_a_dtype_or_device_move_rebuilds_the_cache(monkeypatch):
    wrapped = _cached_model()
    x = vit_input()
    calls = _count_builds(monkeypatch, wrapped)
    wrapped.to(torch.float64)
    with torch.no_grad():
        moved = wrapped(x.double())
    assert len(calls) == 1 and moved.dtype == torch.float64
    assert all(d.dtype == torch.float64 for d in wrapped.runtime._frozen_cache[2].values())
    torch.testing.assert_close(moved, _fresh_output(wrapped, x.double()))
    wrapped.to("meta")  # another device: the cached CPU tensors must not be served
    with torch.no_grad():
        wrapped(x.double().to("meta"))
    assert len(calls) == 4  # + the autograd check, + one build per adapted layer on meta (never cached)
    assert wrapped.runtime._frozen_cache is None


def test_a_forward_that_raised_leaves_no_pass_cache():
    wrapped = get_superlora_model(tiny_vit(), preset("lorta", rank=2))
    randomize_trainable(wrapped.adapter, scale=0.3)

    def fail(*_):
        raise RuntimeError("boom")

    hook = wrapped.base_model.blocks[1].register_forward_pre_hook(fail)
    with pytest.raises(RuntimeError, match="boom"):
        wrapped(vit_input())  # block 0 built this pass's ΔW before block 1 raised
    hook.remove()
    assert not wrapped.runtime._in_pass and wrapped.runtime._pass_cache is None
    with torch.no_grad():
        for param in wrapped.adapter.parameters():
            param.mul_(-1)
    tokens = torch.randn(1, 5, 24, generator=torch.Generator().manual_seed(0))
    block = wrapped.base_model.blocks[0]
    out = block(tokens)  # a sub-module on its own, with autograd: builds ΔW from the current factors
    with torch.no_grad():
        torch.testing.assert_close(out.detach(), block(tokens))


# ------------------------------------------------------------------ loading into a merged model
def test_loading_adapter_weights_into_a_merged_model_does_not_drift_the_base():
    base = tiny_vit()
    original = {k: v.clone() for k, v in base.state_dict().items()}
    wrapped = get_superlora_model(base, preset("lorta", rank=2))
    randomize_trainable(wrapped, scale=0.3)
    other = get_superlora_model(tiny_vit(), preset("lorta", rank=2))
    randomize_trainable(other, scale=0.3, seed=11)
    x = vit_input()
    with torch.no_grad():
        expected = other(x)
    wrapped.merge()
    wrapped.load_trainable_state_dict(other.trainable_state_dict())
    assert wrapped.runtime.merged
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), expected, rtol=1e-5, atol=1e-5)  # the new update, merged
    restored = wrapped.unload()
    for key, value in restored.state_dict().items():
        if key.startswith("head."):
            continue  # the head is trainable: it was loaded from `other`
        torch.testing.assert_close(value, original[key], rtol=0, atol=1e-6)


def test_a_refused_load_leaves_a_merged_model_as_it_was():
    wrapped = get_superlora_model(tiny_vit(), preset("lorta", rank=2))
    randomize_trainable(wrapped, scale=0.3)
    wrapped.merge()
    merged = {k: v.clone() for k, v in wrapped.base_model.state_dict().items()}
    state = wrapped.trainable_state_dict()
    state.pop(next(iter(state)))
    with pytest.raises(CheckpointError, match="missing"):
        wrapped.load_trainable_state_dict(state)
    assert wrapped.runtime.merged
    for key, value in wrapped.base_model.state_dict().items():
        assert torch.equal(value, merged[key]), key


# ------------------------------------------------------------------ folders written as a unit
def _fail_second_write(monkeypatch, module: str) -> None:
    def broken(*args, **kwargs):
        raise OSError("killed between the two files")

    monkeypatch.setattr(f"{module}.json.dumps", broken)  # the config is written after the weights


def test_an_interrupted_save_leaves_the_previous_adapter_folder(tmp_path, monkeypatch):
    folder = tmp_path / "adapter"
    wrapped = get_superlora_model(tiny_vit(), preset("lora"))
    wrapped.save_pretrained(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    randomize_trainable(wrapped)
    with monkeypatch.context() as patch:
        _fail_second_write(patch, "superlora.model")
        with pytest.raises(OSError, match="killed"):
            wrapped.save_pretrained(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no half-written sibling left behind
    # A new folder that fails is not created at all.
    with monkeypatch.context() as patch:
        _fail_second_write(patch, "superlora.model")
        with pytest.raises(OSError, match="killed"):
            wrapped.save_pretrained(tmp_path / "new")
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]
    # Overwriting still works, and the result loads with the new weights.
    wrapped.save_pretrained(folder)
    assert (folder / "adapter_model.safetensors").read_bytes() != before["adapter_model.safetensors"]
    loaded = SuperLoRAModel.from_pretrained(tiny_vit(), folder)
    for key, value in wrapped.trainable_state_dict().items():
        assert torch.equal(loaded.trainable_state_dict()[key], value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_saving_into_a_folder_with_other_files_keeps_them(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    wrapped = get_superlora_model(tiny_vit(), preset("lora"))
    wrapped.save_pretrained(tmp_path)
    wrapped.save_pretrained(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                          "notes.txt"]


def test_an_interrupted_merged_export_leaves_the_previous_folder(tmp_path, monkeypatch):
    from superlora.export import export_merged

    folder = tmp_path / "merged"
    wrapped = get_superlora_model(tiny_vit(), preset("lora"))
    export_merged(wrapped, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    randomize_trainable(wrapped)
    with monkeypatch.context() as patch:
        _fail_second_write(patch, "superlora.export")
        with pytest.raises(OSError, match="killed"):
            export_merged(wrapped, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]
    export_merged(wrapped, folder)
    assert (folder / "model.safetensors").read_bytes() != before["model.safetensors"]


# ------------------------------------------------------------------ defaults of the public API
def test_int_of_a_parameter_count_is_the_adapter_count():
    from superlora import count_parameters

    count = count_parameters(tiny_vit(), preset("lora", rank=2))
    assert int(count) == count.adapter == 4 * 2 * (24 + 24)
    assert count.trainable_module_parameters == 24 * 3 + 3  # the default trainable module is the classifier, `head`


class _Tagger(nn.Module):
    """A model whose classifier is not called `head`, found through timm's get_classifier()."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.classifier = nn.Linear(8, 2)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def forward(self, x):
        return self.classifier(torch.relu(self.body(x)))


def test_trainable_defaults_to_the_classifier_or_to_nothing():
    from superlora import count_parameters

    headless = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    wrapped = get_superlora_model(headless, preset("lora", targets=("0",)))
    assert wrapped.trainable_modules == []
    assert [n for n, p in wrapped.named_parameters() if p.requires_grad] == ["adapter.groups.0.pieces.0.left",
                                                                          "adapter.groups.0.pieces.0.right"]
    assert count_parameters(nn.Sequential(nn.Linear(8, 8)), preset("lora", targets=("0",))).trainable_module_parameters == 0
    tagger = get_superlora_model(_Tagger(), preset("lora", targets=("body",)))
    assert tagger.trainable_modules == ["classifier"]
    assert count_parameters(_Tagger(), preset("lora", targets=("body",))).trainable_module_parameters == 8 * 2 + 2
    assert get_superlora_model(tiny_vit(num_classes=0), preset("lora")).trainable_modules == []  # Identity head
    assert get_superlora_model(tiny_vit(), preset("lora"), trainable=()).trainable_modules == []
