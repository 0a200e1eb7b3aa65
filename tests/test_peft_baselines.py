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
    # the sweep of one lr on seed 0 (the protocol at its smallest); which images each run got right, as its accuracy
    for r in rows:
        right = pb.decode_correct(r["val_correct"], int(r["val_size"]))
        assert r["phase"] == "sweep" and len(right) == int(r["val_size"]) == 12
        assert sum(right) / len(right) == pytest.approx(float(r["accuracy"]))
    # and --quick analysed them into its folder
    assert (out / "peft_baselines_inspection.png").read_bytes()[:4] == b"\x89PNG"
    page = (out / "benchmarks.md").read_text()
    assert pb.BEGIN in page and "| 30 | 15–30 | " in page and "Partial" not in page
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
    assert sum(pb.decode_correct(added["val_correct"], 12)) / 12 == pytest.approx(float(added["accuracy"]))


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


# ---------------------------------------------------------------------------------------------------- protocol
lr_text = pb.pareto.lr_text
GRID = [lr_text(lr) for lr in pb.DEFAULT_LRS]


def _points():
    """FourierFT matched to 30 and SuperLoRA's LoRA r=1 on whole qkv: one point of each side."""
    from superlora import preset

    lora = pb.SuperLoRAPoint("lora", "LoRA", "r=1", preset("lora", rank=1, targets=("qkv",)), 4608)
    return pb.study_points(LAYERS, ["fourierft"], [30], [lora])


def _run(point, seed, lr, accuracy, phase="sweep", task="digits", loss=1.0):
    return dict(task=task, phase=phase, family=point.family, method=point.method, config_hash=point.config_hash,
                seed=seed, lr=float(lr), accuracy=accuracy, val_loss=loss, status="ok")


def _jobs(rows, points, **kwargs):
    return [(j.phase, j.point.method, j.seed, lr_text(j.lr)) for j in pb.pending_jobs(rows, ["digits"], points,
                                                                                         [0, 1, 2], **kwargs)]


def test_each_point_sweeps_its_own_lr_on_seed_0_extends_past_an_edge_at_most_twice_then_runs_the_seeds():
    fourier, lora = points = _points()
    assert (fourier.method, fourier.target_budget, lora.method, lora.target_budget) == \
        ("FourierFT", 30, "LoRA (qkv)", 4608)
    # nothing on file: the whole grid on seed 0 for both sides, nothing else
    assert _jobs([], points) == [("sweep", p.method, 0, lr) for p in points for lr in GRID]
    # FourierFT is best at the largest lr, LoRA at the smallest: each extends past its edge by 4x
    rows = [_run(fourier, 0, lr, acc) for lr, acc in zip(GRID, (0.5, 0.6, 0.7, 0.8))]
    rows += [_run(lora, 0, lr, acc) for lr, acc in zip(GRID, (0.9, 0.6, 0.5, 0.4))]
    assert _jobs(rows, points) == [("sweep", "FourierFT", 0, "0.256"), ("sweep", "LoRA (qkv)", 0, "0.00025")]
    # FourierFT improves twice more and stops at its second extension; LoRA's extension is worse: 1e-3 stays
    rows += [_run(fourier, 0, 0.256, 0.85), _run(lora, 0, 0.00025, 0.7)]
    assert _jobs(rows, points) == [("sweep", "FourierFT", 0, "1.024"), ("main", "LoRA (qkv)", 1, "0.001"),
                                   ("main", "LoRA (qkv)", 2, "0.001")]
    rows += [_run(fourier, 0, 1.024, 0.9)]
    assert _jobs(rows, points) == [("main", "FourierFT", 1, "1.024"), ("main", "LoRA (qkv)", 1, "0.001"),
                                   ("main", "FourierFT", 2, "1.024"), ("main", "LoRA (qkv)", 2, "0.001")]
    rows += [_run(p, seed, lr, 0.8, "main") for p, lr in ((fourier, 1.024), (lora, 1e-3)) for seed in (1, 2)]
    assert _jobs(rows, points) == []
    # the analysis chooses the same lrs from the rows ("edge": FourierFT's is the largest it tried)
    assert pb.chosen_lr([r for r in rows if r["method"] == "FourierFT"]) == (1.024, "sweep", True)
    assert pb.chosen_lr([r for r in rows if r["method"] == "LoRA (qkv)"]) == (1e-3, "sweep", False)


def test_given_lrs_run_exactly_on_every_seed_and_the_analysis_takes_the_best_on_the_first_seed():
    fourier, lora = points = _points()
    assert _jobs([], points, fixed_lrs=[0.004, 0.016]) == [
        ("main", p.method, seed, lr) for seed in (0, 1, 2) for p in points for lr in ("0.004", "0.016")]
    rows = [_run(fourier, 0, 0.004, 0.6, "main"), _run(fourier, 0, 0.016, math.nan, "main"),
            _run(fourier, 1, 0.016, 0.9, "main")]
    assert pb.chosen_lr(rows) == (0.004, "fixed", True)
    assert _jobs(rows, points, fixed_lrs=[0.004, 0.016])[:2] == [("main", "LoRA (qkv)", 0, "0.004"),
                                                                 ("main", "LoRA (qkv)", 0, "0.016")]


