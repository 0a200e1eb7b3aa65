"""Export: the adapter alone, a merged plain timm checkpoint (loaded by timm alone, in a process that never imports
superlora), and ONNX checked with onnxruntime; merged models predict exactly like adapted ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import timm
import torch

from superlora import SuperLoRAModel, get_superlora_model, preset
from superlora.errors import ConfigError
from superlora.export import export, export_merged, export_onnx, timm_load_snippet

from toy_models import randomize_trainable

# A timm-registered architecture whose default pretrained config reads .safetensors (no custom .npz loader).
ARCH = "deit_tiny_patch16_224"
ARGS = dict(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3)
CLASSES = ["red", "green", "blue"]


def adapted_model(config, seed: int = 0) -> SuperLoRAModel:
    torch.manual_seed(seed)
    model = get_superlora_model(timm.create_model(ARCH, pretrained=False, **ARGS), config)
    randomize_trainable(model, scale=0.2, seed=seed + 1)  # a fresh adapter is zero; give it a real update
    return model.eval()


def images(batch: int = 5) -> torch.Tensor:
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(7))


CONFIGS = {
    "lora": preset("lora", rank=2),
    "lokr": preset("lokr", rank=2),
    "lorta-fastfood-shuffle": preset("lorta", rank=2, ratio=0.5, projection="fastfood", shuffle=True),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_merged_model_predicts_like_the_adapted_model(name):
    model = adapted_model(CONFIGS[name])
    x = images()
    with torch.no_grad():
        adapted = model(x)
        plain = timm.create_model(ARCH, pretrained=False, **ARGS).eval()
        plain.load_state_dict(model.merged_state_dict())
        merged = plain(x)
        assert torch.equal(model(x), adapted)  # exporting left the adapted model untouched, bit for bit
        with model.disable_adapter():
            without_update = model(x)
    assert (merged - adapted).abs().max() < 1e-5
    assert torch.equal(merged.argmax(1), adapted.argmax(1))
    assert (merged - without_update).abs().max() > 1e-3  # the update really is in the merged weights


@pytest.mark.slow
def test_the_merged_checkpoint_loads_with_plain_timm_in_a_process_without_superlora(tmp_path):
    model = adapted_model(CONFIGS["lorta-fastfood-shuffle"])
    x = images()
    with torch.no_grad():
        expected = model(x)
    folder = export_merged(model, tmp_path / "merged", CLASSES)
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == ARCH and config["num_classes"] == 3 and config["label_names"] == CLASSES
    assert "timm.create_model('deit_tiny_patch16_224', pretrained=True, num_classes=3" in \
        timm_load_snippet(folder, config)
    torch.save(x, tmp_path / "x.pt")
    script = f"""
import sys, timm, torch
model = timm.create_model({ARCH!r}, pretrained=True, img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                          num_classes=3, pretrained_cfg_overlay=dict(file={str(folder / 'model.safetensors')!r},
                                                                     num_classes=3)).eval()
with torch.no_grad():
    torch.save(model(torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True)), {str(tmp_path / 'y.pt')!r})
assert not any(name.startswith("superlora") for name in sys.modules), "superlora was imported"
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    logits = torch.load(tmp_path / "y.pt", weights_only=True)
    assert (logits - expected).abs().max() < 1e-5


def test_onnx_matches_pytorch_within_1e_4_with_onnxruntime(tmp_path):
    import onnx
    import onnxruntime

    model = adapted_model(CONFIGS["lokr"])
    report = export_onnx(model, tmp_path / "model.onnx", CLASSES)
    assert report.max_abs_difference is not None and report.max_abs_difference < 1e-4
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    x = images(batch=7)  # another batch size than the export's: the batch axis is dynamic
    (logits,) = session.run(["logits"], {"pixel_values": x.numpy()})
    with torch.no_grad():
        expected = model(x)
    assert logits.shape == (7, 3)
    assert (torch.from_numpy(logits) - expected).abs().max() < 1e-4
    metadata = {p.key: p.value for p in onnx.load(str(report.path)).metadata_props}
    assert json.loads(metadata["classes"]) == CLASSES
    assert json.loads(metadata["data_config"])["input_size"] == [3, 16, 16]


def test_export_writes_all_three_formats_and_the_adapter_round_trips(tmp_path):
    model = adapted_model(CONFIGS["lora"])
    written = export(model, tmp_path / "out", classes=CLASSES, metadata={"base_model": None})
    assert set(written) == {"adapter", "merged", "onnx"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["adapter", "merged", "model.onnx"]
    torch.manual_seed(0)
    reloaded = SuperLoRAModel.from_pretrained(timm.create_model(ARCH, pretrained=False, **ARGS), written["adapter"])
    x = images()
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(x), model(x))
    config = json.loads((written["adapter"] / "adapter_config.json").read_text())
    assert config["metadata"]["classes"] == CLASSES
    with pytest.raises(ConfigError, match="unknown export format 'tflite'"):
        export(model, tmp_path / "other", ["tflite"])
