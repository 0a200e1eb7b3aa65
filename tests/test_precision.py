"""Mixed precision: every preset and every factoring, projection, split and shuffle under CPU autocast (bf16 and
fp16, the same dispatcher paths as CUDA autocast), ΔW built in float32, the separate 16-bit delta path, the
normalised Fastfood transform in fp16, and `superlora train --precision bf16` for every preset."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from superlora import PRESETS, SuperLoRAConfig, get_superlora_model, preset
from superlora import layers
from superlora.functional import projection as proj

from toy_models import randomize_trainable, tiny_vit, vit_input

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Relative tolerance of a 16-bit forward against float32 on the tiny ViT (bf16 keeps 8 bits of mantissa).
OUTPUT_TOLERANCE = {"bf16": 0.08, "fp16": 0.01}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


def _check_autocast_step(config: SuperLoRAConfig, dtype_name: str) -> None:
    """One forward and backward under autocast: finite outputs and gradients, close to the float32 forward."""
    wrapped = get_superlora_model(tiny_vit(), config)
    randomize_trainable(wrapped, scale=0.2)
    x = vit_input(4)
    with torch.no_grad():
        reference = wrapped(x)
    with torch.autocast("cpu", dtype=DTYPES[dtype_name]):
        out = wrapped(x)
        # ΔW is float32 whatever the autocast; only the layers' matmuls run in 16 bits.
        assert all(d.dtype == torch.float32 for d in wrapped.adapter.delta_weights(include_direct=True).values())
    assert out.dtype == DTYPES[dtype_name]
    assert torch.isfinite(out).all()
    assert _relative(out, reference) < OUTPUT_TOLERANCE[dtype_name]
    out.float().square().mean().backward()
    grads = [p.grad for p in wrapped.adapter.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_trains_under_autocast(name, dtype_name):
    _check_autocast_step(preset(name, rank=2), dtype_name)


VARIANTS = {
    "tucker": dict(order=3, factoring="tucker", rank=2),
    "tucker-identity-mode": dict(order=3, factoring="tucker", rank=2, uncompressed_modes=(0,)),
    "full": dict(order=2, factoring="full", groups=4, grouping="layer"),
    "hadamard": dict(order=2, factoring="hadamard", rank=2),
    "kronecker-lora": dict(order=2, splits=2, factoring="lora", rank=2),
    "kronecker-full-tucker": dict(order=3, splits=2, factoring=("full", "tucker"), rank=2),
    "fastfood": dict(order=2, rank=2, projection="fastfood", ratio=0.5),
    "gaussian": dict(order=2, rank=2, projection="gaussian", ratio=0.5),
    "tucker-fastfood-shuffle": dict(order=3, factoring="tucker", rank=2, projection="fastfood", ratio=0.25,
                                    shuffle=True),
    "shuffle": dict(order=2, rank=2, shuffle=True, groups=3),
}


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_factoring_projection_and_shuffle_trains_under_autocast(variant, dtype_name):
    _check_autocast_step(SuperLoRAConfig(**VARIANTS[variant]), dtype_name)


def test_a_model_cast_to_bfloat16_still_builds_delta_in_float32():
    wrapped = get_superlora_model(tiny_vit(), preset("lorta", rank=2))
    randomize_trainable(wrapped, scale=0.2)
    x = vit_input(2)
    with torch.no_grad():
        reference = wrapped(x)
    wrapped.to(torch.bfloat16)
    out = wrapped(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert _relative(out, reference) < 0.1
    assert all(d.dtype == torch.float32 for d in wrapped.adapter.delta_weights().values())
    out.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in wrapped.adapter.parameters())


def test_fastfood_stays_finite_in_fp16_on_a_group_of_2_to_the_22_entries():
    size = 2**22
    in_size = 2**21 + 3  # a block of n = 2^22: two unnormalised transforms would grow values by 2^22
    params = proj.fastfood_params(in_size, size, seed=0)
    x = torch.randn(in_size, generator=torch.Generator().manual_seed(0)) * 0.02  # ordinary factor entries
    reference = proj.fastfood(x, params, size)
    # The map keeps norms: E||F x||^2 = ||x||^2.
    assert float(reference.norm()) == pytest.approx(float(x.norm()), rel=0.05)
    with torch.autocast("cpu", dtype=torch.float16):
        half = proj.fastfood(x, params, size)
    assert torch.isfinite(half).all()
    assert _relative(half, reference) < 0.01


class _OneLinear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(64, 64, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _layer_update_errors(dtype: torch.dtype) -> tuple[float, float]:
    """Error of the update's effect x (sΔW)^T in an adapted 16-bit layer, against merging W + sΔW and casting."""
    gen = torch.Generator().manual_seed(0)
    model = _OneLinear()
    with torch.no_grad():
        model.fc.weight.copy_(torch.randn(64, 64, generator=gen) * 0.05)
    wrapped = get_superlora_model(model, SuperLoRAConfig(targets=("fc",), factoring="full"), trainable=())
    randomize_trainable(wrapped)
    (delta,) = wrapped.delta_weights().values()
    weight = model.fc.weight.detach()
    wrapped.runtime.scaling *= 0.01 * float(weight.norm() / delta.norm())  # an update 1 % of the weights' size
    (delta,) = wrapped.delta_weights().values()
    x = torch.randn(128, 64, generator=gen)
    exact = x @ delta.T
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        base = F.linear(x, weight).float()
        adapted = wrapped(x).float() - base
        merged = F.linear(x, weight + delta).float() - base
    return _relative(adapted, exact), _relative(merged, exact)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_a_16_bit_layer_keeps_more_of_a_small_update_than_merging_would(dtype_name):
    adapted, merged = _layer_update_errors(DTYPES[dtype_name])
    assert adapted < 0.7 * merged


