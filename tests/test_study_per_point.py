"""The shipped study file from the per-point re-run (`superlora.study`, protocol "per-point"): each point's own lr
and steps, the default lr's mean beside it, points still sweeping left out, the same lrs and means as the re-run's
own analysis (benchmarks/study/pareto/report.py) on the committed rows, and how a suggestion shows them."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from benchmarks.study import page
from benchmarks.study.pareto.protocol import PER_POINT
from benchmarks.study.pareto.report import TABLE, summarise
from superlora import ConfigError
from superlora.study import (MAX_EXTENSIONS, PER_POINT_FACTOR, PER_POINT_GRID, PER_POINT_HEAD_GRID, Measured,
                             _points_of, main, study_results_from_csv)

ROOT = Path(__file__).resolve().parents[1]
RERUN = ROOT / "benchmarks" / "results" / "pareto_per_point_sqrt"
COLUMNS = ("task", "phase", "family", "method", "budget", "config_hash", "seed", "lr", "status", "accuracy",
           "val_loss", "adapter_params", "steps", "model", "val_size", "num_classes", "config")
LORA = json.dumps({"targets": ["q", "v"], "rank": 1, "factoring": "lora", "name": "lora"})


def test_the_package_uses_the_rerun_protocols_grid():
    assert PER_POINT_GRID == PER_POINT.grid and PER_POINT_HEAD_GRID == PER_POINT.head_grid
    assert (PER_POINT_FACTOR, MAX_EXTENSIONS) == (PER_POINT.factor, PER_POINT.max_extensions)


def row(method, seed, lr, accuracy, *, family="lora", params=4608, steps=100, phase="main", config=LORA):
    return dict(task="digits", phase=phase, family=family, method=method, budget="r=1", config_hash=f"h-{method}",
                seed=seed, lr=lr, status="ok" if not math.isnan(accuracy) else "nonfinite", accuracy=accuracy,
                val_loss=1 - accuracy if not math.isnan(accuracy) else math.nan, adapter_params=params, steps=steps,
                model="m", val_size=500, num_classes=10, config=config)


def write(folder: Path, rows):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "pareto_digits.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def test_each_point_keeps_its_own_lr_steps_and_the_default_lrs_mean(tmp_path):
    grid = PER_POINT_GRID  # 0.00375 ... 0.06
    rows = [row("LoRA", 0, lr, a, phase="sweep") for lr, a in zip(grid, (0.5, 0.6, 0.8, 0.7, 0.4))]
    rows += [row("LoRA", s, 0.015, a) for s, a in ((1, 0.82), (2, 0.84))]
    rows += [row("LoRA", s, 0.03, a) for s, a in ((1, 0.72), (2, math.nan))]  # seed 2 diverged at the default
    rows += [row("small", 0, lr, a, params=71, steps=400, phase="sweep") for lr, a in
             zip(grid, (0.5, 0.6, 0.7, 0.75, 0.8))]  # best at the top edge: 0.12 must run first
    head = PER_POINT_HEAD_GRID
    rows += [row("Head only", 0, lr, a, family="head-only", params=0, steps=400, phase="sweep", config="")
             for lr, a in zip(head, (0.6, 0.7, 0.65, 0.62, 0.5))]
    write(tmp_path, rows)
    data = study_results_from_csv(tmp_path, tasks=("digits",), protocol="per-point")
    assert data["protocol"] == "per-point" and data["tasks"]["digits"]["steps"] == 100
    points = {p["method"]: p for p in data["tasks"]["digits"]["points"]}
    assert set(points) == {"LoRA", "Head only"}  # "small" is still sweeping
    lora = points["LoRA"]
    assert (lora["lr"], lora["n"], lora["steps"], lora["default_lr"], lora["default_n"]) == (0.015, 3, 100, 0.03, 2)
    assert math.isclose(lora["mean"], (0.8 + 0.82 + 0.84) / 3, abs_tol=1e-6)
    assert math.isclose(lora["default_mean"], (0.7 + 0.72) / 2, abs_tol=1e-6)  # seed 0's sweep run at 0.03 too
    assert (points["Head only"]["lr"], points["Head only"]["default_lr"], points["Head only"]["steps"]) == \
        (0.005, 0.01, 400)
    measured = {p.method: p for p in _points_of(data)}["LoRA"].measured["digits"]
    assert measured.text() == "82.0 ± 2.0 % (3 seeds, lr 0.015, 100 steps; 71.0 % at the default lr 0.03)"
    assert Measured("digits", 0.8, 0.01, 3, 0.064).text() == "80.0 ± 1.0 % (3 seeds, lr 0.064)"  # first study

    rows += [row("small", 0, 0.12, 0.7, params=71, steps=400, phase="sweep")]
    write(tmp_path, rows)
    small = {p["method"]: p for p in study_results_from_csv(tmp_path, ("digits",), "per-point")["tasks"]["digits"][
        "points"]}["small"]
    assert (small["lr"], small["steps"], small["n"], small["default_mean"]) == (0.06, 400, 1, 0.75)
    with pytest.raises(ConfigError, match="protocol must be one of family, per-point"):
        study_results_from_csv(tmp_path, ("digits",), "per-family")


@pytest.mark.parametrize("task", ["digits", "inspection"])
def test_the_package_and_the_reruns_analysis_agree_on_the_committed_rows(task):
    """The same chosen lr, mean and default mean per point as benchmarks/pareto.py analyse computes."""
    analysed, _ = summarise(page.read_one_setup(TABLE, RERUN / f"pareto_{task}.csv"), task, PER_POINT)
    shipped = study_results_from_csv(RERUN, (task,), "per-point")["tasks"][task]["points"]
    assert len(shipped) == len(analysed) > 0
    by_key = {(p["method"], p["adapter_params"]): p for p in shipped}
    for point in analysed:
        mine = by_key[(point.method, point.params)]
        assert (mine["lr"], mine["n"], mine["steps"]) == (point.lr, len(point.accuracies), point.steps)
        assert math.isclose(mine["mean"], point.mean, abs_tol=1e-6)
        if point.default_accuracies:
            assert math.isclose(mine["default_mean"], point.default_mean, abs_tol=1e-6)


def test_the_command_line_writes_a_per_point_file(tmp_path, capsys):
    out = tmp_path / "study.json"
    assert main(["--results", str(RERUN), "--protocol", "per-point", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["protocol"] == "per-point" and "wrote" in capsys.readouterr().out
