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
    # fixed values: FourierFT keeps its frequency positions outside the buffers; Uni-LoRA maps every entry of a
    # rank-4 LoRA (2 x (4 x 32 + 96 x 4)) to theta_d with an index and a scale
    assert {r["family"]: int(r["fixed_values"]) for r in rows} == {"fourierft": 0, "unilora": 2 * 2 * (128 + 384)}
    before = path.read_text()
    capsys.readouterr()
    assert pb.main(["--quick", "--model", str(tiny_model), "--out", str(out)]) == 0  # in-process: no start-up cost
    assert "2 runs on file, 0 to run" in capsys.readouterr().out
    assert path.read_text() == before

    # --superlora adds the smallest SuperLoRA point on the same whole-qkv targets, trained by train() itself
    smallest = min(pb.superlora_points(str(tiny_model))[0], key=lambda p: p.count)
    assert pb.main(["--quick", "--superlora", "--model", str(tiny_model), "--out", str(out)]) == 0
    assert "2 runs on file, 1 to run" in capsys.readouterr().out
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert path.read_text().startswith(before) and len(rows) == 3
    added = rows[-1]
    assert added["method"] == f"{smallest.method} (qkv)" and added["family"] == smallest.family
    assert int(added["adapter_params"]) == smallest.count and '"targets":["qkv"]' in added["config"]
    assert added["status"] == "ok" and math.isfinite(float(added["accuracy"])) and added["setup"] == rows[0]["setup"]


def test_quick_refuses_to_write_into_the_committed_results():
    with pytest.raises(SystemExit, match="never writes"):
        pb.main(["--quick", "--out", str(pb.RESULTS)])


@pytest.mark.parametrize("method", pb.METHODS)
def test_every_method_trains_its_adapter_and_the_head_at_its_smallest_size(method, tiny_model):
    """Two steps of each method on the tiny ViT (2 blocks, qkv 96 x 32): finite numbers, and both the adapter
    and the head moved (the gradient reaches them through PEFT's layers)."""
    import torch
    from accelerate.utils import set_seed

    from superlora.train import TrainOptions

    layers = pb.target_layers(pb.build_base(str(tiny_model), 4))
    m = pb.match(method, pb.smallest_count(method, layers), layers)
    set_seed(0)  # the initial values train_peft starts from: same seed, then the head, then the adapter
    start = pb.wrap(pb.build_base(str(tiny_model), 4), m, seed=0)
    before = {n: p.detach().clone() for n, p in start.named_parameters() if p.requires_grad}
    train_set, val_set = pb.pareto.task_sets("inspection", pb.pareto.QUICK_TASKS["inspection"])
    options = TrainOptions(steps=2, batch_size=8, lr=1e-2, head_lr=5e-3, seed=0, eval_every_epoch=False, device="cpu")
    outcome = pb.train_peft(str(tiny_model), train_set, val_set, lambda seed: pb.peft_config(m, seed), options)
    assert outcome.status == "ok" and math.isfinite(outcome.val_loss) and math.isfinite(outcome.train_loss)
    assert outcome.adapter == m.count and outcome.head == 32 * 4 + 4
    after = {n: p.detach() for n, p in outcome.model.named_parameters() if p.requires_grad}
    assert after.keys() == before.keys()
    moved = {n for n in after if not torch.equal(after[n], before[n])}
    assert any(".modules_to_save." in n for n in moved), "the head did not train"
    assert any(".modules_to_save." not in n for n in moved), f"{m.name}: no adapter parameter moved"


def test_plan_writes_the_summary_with_hand_counted_numbers(tiny_model, tmp_path, capsys):
    # tiny ViT: 2 blocks, qkv 96 x 32. VeRA: 2 x (96 + r), smallest 194, at 300 r = 54. RandLoRA: smallest r = 32
    # (one basis: 2 x (32 + 32) = 128), at 300 r = 118 (2 x (118 + 32)). FourierFT and Uni-LoRA hit the budget.
    path = tmp_path / "plan.md"
    assert pb.main(["plan", "--model", str(tiny_model), "--budgets", "300", "30", "--markdown", str(path)]) == 0
    text = path.read_text()
    assert text == capsys.readouterr().out.rstrip("\n") + "\n"
    assert "| VeRA | – | 300 | 194 |" in text
    assert "| RandLoRA | – | 300 | 128 |" in text
    assert "| FourierFT | 30 | 300 | 2 |" in text and "| Uni-LoRA | 30 | 300 | 1 |" in text
    assert "| VeRA | 30 | smallest: r=1 | over budget (194) |" in text
    assert "| RandLoRA | 300 | r=118, randlora_alpha=2360 | 300 |" in text