def test_the_layer_takes_the_separate_path_only_in_16_bit(monkeypatch):
    wrapped = get_superlora_model(tiny_vit(), preset("lorta", rank=2))
    randomize_trainable(wrapped, scale=0.2)
    calls = []
    original = layers._LinearWithRowUpdates.apply
    monkeypatch.setattr(layers._LinearWithRowUpdates, "apply", lambda *a: calls.append(1) or original(*a))
    x = vit_input(2)
    reference = wrapped(x)  # float32: the fused custom-gradient path, one matmul per adapted layer
    assert len(calls) == len(list(wrapped._adapted_layers())) == 2
    calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = wrapped(x)
    assert calls == []
    assert _relative(out, reference) < OUTPUT_TOLERANCE["bf16"]


@pytest.mark.slow
def test_cli_train_with_bf16_works_for_every_preset(tmp_path, capsys):
    from superlora.cli import main
    from superlora.base_models import build_hybrid_vit, save_model

    from train_helpers import colour_images

    image_set = colour_images(per_class=4)
    for index, (image, label) in enumerate(zip(image_set.images, image_set.labels)):
        folder = tmp_path / "data" / image_set.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:03d}.png")
    save_model(build_hybrid_vit(img_size=32, embed_dim=32, depth=1, num_heads=2, num_classes=3), tmp_path / "model")
    for name in PRESETS:
        run = tmp_path / "runs" / name
        code = main(["train", str(tmp_path / "data"), "--model", str(tmp_path / "model"), "--preset", name,
                     "--rank", "2", "--steps", "2", "--batch-size", "4", "--precision", "bf16", "--device", "cpu",
                     "--output", str(run)])
        err = capsys.readouterr().err
        assert code == 0, f"{name}: {err}"
        record = json.loads((run / "metrics.json").read_text())
        assert record["status"] == "done" and record["step"] == 2, name
        losses = [row[key] for row in record["history"] for key in ("train_loss", "val_loss")]
        assert losses and all(0 < loss < 10 for loss in losses), (name, losses)  # finite, not NaN


def _smoke_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "gpu_smoke.py"
    spec = importlib.util.spec_from_file_location("gpu_smoke", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_smoke_script_checks_itself_on_a_cpu(tmp_path):
    smoke = _smoke_script()
    out = tmp_path / "smoke.md"
    code = smoke.main(["--device", "cpu", "--tiny", "--steps", "2", "--batch-size", "4", "--presets", "lorta", "lora",
                       "--out", str(out)])
    report = json.loads(out.with_suffix(".json").read_text())
    assert code == 0 and report["passed"]
    assert [(c["preset"], c["dtype"]) for c in report["cases"]] == [
        ("lorta", "bf16"), ("lorta", "fp16"), ("lora", "bf16"), ("lora", "fp16")]
    assert all(c["grads_finite"] and c["output_rel_error"] < 0.1 for c in report["cases"])
    assert "| lorta | fp16 |" in out.read_text() and report["engine_speed"] is None


def test_the_gpu_smoke_script_fails_when_a_check_fails(tmp_path, monkeypatch):
    smoke = _smoke_script()
    monkeypatch.setattr(smoke, "get_superlora_model", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("broken")))
    out = tmp_path / "smoke.md"
    code = smoke.main(["--device", "cpu", "--tiny", "--steps", "1", "--presets", "lora", "--out", str(out)])
    assert code == 1 and "NO: RuntimeError: broken" in out.read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without CUDA")
def test_the_gpu_smoke_script_exits_2_without_cuda(tmp_path, capsys):
    assert _smoke_script().main(["--out", str(tmp_path / "smoke.md")]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "smoke.md").exists()
