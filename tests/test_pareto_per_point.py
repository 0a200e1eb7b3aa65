"""The Pareto study's per-point protocol (issue 12's fair re-run): which runs it schedules (every point its own
sweep, head-only over head lrs, seeds at the chosen and at the shipped default lr), the run lengths, the setup
fingerprint (the original study's rows stay valid), and a real `--quick --protocol per-point` run."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "pareto.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("pareto_script_pp", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


pareto = _load_script()
PP = pareto.PER_POINT


def point(family: str, budget: str = "r=1"):
    return next(p for p in pareto.study_grid() if p.family == family and p.budget == budget)


def sweep_row(p, lr, accuracy, task="inspection", seed=0, phase="sweep"):
    return {"task": task, "phase": phase, "family": p.family, "method": p.method, "budget": p.budget,
            "config_hash": p.key, "seed": seed, "lr": pareto.lr_text(lr), "status": "ok", "accuracy": accuracy,
            "val_loss": 1.0, "adapter_params": 100, "setup": "s"}


def keys(jobs):
    return [(j.phase, j.point.method, j.seed, pareto.lr_text(j.lr)) for j in jobs]


def test_the_protocol_grid_steps_by_two_around_the_shipped_defaults():
    from superlora.defaults import DEFAULT_HEAD_LR, DEFAULT_LR

    assert [pareto.lr_text(x) for x in PP.grid] == ["0.00375", "0.0075", "0.015", "0.03", "0.06"]
    assert PP.default_lr == DEFAULT_LR and DEFAULT_LR in PP.grid  # seed 0 at the default is a sweep run
    assert [pareto.lr_text(x) for x in PP.head_grid] == ["0.0025", "0.005", "0.01", "0.02", "0.04"]
    assert PP.default_head_lr == DEFAULT_HEAD_LR and DEFAULT_HEAD_LR in PP.head_grid
    # 400 steps below 1,000 adapter parameters (head-only's 0 included), the setup's steps from 1,000 on
    assert [PP.steps_for(n, 100) for n in (0, 31, 999, 1000, 36864)] == [400, 400, 400, 100, 100]
    assert pareto.FAMILY.steps_for(31, 100) == 100 and not pareto.FAMILY.per_point


def test_every_point_sweeps_its_own_lr_then_runs_its_seeds_at_the_chosen_and_the_default_lr():
    r1, r2 = point("lora", "r=1"), point("lora", "r=2")  # one family: the family protocol would sweep r=2 only
    jobs = pareto.pending_per_point([], ["inspection"], [r1, r2], [0, 1, 2], PP)
    assert keys(jobs) == [("sweep", p.method, 0, pareto.lr_text(lr)) for p in (r1, r2) for lr in PP.grid]
    assert len({j.point.budget for j in jobs}) == 2
    # r=1 best at 0.015 (inner), r=2 best at the default 0.03
    rows = [sweep_row(r1, lr, acc) for lr, acc in zip(PP.grid, (0.5, 0.6, 0.8, 0.7, 0.4))]
    rows += [sweep_row(r2, lr, acc) for lr, acc in zip(PP.grid, (0.5, 0.6, 0.7, 0.8, 0.4))]
    jobs = pareto.pending_per_point(rows, ["inspection"], [r1, r2], [0, 1, 2], PP)
    # seed 0 at both lrs is on file (sweep runs); seeds 1 and 2 at r=1's chosen 0.015 and at the default 0.03
    assert keys(jobs) == [("main", r1.method, 1, "0.015"), ("main", r1.method, 1, "0.03"),
                          ("main", r2.method, 1, "0.03"),
                          ("main", r1.method, 2, "0.015"), ("main", r1.method, 2, "0.03"),
                          ("main", r2.method, 2, "0.03")]
    assert all(j.head_lr is None for j in jobs)


def test_a_best_lr_at_the_edge_extends_the_sweep_by_factors_of_two_at_most_twice():
    p = point("lorta", "r=2")
    rows = [sweep_row(p, lr, acc) for lr, acc in zip(PP.grid, (0.1, 0.2, 0.3, 0.4, 0.5))]
    # the rows are the inspection task's: digits still sweeps its whole grid
    assert len(pareto.pending_per_point(rows, ["digits"], [p], [0], PP)) == len(PP.grid)
    assert keys(pareto.pending_per_point(rows, ["inspection"], [p], [0], PP)) == [("sweep", p.method, 0, "0.12")]
    rows.append(sweep_row(p, 0.12, 0.6))
    assert keys(pareto.pending_per_point(rows, ["inspection"], [p], [0], PP)) == [("sweep", p.method, 0, "0.24")]
    rows.append(sweep_row(p, 0.24, 0.7))
    # two extensions done: 0.24 is chosen; seed 0 at it and at the default are on file, so nothing is left
    assert keys(pareto.pending_per_point(rows, ["inspection"], [p], [0], PP)) == []
    assert keys(pareto.pending_per_point(rows, ["inspection"], [p], [0, 1], PP)) == [
        ("main", p.method, 1, "0.24"), ("main", p.method, 1, "0.03")]


def test_head_only_sweeps_its_head_lr():
    head = point("head-only", "0 params")
    jobs = pareto.pending_per_point([], ["inspection"], [head], [0, 1], PP)
    assert [(j.phase, pareto.lr_text(j.lr), pareto.lr_text(j.head_lr)) for j in jobs] == [
        ("sweep", pareto.lr_text(x), pareto.lr_text(x)) for x in PP.head_grid]
    rows = [sweep_row(head, lr, acc) for lr, acc in zip(PP.head_grid, (0.5, 0.6, 0.7, 0.8, 0.75))]
    jobs = pareto.pending_per_point(rows, ["inspection"], [head], [0, 1], PP)
    assert [(j.seed, pareto.lr_text(j.lr), pareto.lr_text(j.head_lr)) for j in jobs] == [
        (1, "0.02", "0.02"), (1, "0.01", "0.01")]  # the chosen head lr, then the shipped default head lr


def test_the_original_studys_rows_keep_their_setup_fingerprint():
    """Adding the protocol to the setup must not orphan the committed rows of the family study."""
    setup = pareto.Setup(pareto.DEFAULT_MODEL, pareto.weights_digest(pareto.DEFAULT_MODEL), pareto.STEPS,
                         pareto.BATCH_SIZE, pareto.HEAD_LR, tuple(pareto.TASKS.items()))
    for task in pareto.TASKS:
        with open(ROOT / "benchmarks" / "results" / f"pareto_{task}.csv", newline="") as handle:
            on_file = {r["setup"] for r in csv.DictReader(handle)}
        assert on_file == {setup.fingerprint(task)}
        per_point = pareto.Setup(*[getattr(setup, f) for f in ("model", "weights", "steps", "batch_size",
                                                               "head_lr", "tasks")], PP)
        assert per_point.fingerprint(task) != setup.fingerprint(task)


def test_the_plan_shows_each_points_steps_and_the_range_of_runs():
    text = pareto.plan_markdown(pareto.study_grid(), pareto.DEFAULT_MODEL, [0, 1, 2], 100, None, 4.0, 1,
                                dict(pareto.TASKS), PP)
    assert "Protocol: per-point." in text
    assert "| head-only | Head only | 0 params | 0 | 400 | yes |" in text  # 0 < 1,000: the long budget
    assert "| lora | LoRA | r=1 | 4,608 | 100 | yes |" in text
    assert "| fastfood | LoRTA M=5 ρ=0.01 | r=1 | 31 | 400 | yes |" in text
    points = len(pareto.study_grid())
    # each point: 5 sweep lrs + seeds 1, 2 at the chosen lr (+ seeds 1, 2 at the default where it differs)
    assert f"{7 * points}–{9 * points} runs per task" in text and f"at most {18 * points} runs" in text


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from superlora.base_models import build_hybrid_vit, save_model

    folder = tmp_path_factory.mktemp("pareto-pp-model") / "model"
    save_model(build_hybrid_vit(img_size=32, embed_dim=32, depth=2, num_heads=2, num_classes=3), folder)
    return folder


@pytest.mark.slow
def test_quick_per_point_run_records_steps_head_lrs_and_per_image_correctness(tiny_model, tmp_path):
    from benchmarks.study.intervals import decode_correct

    out = tmp_path / "quick"
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--protocol", "per-point", "--model",
                           str(tiny_model), "--out", str(out), "--tasks", "inspection", "--workers", "1"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "pareto_inspection.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == pareto.CORRECT_COLUMNS
        rows = list(reader)
    quick = pareto.quick_protocol(PP)
    # 3 adapter points and head-only, each over the quick grid's 2 lrs on seed 0 (no extension, one seed)
    assert len(rows) == 8 and {r["phase"] for r in rows} == {"sweep"}
    for r in rows:
        params = int(r["adapter_params"])
        assert int(r["steps"]) == (quick.long_steps if params < quick.long_below else 3)
        right = decode_correct(r["val_correct"], int(r["val_size"]))
        assert len(right) == int(r["val_size"]) == 12
        assert sum(right) / len(right) == pytest.approx(float(r["accuracy"]))
        if r["family"] == "head-only":
            assert params == 0 and r["head_lr"] == r["lr"] and r["lr"] in ("0.01", "0.02")
        else:
            assert r["head_lr"] == pareto.lr_text(pareto.DEFAULT_HEAD_LR)
    assert {int(r["steps"]) for r in rows} == {3, 4}  # both run lengths occur
    page = (out / "benchmarks.md").read_text()
    assert "pareto-per-point:begin" in page


def test_a_rank_scaling_leaves_the_points_with_one_rank_term_as_they_are():
    lora1, lora8, head = point("lora", "r=1"), point("lora", "r=8"), point("head-only", "0 params")
    scaled = pareto.with_rank_scaling([lora1, lora8, head], "sqrt")
    assert [pareto.rank_terms(p, pareto.DEFAULT_MODEL) for p in (lora1, lora8, head)] == [1, 8, 1]
    assert scaled[0] == lora1 and scaled[2] == head  # same config, key and name as under "none"
    assert scaled[1].method == "LoRA [sqrt]" and scaled[1].config.rank_scaling == "sqrt"
    assert scaled[1].key != lora8.key
    # the grids pin "none" themselves, so "none" leaves them as they are whatever the library default
    grid = [*pareto.study_grid(), *pareto.quick_grid()]
    assert {p.config.rank_scaling for p in grid} == {"none"} and pareto.with_rank_scaling(grid, "none") == grid


def test_a_rule_run_borrows_the_seed_0_runs_of_unscaled_points_and_runs_only_their_later_seeds(tmp_path):
    setup = pareto.Setup("m", "w", 100, 32, 0.01, (("inspection", pareto.TASKS["inspection"]),), PP)
    lora1, lora8 = point("lora", "r=1"), pareto.with_rank_scaling([point("lora", "r=8")], "sqrt")[0]
    none, rule = tmp_path / "none", tmp_path / "sqrt"
    none.mkdir()
    table = pareto.CORRECT_TABLE
    full = {c: 0 if c in table.ints else "" for c in pareto.CORRECT_COLUMNS}
    for lr, acc in zip(PP.grid, (0.5, 0.6, 0.8, 0.7, 0.4)):  # the "none" run's sweep of LoRA r=1
        table.append(pareto.results_path(none, "inspection"),
                     {**full, **sweep_row(lora1, lr, acc), "setup": setup.fingerprint("inspection")})
    table.append(pareto.results_path(none, "inspection"),  # a later seed there is not borrowed
                 {**full, **sweep_row(lora1, 0.015, 0.7, seed=1, phase="main"),
                  "setup": setup.fingerprint("inspection")})
    assert pareto.borrow_rows(none, rule, ["inspection"], setup, {lora1.key}) == 5
    assert pareto.borrow_rows(none, rule, ["inspection"], setup, {lora1.key}) == 0  # once
    rows = pareto.load_results(rule, ["inspection"], setup)
    assert sorted(r["lr"] for r in rows) == sorted(PP.grid) and {r["seed"] for r in rows} == {0}
    jobs = pareto.pending_per_point(rows, ["inspection"], [lora1, lora8], [0, 1, 2], PP)
    # LoRA r=1's sweep is decided by the borrowed rows (best 0.015): its seeds 1, 2 come next, here
    assert ("main", lora1.method, 1, "0.015") in keys(jobs) and ("main", lora1.method, 2, "0.03") in keys(jobs)
    assert not any(j.point.key == lora1.key and j.seed == 0 for j in jobs)


def test_a_fixed_lr_is_refused_under_the_per_point_protocol_which_always_sweeps():
    with pytest.raises(SystemExit, match="the per-point protocol always sweeps each point's lr"):
        pareto.main(["plan", "--protocol", "per-point", "--fixed-lr", "0.06"])
