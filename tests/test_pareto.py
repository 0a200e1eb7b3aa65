"""The Pareto study script (benchmarks/pareto.py): its learning-rate rule, resume, the analysis numbers on
hand-made rows, and a real `--quick` run (train, CSV rows, figure, docs table) on a tiny hybrid ViT."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from superlora import SuperLoRAConfig, count_parameters

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "pareto.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("pareto_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


pareto = _load_script()


# ------------------------------------------------------------------------------------------------ lr rule
def results(**by_lr):
    """{"0.004": (accuracy, val_loss)} from keyword pairs like lr_0_004=(0.8, 0.5)."""
    return {key[3:].replace("_", "."): value for key, value in by_lr.items()}


def test_the_sweep_first_asks_for_the_whole_grid_then_picks_the_best_inner_lr():
    assert pareto.choose_lr({}) == (None, list(pareto.LR_GRID))
    partial = {"0.001": (0.5, 1.0)}
    assert pareto.choose_lr(partial) == (None, [0.004, 0.016])
    done = {"0.001": (0.5, 1.0), "0.004": (0.7, 0.8), "0.016": (0.6, 0.9)}
    assert pareto.choose_lr(done) == (0.004, [])


def test_a_best_lr_at_the_edge_extends_the_range_at_most_twice():
    grid = {"0.001": (0.5, 1.0), "0.004": (0.6, 0.8), "0.016": (0.7, 0.9)}
    chosen, todo = pareto.choose_lr(grid)
    assert chosen is None and todo == pytest.approx([0.064])
    grid["0.064"] = (0.65, 0.9)  # the extension lost: 0.016 is inside the range tried now
    assert pareto.choose_lr(grid) == (0.016, [])
    grid["0.064"] = (0.8, 0.9)
    assert pareto.choose_lr(grid)[1] == pytest.approx([0.256])
    grid["0.256"] = (0.9, 0.9)  # best at the edge again, but two extensions are the limit
    assert pareto.choose_lr(grid) == (0.256, [])
    low = {"0.001": (0.9, 1.0), "0.004": (0.6, 0.8), "0.016": (0.5, 0.9)}
    assert pareto.choose_lr(low)[1] == pytest.approx([0.00025])


def test_ties_go_to_the_lower_loss_then_the_smaller_lr_and_a_diverged_run_is_worst():
    tie = {"0.001": (0.7, 0.6), "0.004": (0.7, 0.5), "0.016": (0.7, 0.5)}
    assert pareto.choose_lr(tie, max_extensions=0) == (0.004, [])
    diverged = {"0.001": (0.3, 1.0), "0.004": (0.4, 0.9), "0.016": (math.nan, math.nan)}
    assert pareto.choose_lr(diverged, max_extensions=0) == (0.004, [])


# ------------------------------------------------------------------------------------------------ resume
def row(point, task="inspection", seed=0, lr=0.004, accuracy=0.5, phase="main", val_loss=1.0, status="ok"):
    return {"task": task, "phase": phase, "family": point.family, "method": point.method, "budget": point.budget,
            "config_hash": point.key, "seed": seed, "lr": lr, "status": status, "accuracy": accuracy,
            "val_loss": val_loss, "adapter_params": 100, "setup": "s"}


def test_resume_skips_finished_runs_and_schedules_main_runs_only_after_the_sweep():
    points = pareto.quick_grid()  # family lora: r=1 (sweep), r=8; family lorta: one sweep point
    lora_r1, lora_r8, lorta = points
    grid = (0.004, 0.016)
    jobs = pareto.pending_jobs([], ["inspection"], points, [0, 1], grid, 0)
    assert {(j.phase, j.point.method, j.seed, pareto.lr_text(j.lr)) for j in jobs} == {
        ("sweep", lora_r1.method, 0, "0.004"), ("sweep", lora_r1.method, 0, "0.016"),
        ("sweep", lorta.method, 0, "0.004"), ("sweep", lorta.method, 0, "0.016")}
    done = [row(lora_r1, lr=0.004, accuracy=0.6, phase="sweep"), row(lora_r1, lr=0.016, accuracy=0.7, phase="sweep"),
            row(lorta, lr=0.004, accuracy=0.5, phase="sweep")]
    jobs = pareto.pending_jobs(done, ["inspection"], points, [0, 1], grid, 0)
    keys = [(j.phase, j.point.budget, j.point.family, j.seed, pareto.lr_text(j.lr)) for j in jobs]
    # lorta's sweep is unfinished, so none of its main runs yet; lora's seed-0 r=1 run is its sweep run at 0.016
    assert keys == [("sweep", "r=2", "lorta", 0, "0.016"),
                    ("main", "r=8", "lora", 0, "0.016"),
                    ("main", "r=1", "lora", 1, "0.016"), ("main", "r=8", "lora", 1, "0.016")]
    done.append(row(lora_r8, seed=0, lr="0.016"))  # as read back from a CSV: the lr text
    left = pareto.pending_jobs(done, ["inspection"], points, [0, 1], grid, 0)
    assert ("main", "r=8", "lora", 0, "0.016") not in [
        (j.phase, j.point.budget, j.point.family, j.seed, pareto.lr_text(j.lr)) for j in left]
    assert len(left) == len(jobs) - 1


def test_rows_round_trip_through_the_csv_and_another_setup_is_refused(tmp_path):
    point = pareto.quick_grid()[0]
    full = {name: "" for name in pareto.COLUMNS}
    full.update(row(point), lr="0.004", seed=3, steps=5, batch_size=8, head_lr="0.005", num_classes=4,
                train_size=24, val_size=12, head_params=772, base_params=10, update_size=20, lora_r1_params=30,
                seconds=1.5, seconds_per_step=0.2, cpu_seconds_per_step=0.2, threads=1, train_loss=1.2, model="m",
                config="{}", finished="now")
    path = tmp_path / "pareto_inspection.csv"
    pareto.append_row(path, full)
    pareto.append_row(path, {**full, "seed": 4})
    back = pareto.read_rows(path)
    assert [r["seed"] for r in back] == [3, 4]
    assert back[0]["lr"] == 0.004 and back[0]["accuracy"] == 0.5 and back[0]["adapter_params"] == 100
    assert pareto.row_key(back[0]) == ("inspection", point.method, point.key, 3, "0.004")
    assert not list(tmp_path.glob(".pareto_inspection.csv.*"))  # no temporary file left behind
    setup = pareto.Setup("m", "w", 5, 8, 0.005, (("inspection", pareto.QUICK_TASKS["inspection"]),))
    with pytest.raises(SystemExit, match="another setup"):
        pareto.load_results(tmp_path, ["inspection"], setup)


# ------------------------------------------------------------------------------------------------ analysis
def summary(method, params, *accuracies, family="f", budget=None):
    return pareto.Summary("t", family, method, budget or f"p={params}", params, 0.004, tuple(accuracies), 0)


def test_fewest_parameters_reaching_an_accuracy_and_the_efficiency_factor():
    points = [
        summary("LoRA", 4608, 0.80, 0.80, 0.80, budget="r=1"),
        summary("LoRA", 9216, 0.85, budget="r=2"),
        summary("LoRA", 18432, 0.897, budget="r=4"),
        summary("LoRA", 36864, 0.90, budget="r=8"),
        summary("SL", 300, 0.7949),  # 0.51 points short of LoRA r=1: does not reach it
        summary("SL", 500, 0.7951),  # 0.49 points short: reaches it
        summary("SL", 2000, 0.896),  # within 0.5 points of LoRA r=8's 0.90
    ]
    assert pareto.fewest_reaching(points, 0.80).params == 500
    assert pareto.fewest_reaching(points, 0.95) is None
    table = {entry["method"]: entry for entry in pareto.efficiency_table(points)}
    assert table["SL"][1]["point"].params == 500 and table["SL"][1]["factor"] == pytest.approx(4608 / 500)
    # LoRA itself reaches r=8's accuracy (0.90 - 0.005) already at r=4, so the factor is against 18,432
    assert table["SL"][8]["point"].params == 2000 and table["SL"][8]["factor"] == pytest.approx(18432 / 2000)
    assert table["LoRA"][1]["factor"] == 1.0 and table["LoRA"][8]["point"].params == 18432
    assert [s.params for s in pareto.pareto_front(points)] == [300, 500, 2000, 18432, 36864]


def test_mean_and_spread_of_a_point():
    s = summary("LoRA", 10, 0.5, 0.6, 0.7)
    assert s.mean == pytest.approx(0.6) and s.std == pytest.approx(0.1)
    assert summary("LoRA", 10, 0.5).std == 0.0


def test_summaries_use_only_the_runs_at_the_familys_chosen_lr():
    lora_r1, lora_r8, lorta = pareto.quick_grid()
    rows = [row(lora_r1, lr=0.004, accuracy=0.6, phase="sweep"), row(lora_r1, lr=0.016, accuracy=0.7, phase="sweep"),
            row(lora_r1, seed=1, lr=0.016, accuracy=0.9), row(lora_r1, seed=1, lr=0.004, accuracy=0.1),
            row(lora_r8, seed=0, lr=0.016, accuracy=0.8),
            row(lorta, lr=0.004, accuracy=0.5, phase="sweep")]  # lorta's sweep is unfinished: left out
    for r in rows:
        r["adapter_params"] = 100 if r["method"] == "LoRA" and r["budget"] == "r=1" else 200
    got = {(s.method, s.budget): s for s in pareto.summarise(rows, "inspection", (0.004, 0.016), 0)}
    assert set(got) == {("LoRA", "r=1"), ("LoRA", "r=8")}
    assert got[("LoRA", "r=1")].accuracies == (0.7, 0.9) and got[("LoRA", "r=1")].lr == 0.016
    assert got[("LoRA", "r=8")].accuracies == (0.8,)


def test_an_unfinished_study_is_marked_partial_with_what_is_missing():
    lora_r1, lora_r8, lorta = pareto.quick_grid()
    done = [summary(lora_r1.method, 10, 0.7, 0.8, 0.9, budget=lora_r1.budget),
            summary(lora_r8.method, 20, 0.8, budget=lora_r8.budget)]
    note = pareto.completeness_note(done, [lora_r1, lora_r8, lorta], seeds=(0, 1, 2))
    assert note.startswith("**Partial results: 1 of 3 points have all 3 seeds, 1 have fewer and 1 none yet.**")
    failed = pareto.Summary("t", "f", lora_r8.method, lora_r8.budget, 20, 0.004, (0.8, 0.7), 1)  # a diverged run counts
    assert pareto.completeness_note([done[0], failed], [lora_r1, lora_r8], seeds=(0, 1, 2)) is None


def test_head_only_runs_without_a_sweep_and_is_a_baseline_not_a_method(tmp_path):
    from superlora import preset

    head = pareto.Point("head-only", "Head only", "0 params", preset("head-only"))
    lora_r1, lora_r8, _ = pareto.quick_grid()
    points = [lora_r1, lora_r8, head]
    pareto.check_grid(points)  # head-only needs no sweep point
    jobs = pareto.pending_jobs([], ["inspection"], points, [0, 1], (0.004, 0.016), 0)
    head_jobs = [(j.phase, j.seed, pareto.lr_text(j.lr)) for j in jobs if j.point is head]
    assert head_jobs == [("main", 0, "0.001"), ("main", 1, "0.001")]  # at once, at the unused HEAD_ONLY_LR

    rows = [row(lora_r1, lr=0.004, accuracy=0.6, phase="sweep"), row(lora_r1, lr=0.016, accuracy=0.7, phase="sweep"),
            row(lora_r8, lr=0.016, accuracy=0.8), row(head, lr=0.001, accuracy=0.65),
            row(head, seed=1, lr=0.001, accuracy=0.75)]
    for r in rows:
        r["adapter_params"] = {"r=1": 100, "r=8": 800, "0 params": 0}[r["budget"]]
    summaries = pareto.summarise(rows, "inspection", (0.004, 0.016), 0)
    baseline = [s for s in summaries if s.family == "head-only"]
    assert len(baseline) == 1 and baseline[0].params == 0 and baseline[0].mean == pytest.approx(0.70)
    assert [e["method"] for e in pareto.efficiency_table(summaries)] == ["LoRA"]  # no factor against 0 parameters
    claims = pareto.claims_markdown({"inspection": summaries})
    # LoRA r=1 (0.70) ties head-only (0.70 ± 0.07); LoRA r=8 (0.80, 800 parameters) beats it by more than 0.07
    assert ("head only (0 adapter parameters): 70.0 ± 7.1 %. Of the 2 adapter points with at most 1,000 "
            "parameters, 1 beat it by more than one standard deviation and 0 score below it.") in claims
    figure = pareto.plot_task(summaries, "inspection", tmp_path / "fig.png", 100)
    assert figure.stat().st_size > 10_000
    table = pareto.task_markdown("inspection", [dict(r, num_classes=4, train_size=8, val_size=4, steps=5,
                                                     batch_size=2, head_lr="0.005", model="m", head_params=20,
                                                     seconds=1.0, seconds_per_step=0.1) for r in rows],
                                 summaries, "fig.png", (0.004, 0.016), 0)
    assert "| head-only | Head only | 0 params | 0 | – (head only) | 70.0 ± 7.1 (n=2) |" in table


def test_the_shipped_study_results_keep_the_head_only_point():
    from superlora.study import task_results

    head = pareto.Point("head-only", "Head only", "0 params", __import__("superlora").preset("head-only"))
    lora_r1 = pareto.quick_grid()[0]
    rows = [dict(row(lora_r1, lr=lr, accuracy=0.6, phase="sweep"), config=json.dumps(lora_r1.config.to_dict()))
            for lr in (0.001, 0.004, 0.016)]
    rows += [dict(row(head, seed=s, lr=0.001, accuracy=a), config=json.dumps(head.config.to_dict()), adapter_params=0)
             for s, a in ((0, 0.5), (1, 0.7))]
    for r in rows:
        r["adapter_params"] = 0 if r["family"] == "head-only" else 100
    points = {p["method"]: p for p in task_results(rows)["points"]}
    assert points["Head only"]["adapter_params"] == 0 and points["Head only"]["n"] == 2
    assert points["Head only"]["mean"] == pytest.approx(0.6)


def test_the_docs_page_keeps_its_prose_around_the_generated_block():
    text = f"intro\n{pareto.BEGIN}\nold table\n{pareto.END}\noutro\n"
    new = pareto.replace_between_markers(text, "new table")
    assert new == f"intro\n{pareto.BEGIN}\nnew table\n{pareto.END}\noutro\n"
    with pytest.raises(ValueError, match="markers"):
        pareto.replace_between_markers("no markers", "x")


def test_the_study_grid_is_valid_and_its_budgets_overlap_on_the_default_architecture():
    from superlora.base_models import build_hybrid_vit

    points = pareto.study_grid()
    pareto.check_grid(points)
    import torch

    with torch.device("meta"):
        model = build_hybrid_vit(num_classes=4)  # the default's architecture: 12 targets of 192 x 192
    counts = {}
    for p in points:
        counts.setdefault(p.method, []).append(count_parameters(model, p.config).adapter)
    lora = counts.pop("LoRA")
    assert lora == [4608, 9216, 18432, 36864]
    assert counts.pop("Head only") == [0] and points[-1].family == "head-only"  # the 0-parameter baseline, last
    others = [c for cs in counts.values() for c in cs]
    assert min(others) < 100 and sum(c < lora[0] for c in others) >= 15  # the few-parameter regime is covered
    assert sum(lora[0] <= c <= lora[-1] for c in others) >= 6  # and the curves overlap LoRA's range


def test_quick_refuses_to_write_into_the_committed_results():
    with pytest.raises(SystemExit, match="never writes"):
        pareto.main(["--quick", "--out", str(pareto.RESULTS)])


# ------------------------------------------------------------------------------------------------ a real run
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from superlora.base_models import build_hybrid_vit, save_model

    folder = tmp_path_factory.mktemp("pareto-model") / "model"
    save_model(build_hybrid_vit(img_size=32, embed_dim=32, depth=2, num_heads=2, num_classes=3), folder)
    return folder


def run_quick(model: Path, out: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--model", str(model), "--out", str(out),
                           "--workers", "2"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_quick_run_writes_rows_that_match_count_parameters_and_the_analysis_uses_them(tiny_model, tmp_path):
    from superlora.base_models import create_meta_model

    out = tmp_path / "quick"
    run_quick(tiny_model, out)
    expected_methods = {p.method for p in pareto.quick_grid()}
    for task, classes in (("inspection", 4), ("digits", 10)):
        with open(out / f"pareto_{task}.csv", newline="") as handle:
            reader = csv.DictReader(handle)
            assert tuple(reader.fieldnames) == pareto.COLUMNS
            rows = list(reader)
        # per task: 2 lrs x 2 sweep points, then LoRA r=8 at LoRA's chosen lr (r=1's seed 0 is its sweep run)
        assert len(rows) == 5
        assert {r["method"] for r in rows} == expected_methods
        meta = create_meta_model(str(tiny_model), num_classes=classes)
        for r in rows:
            config = SuperLoRAConfig.from_dict(json.loads(r["config"]))
            assert pareto.config_hash(config) == r["config_hash"]
            counted = count_parameters(meta, config)
            assert int(r["adapter_params"]) == counted.adapter > 0
            assert int(r["head_params"]) == counted.trainable_module_parameters == 33 * classes
            assert r["status"] == "ok" and 0.0 <= float(r["accuracy"]) <= 1.0
            assert int(r["steps"]) == 3 and int(r["val_size"]) == 3 * classes
        assert {r["phase"] for r in rows} == {"sweep", "main"}
        png = out / f"pareto_{task}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    page = (out / "benchmarks.md").read_text()
    assert pareto.BEGIN in page and pareto.END in page
    assert "![inspection: accuracy against adapter parameters](pareto_inspection.png)" in page
    assert "| method | best accuracy, % (params) | ≥ LoRA r=1" in page
    assert "Partial results" not in page  # every point of the quick grid has its one seed
    for method in expected_methods:
        assert f"| {method} |" in page

    # A second start finds every run on file: nothing is trained again, the rows stay as they were.
    before = (out / "pareto_inspection.csv").read_text()
    again = run_quick(tiny_model, out)
    assert "0 to run" not in again.stdout and "done: 0 runs" in again.stdout
    assert (out / "pareto_inspection.csv").read_text() == before
