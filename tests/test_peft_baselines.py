"""The PEFT few-parameter baselines (benchmarks/peft_baselines.py): budget matching (never over the budget, equal
to PEFT's own count), whole-qkv targets, the training loop against `superlora.train.train`, and a real `--quick`
run that a second start skips."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "peft_baselines.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("peft_baselines_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


pb = _load_script()
DEFAULT = pb.DEFAULT_MODEL
# The default model's targets: 6 blocks, each with one fused qkv Linear of 576 x 192.
LAYERS = [pb.Layer(f"blocks.{i}.attn.qkv", 576, 192) for i in range(6)]


@pytest.fixture(scope="module")
def default_base():
    """The default architecture with a 4-class head (random weights: counts depend on shapes only)."""
    return pb.build_base(DEFAULT, 4, pretrained=False)


def test_the_default_models_targets_are_its_six_whole_qkv_linears(default_base):
    assert pb.target_layers(default_base) == LAYERS


def test_smallest_configs_are_the_hand_counted_ones():
    # VeRA: per layer lambda_b (576) + lambda_d (r=1); RandLoRA r=192: one basis, lambda 192x1 + gamma 1x192;
    # VB-LoRA: 2 vectors of 64 + per layer r * 2 * (192 + 576) / 64 logits; the others reach one parameter.
    assert pb.smallest_count("vera", LAYERS) == 6 * (576 + 1) == 3462
    assert pb.smallest_count("randlora", LAYERS) == 6 * (192 + 192) == 2304
    assert pb.smallest_count("vblora", LAYERS) == 2 * 64 + 6 * 2 * (192 + 576) // 64 == 272
    assert pb.smallest_count("unilora", LAYERS) == 1
    assert pb.smallest_count("tinylora", LAYERS) == 1
    assert pb.smallest_count("fourierft", LAYERS) == 6


@pytest.mark.parametrize("method", pb.METHODS)
def test_a_matched_count_never_exceeds_its_budget_and_is_the_largest_that_fits(method):
    budgets = [*range(1, 400, 7), *range(400, 10_000, 97), *pb.STANDARD_BUDGETS, 9999]
    previous = 0
    for budget in sorted(budgets):
        m = pb.match(method, budget, LAYERS)
        assert m.count == pb.count(method, m.settings, LAYERS)
        if pb.fits(m):
            assert m.count <= budget
            assert m.count >= previous  # a larger budget never gets a smaller config
            previous = m.count
        else:
            assert m.count == pb.smallest_count(method, LAYERS) > budget
        # no other candidate of the method fits the budget better
        best = max((pb.count(method, s, LAYERS) for s, _ in pb._candidates(method, budget, LAYERS)
                    if pb.count(method, s, LAYERS) <= budget), default=None)
        assert best is None or m.count == best


def test_methods_with_a_free_knob_hit_every_budget_exactly():
    for budget in (30, 31, 100, 301, 1000, 4607):
        for method in ("fourierft", "unilora", "tinylora"):
            assert pb.match(method, budget, LAYERS).count == budget, (method, budget)


@pytest.mark.parametrize("method", pb.METHODS)
def test_counts_equal_pefts_own_count_minus_the_head_on_the_whole_qkv_of_every_block(method, default_base):
    budgets = [*pb.STANDARD_BUDGETS, 31, 464, 1504, 4608, 9216]
    seen = set()
    for budget in budgets:
        m = pb.match(method, budget, LAYERS)
        if m.key in seen:
            continue
        seen.add(m.key)
        import copy

        pm = pb.wrap(copy.deepcopy(default_base), m, seed=1)
        trainable, _ = pm.get_nb_trainable_parameters()
        adapter, head = pb.peft_counts(pm)
        assert head == 192 * 4 + 4  # the whole head, trained (modules_to_save)
        assert adapter == trainable - head == m.count, (method, budget, m.describe())
        assert sorted(pm.base_model.targeted_module_names) == [layer.name for layer in LAYERS]


def test_superlora_comparison_points_use_whole_qkv_targets():
    from superlora.base_models import create_meta_model
    from superlora.targets import resolve_targets

    points, skipped = pb.superlora_points(DEFAULT)
    assert points and all(p.count < pb.STUDY_LIMIT for p in points)
    meta = create_meta_model(DEFAULT, num_classes=2)
    for point in points:
        assert point.config.targets == ("qkv",)
        targets = resolve_targets(meta, point.config.targets)
        assert [(t.name, t.rows, t.shape) for t in targets] == [(l.name, (0, 576), (576, 192)) for l in LAYERS]
    # LoRA r=1 on whole qkv: 6 x (576 + 192)
    assert any(p.method == "LoRA" and p.budget == "r=1" and p.count == 4608 for p in points)
    assert all("grouping='layer'" in text for text in skipped)  # G=8 layer grouping needs 8 targets, there are 6


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from superlora.base_models import build_hybrid_vit, save_model

    folder = tmp_path_factory.mktemp("tiny-model")
    save_model(build_hybrid_vit(img_size=32, embed_dim=32, depth=2, num_heads=2, num_classes=3), folder)
    return folder


def test_the_peft_loop_follows_train_when_only_the_head_moves(tiny_model):
    """With a vanishing adapter lr and no clipping (whose norm would include the adapters' different gradients),
    both loops train the same head on the same batches with the same schedule: the losses must agree."""
    import peft

    from superlora import preset
    from superlora.train import TrainOptions, train

    train_set, val_set = pb.pareto.task_sets("inspection", pb.pareto.QUICK_TASKS["inspection"])
    options = TrainOptions(steps=4, batch_size=8, lr=1e-12, head_lr=5e-2, seed=3, eval_every_epoch=False,
                           device="cpu", grad_clip=None)
    ours = pb.train_peft(str(tiny_model), train_set, val_set,
                         lambda seed: peft.LoraConfig(r=1, target_modules=["qkv"], modules_to_save=["head"]), options)
    theirs = train(str(tiny_model), train_set, val_set, preset("lora", rank=1, targets=("qkv",)), options)
    assert ours.status == "ok"
    assert ours.val_loss == pytest.approx(theirs.metrics["loss"], rel=1e-4)
    assert ours.train_loss == pytest.approx(theirs.history[-1]["train_loss"], rel=1e-4)
    assert ours.accuracy == theirs.best_accuracy
    assert len(ours.step_times) == 4


def run_quick(model: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--model", str(model), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_quick_run_writes_finite_rows_and_a_second_start_skips_them(tiny_model, tmp_path, capsys):
    out = tmp_path / "quick"
    run_quick(tiny_model, out)  # as a user starts it: a script in its own process
    path = out / "peft_baselines_inspection.csv"
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == pb.COLUMNS
    assert {r["family"] for r in rows} == set(pb.QUICK_METHODS)
    for r in rows:
        assert r["status"] == "ok" and math.isfinite(float(r["accuracy"])) and 0 <= float(r["accuracy"]) <= 1
        assert math.isfinite(float(r["val_loss"]))
        assert int(r["adapter_params"]) == pb.QUICK_BUDGET  # both methods hit the budget exactly on 2 blocks
        assert int(r["head_params"]) == 32 * 4 + 4 and r["targets"] == "qkv" and int(r["steps"]) == 3
    before = path.read_text()
    capsys.readouterr()
    assert pb.main(["--quick", "--model", str(tiny_model), "--out", str(out)]) == 0  # in-process: no start-up cost
    assert "2 runs on file, 0 to run" in capsys.readouterr().out
    assert path.read_text() == before


def test_quick_refuses_to_write_into_the_committed_results():
    with pytest.raises(SystemExit, match="never writes"):
        pb.main(["--quick", "--out", str(pb.RESULTS)])