def test_an_unfinished_sweep_has_no_lr_yet():
    fourier, _ = _points()
    rows = [_run(fourier, 0, lr, 0.5) for lr in GRID[:3]]
    assert pb.chosen_lr(rows) == (None, "sweep", False)


# ---------------------------------------------------------------------------------------------------- analysis
def test_per_image_correctness_round_trips_as_hex_digits():
    assert pb.encode_correct([True, False, True, True, False]) == "0d"  # 1 + 4 + 8
    assert pb.decode_correct("0d", 5) == (True, False, True, True, False)
    assert pb.encode_correct([]) == "" and pb.decode_correct("", 5) == ()
    assert pb.decode_correct(pb.encode_correct([True] * 500), 500) == (True,) * 500
    with pytest.raises(ValueError, match="beyond image 4"):
        pb.decode_correct("3f", 5)


def test_the_bootstrap_interval_is_fixed_contains_the_mean_and_draws_seeds_and_images():
    import numpy as np

    correct = np.random.default_rng(3).random((3, 128)) < 0.7
    low, high = pb.bootstrap_interval(correct)
    assert (low, high) == pb.bootstrap_interval(correct)  # a fixed RNG seed: the page regenerates identically
    assert low < correct.mean() < high and 0.05 < high - low < 0.3
    assert pb.bootstrap_interval(np.ones((3, 50), dtype=bool)) == (1.0, 1.0)
    # two seeds, one all wrong and one all right: a quarter of the resamples draw only one of them
    assert pb.bootstrap_interval([[False] * 40, [True] * 40]) == (0.0, 1.0)
    # more images, same rate and seeds: a narrower interval
    wide = np.diff(pb.bootstrap_interval(correct[:, :32]))[0]
    assert np.diff(pb.bootstrap_interval(correct))[0] < wide
    low, high = pb.seed_interval([0.5, 0.7, 0.9])
    assert 0.5 <= low < 0.7 < high <= 0.9 and pb.seed_interval([0.6]) == (0.6, 0.6)


def _result(method, params, mean, interval, family="fourierft"):
    return pb.PointResult(task="digits", family=family, method=method, budget="b", params=params, lr=4e-3,
                          accuracies=(mean,), failed=0, config_hash=f"{method}{params}", target_budget=params,
                          rule="sweep", edge=False, seeds=(0,), interval=interval, interval_over="seeds × images")


def test_the_best_method_at_a_budget_comes_from_half_the_budget_to_the_budget():
    results = [
        _result("TinyLoRA", 30, 0.99, (0.98, 1.0), "tinylora"),  # best of all, but only in the 30 row
        _result("FourierFT", 1000, 0.95, (0.93, 0.97)),
        _result("LoNKr K=2 (qkv)", 700, 0.85, (0.82, 0.88), "lonkr"),
        _result("LoNKr K=2 (qkv)", 464, 0.97, (0.95, 0.99), "lonkr"),  # below 500: not in the 1,000 row
        _result("LoRTA M=3 (qkv)", 2624, 0.81, (0.78, 0.84), "lorta"),
        _result("LoRTA M=3 (qkv)", 1560, 0.805, (0.77, 0.84), "lorta"),  # the same method: never the runner-up
        _result("Uni-LoRA", 3000, 0.79, (0.75, 0.83), "unilora"),
        _result("FourierFT", 3000, 0.70, (0.66, 0.74)),
    ]
    rows = {h.budget: h for h in pb.headline(results)}
    assert list(rows) == [30, 100, 300, 1000, 3000]
    assert rows[30].best.method == "TinyLoRA" and rows[30].runner_up is None and rows[30].other_side is None
    assert rows[100].best is None and rows[300].best is None  # nothing between 50 and 100, 150 and 300
    assert pb.window(1000) == (500, 1000)
    best, runner, other = rows[1000].best, rows[1000].runner_up, rows[1000].other_side
    assert (best.method, best.params, runner.behind.params) == ("FourierFT", 1000, 700)
    assert runner.margin == pytest.approx(0.10) and not runner.overlap and runner.verdict == "FourierFT ahead"
    assert other.behind is runner.behind  # the best SuperLoRA point is also the runner-up
    best, runner, other = rows[3000].best, rows[3000].runner_up, rows[3000].other_side
    assert (best.method, best.params) == ("LoRTA M=3 (qkv)", 2624)
    assert (runner.behind.method, runner.behind.params) == ("Uni-LoRA", 3000)
    assert runner.margin == pytest.approx(0.02) and runner.overlap and runner.verdict == "within noise"
    assert other.behind.method == "Uni-LoRA"
    table = "\n".join(pb.headline_markdown(pb.headline(results)))
    assert ("| 1,000 | 500–1,000 | FourierFT, 1,000 params | 95.0 [93.0, 97.0] | LoNKr K=2 (qkv), 700 params | "
            "85.0 [82.0, 88.0] | +10.0 | FourierFT ahead |") in table
    assert "| 100 | 50–100 | no point measured |" in table


VAL = 8  # validation images of the hand-made rows


def _csv_row(point, seed, lr, right, phase="sweep", task="digits"):
    """A full results row whose run got the first `right` of VAL validation images right."""
    row = {name: "" for name in pb.COLUMNS}
    row.update(_run(point, seed, lr, right / VAL, phase, task), budget=point.budget, lr=lr_text(lr),
               adapter_params=point.target_budget, target_budget=point.target_budget, head_params=1930,
               base_params=1, update_size=1, lora_r1_params=1, steps=100, batch_size=32, head_lr="0.005",
               num_classes=10, train_size=100, val_size=VAL, seconds=60.0, seconds_per_step=0.5,
               cpu_seconds_per_step=0.5, threads=1, model="superlora-default", setup="abc", targets="qkv",
               val_correct=pb.encode_correct([i < right for i in range(VAL)]))
    return row


def test_analyse_writes_the_figure_and_the_block_and_marks_partial_results(tmp_path):
    from superlora import preset

    fourier, unilora = pb.study_points(LAYERS, ["fourierft", "unilora"], [30])
    lorta = pb.study_points(LAYERS, [], [], [pb.SuperLoRAPoint(
        "lorta", "LoRTA M=5", "r=1", preset("lora", rank=1, targets=("qkv",)), 28)])[0]
    path = pb.results_path(tmp_path, "digits")
    rows = [_csv_row(fourier, 0, lr, right) for lr, right in zip(pb.DEFAULT_LRS, (2, 6, 4, 3))]
    rows += [_csv_row(fourier, 1, 4e-3, 7, "main"), _csv_row(fourier, 2, 4e-3, 5, "main")]  # 6, 7, 5: 75 %
    rows += [_csv_row(unilora, 0, lr, 4) for lr in pb.DEFAULT_LRS[:2]]  # its sweep is unfinished
    rows += [_csv_row(lorta, 0, lr, right) for lr, right in zip(pb.DEFAULT_LRS, (1, 2, 4, 3))]
    rows += [_csv_row(lorta, 1, 1.6e-2, 6, "main")]  # 4, 6: 62.5 %; seed 2 missing
    for row in rows:
        pb.TABLE.append(path, row)
    docs = tmp_path / "page.md"
    docs.write_text(f"# page\n\nprose before\n\n{pb.BEGIN}\nold\n{pb.END}\n\nprose after\n")
    expected = [p.key for p in (fourier, unilora, lorta)]
    written = pb.analyse(tmp_path, docs, tmp_path / "figures", expected=expected, seeds=[0, 1, 2])
    figure = tmp_path / "figures" / "peft_baselines_digits.png"
    assert written["figures"] == [figure] and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert written["partial"] == ["digits"]
    text = docs.read_text()
    assert text.startswith("# page\n\nprose before\n\n") and text.endswith(f"{pb.END}\n\nprose after\n")
    assert "old" not in text and "](figures/peft_baselines_digits.png)" in text
    assert ("**Partial results: 1 of 3 points have all 3 seeds at their chosen lr; 1 have fewer, 1 are still in "
            "their lr sweep and 0 have no run yet.**") in text
    assert "| 30 | 15–30 | FourierFT, 30 params | 75.0 [" in text
    assert "| LoRTA M=5 (qkv), 28 params | 62.5 [" in text and "| +12.5 | within noise |" in text
    assert "| FourierFT | n_frequency=5, scaling=300 | 30 | 0.004 | 75.0 ± 12.5 | 3 |" in text
    assert "| LoRTA M=5 (qkv) | r=1 | 28 | 0.016 | 62.5 ± 17.7 | 2 |" in text and "Uni-LoRA |" not in text
    (fourier_result, lorta_result) = sorted(written["results"]["digits"], key=lambda p: p.method)
    assert fourier_result.interval == pb.bootstrap_interval(
        [[i < right for i in range(VAL)] for right in (6, 7, 5)])
    assert pb.analyse(tmp_path, docs, tmp_path / "figures", expected=expected, seeds=[0, 1, 2])
    assert docs.read_text() == text  # regenerated byte for byte
    with pytest.raises(SystemExit, match="no peft_baselines_<task>.csv"):
        pb.analyse(tmp_path / "empty", docs)


def test_the_docs_page_has_the_generated_block_inside_the_peft_section():
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    section = text.index("## PEFT's few-parameter methods beside SuperLoRA")
    following = text.index("\n## ", section + 1)
    assert section < text.index(pb.BEGIN) < text.index(pb.END) < following
