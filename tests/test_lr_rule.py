"""benchmarks/lr_rule.py, the rank-scaling probe of issue 12, on hand-made rows: which point is which under each
rule, the per-family ratio of chosen lrs, the spread line, and the page."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from test_pareto_per_point_report import GRID, point_rows

from benchmarks.study.pareto.report import TABLE

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("lr_rule_script", ROOT / "benchmarks" / "lr_rule.py")
lr_rule = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = lr_rule
spec.loader.exec_module(lr_rule)


def sweep(best: float) -> dict[float, float]:
    """Seed-0 accuracies over the grid peaking at `best` (an inner grid lr), 0.1 lower per factor 2 away."""
    import math

    return {lr: 0.8 - 0.1 * abs(math.log2(lr / best)) for lr in GRID}


def write(folder: Path, rule: str, bests: dict[tuple[str, str], float]) -> None:
    suffix = "" if rule == "none" else f" [{rule}]"
    for (method, budget), best in bests.items():
        for r in point_rows(method + suffix, sweep(best), task="inspection", key=f"{method}{budget}{rule}"):
            r["budget"] = budget
            TABLE.append(folder / "pareto_inspection.csv", r)


def test_the_probe_reports_each_familys_ratio_and_the_spread_per_rule(tmp_path):
    results = tmp_path / "pareto_per_point"
    # none: the large rank wants a 4x smaller lr; linear: the same lr for both ranks; sqrt: 2x smaller
    write(lr_rule.folder("none", results), "none", {("LoRA", "r=1"): 0.03, ("LoRA", "r=8"): 0.0075})
    write(lr_rule.folder("linear", results), "linear", {("LoRA", "r=1"): 0.015, ("LoRA", "r=8"): 0.015})
    # sqrt leaves r=1 out (T = 1: its scale is 1 under every rule), so the analysis takes none's sweep for it
    write(lr_rule.folder("sqrt", results), "sqrt", {("LoRA", "r=8"): 0.015})
    assert lr_rule.folder("linear", results) == tmp_path / "pareto_per_point_linear"
    text = lr_rule.analyse(results, tmp_path / "lr_rule.md", ["inspection"])
    assert (tmp_path / "lr_rule.md").read_text() == text
    # 128 validation images: at 80 % one standard error is 3.5 points, so only the best lr itself is good
    assert "| none | LoRA r=1 | 0.03 | 80.0 | 80.0 | 0.0 | 0.03 |" in text
    assert "| none | LoRA r=8 | 0.0075 | 80.0 | 60.0 | 20.0 | 0.0075 |" in text  # two factors of 2 from 0.03
    assert "| none | LoRA: large / small rank lr | 0.25× | | | | |" in text
    assert "| linear | LoRA: large / small rank lr | 1× | | | | |" in text
    assert "| sqrt | LoRA: large / small rank lr | 0.5× | | | | |" in text
    assert "| none | LoTR r=8 | (sweep unfinished) | | | | |" in text
    assert ("- none: 2 points; chosen lrs 0.0075–0.03 (4×); best factor-4 band holds 2 of 2; large/small-rank "
            "ratios per family 0.25×; mean seed-0 accuracy at the chosen lrs 80.0 %; worst seed-0 shortfall at "
            "0.03: 20.0 points (LoRA r=8); lrs within one standard error of every point's best: none.") in text
    assert "- linear: 2 points; chosen lrs 0.015–0.015 (1×)" in text
    linear = next(line for line in text.splitlines() if line.startswith("- linear:"))
    assert linear.endswith("lrs within one standard error of every point's best: 0.015.")  # one lr serves both
    assert "| sqrt | LoRA r=1 | 0.03 | 80.0 | 80.0 | 0.0 | 0.03 |" in text  # none's run
    assert text.rstrip().endswith("every point's best: none.")  # sqrt: 0.03 and 0.015 are 10 points apart
    assert [lr_rule.rank_terms("LoRTA M=3", b) for b in ("r=8", "r=16")] == [8 ** 3, 16 ** 3]


def test_good_lrs_are_those_within_one_standard_error_of_the_best():
    from test_pareto_per_point_report import row

    from benchmarks.study.pareto.report import summarise

    rows = [row("p", 0, lr, acc, phase="sweep") for lr, acc in zip(GRID, (0.70, 0.78, 0.80, 0.765, 0.5))]
    (point,), _ = summarise(rows, "digits")
    # best 0.80 on 100 images: one standard error is 4 points, so 0.78 and 0.765 are good and 0.70 is not
    assert [lr_rule.lr_text(x) for x in lr_rule.good_lrs(point, 100)] == ["0.0075", "0.015", "0.03"]
    assert [lr_rule.lr_text(x) for x in lr_rule.good_lrs(point, 10000)] == ["0.015"]


def test_the_gradient_probe_fit_reads_a_perfect_inverse_rule_as_slope_minus_log2_10():
    import math

    spec = importlib.util.spec_from_file_location("lr_gradient_probe", ROOT / "benchmarks" / "lr_gradient_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    inverse = [{"g1": g, "lr": 0.03 / g} for g in (0.01, 0.1, 1.0, 10.0)]  # lr = c / |g|_1 exactly
    assert probe.fit(inverse) == pytest.approx((-math.log2(10), 1.0))
    flat = [{"g1": g, "lr": lr} for g, lr in ((0.01, 0.03), (0.1, 0.06), (1.0, 0.06), (10.0, 0.03))]
    assert probe.fit(flat) == pytest.approx((0.0, 0.0), abs=1e-12)  # no relation, as on inspection
    # (benchmarks/results/lr_gradient_probe.md)
    moving = [dict(p, moved=p["g1"] ** 0.5) for p in inverse]  # lr = c / movement²: half the slope per decade
    assert probe.fit(moving, "moved") == pytest.approx((-2 * math.log2(10), 1.0))
    text = probe.markdown([dict(task="digits", rule="none", method="LoRA", budget="r=1", params=4608, **p)
                           for p in moving])
    assert "| digits | none | 4 | 0.003–3 | ‖g‖₁ | 0.01–10 | -3.32 | 1.00 |" in text
    assert "| digits | none | 4 | 0.003–3 | movement | 0.1–3.2 | -6.64 | 1.00 |" in text


def test_the_probe_runs_pick_by_loss_then_accuracy_and_score_the_pick_on_the_full_sweep(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("lr_probe", ROOT / "benchmarks" / "lr_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    rows = [dict(lr="0.06", accuracy="0.7", val_loss="0.9"), dict(lr="0.015", accuracy="0.7", val_loss="0.5"),
            dict(lr="0.03", accuracy="0.6", val_loss="0.1")]
    assert probe.pick(rows) == "0.03"  # the lowest loss, though its accuracy is the lowest
    tie = [dict(lr="0.06", accuracy="0.7", val_loss="0.5"), dict(lr="0.015", accuracy="0.6", val_loss="0.5")]
    assert probe.pick(tie) == "0.06"  # equal loss: the better accuracy
    blown = [dict(lr="0.06", accuracy="0.0", val_loss="inf"), dict(lr="0.03", accuracy="0.0", val_loss="2.0")]
    assert probe.pick(blown) == "0.03"  # a diverged probe loses even to an equally bad finished one

    from test_pareto_per_point_report import write_rows

    rows = point_rows("A", dict(zip(GRID, (0.5, 0.6, 0.8, 0.7, 0.5))), key="ha")  # full runs: best 0.015
    rows += point_rows("B", dict(zip(GRID, (0.5, 0.6, 0.7, 0.75, 0.8))) | {0.12: 0.6}, key="hb")  # best 0.06
    write_rows(tmp_path / "none", rows)
    monkeypatch.setattr(probe, "FOLDERS", {"none": tmp_path / "none"})
    probes = [dict(task="digits", rule="none", config_hash=key, steps="25", full_steps="100", lr=lr, accuracy=acc,
                   val_loss="1")
              for key, accs in (("ha", ("0.6", "0.65", "0.4")), ("hb", ("0.5", "0.6", "0.7")))
              for lr, acc in zip(("0.015", "0.03", "0.06"), accs)]
    found = {f["method"]: f for f in probe.outcomes("digits", "none", probes)}
    assert found["A"]["picked"] == "0.03" and found["A"]["picked_short"] == pytest.approx(10.0)  # 0.8 - 0.7
    assert found["B"]["picked"] == "0.06" and found["B"]["picked_short"] == pytest.approx(0.0)
    assert found["B"]["default_short"] == pytest.approx(5.0)  # 0.8 - 0.75 at 0.03
    longer = [dict(r, steps="50", val_loss="0.5" if r["lr"] == "0.015" else "0.9") for r in probes]
    assert probe.fractions(probes + longer) == [0.25, 0.5]
    assert {f["picked"] for f in probe.outcomes("digits", "none", probes + longer, 0.5)} == {"0.015"}
    assert probe.outcomes("digits", "none", probes + longer) == list(found.values())  # 0.25: as before
    text = probe.markdown(probes + longer)
    assert '## digits, rank scaling "none", probes of 0.25 of the run' in text
    assert '## digits, rank scaling "none", probes of 0.5 of the run' in text
    assert "- the probes' pick: within 1.5 points of the point's best for 1 of 2" in text
    assert "- the default 0.03: within 1.5 points of the point's best for 0 of 2" in text


def test_the_first_step_probe_measures_a_movement_that_follows_the_updates_scale():
    """Doubling LoRA's alpha doubles ΔW and so its movement under the same sign step, and the gradient too."""
    import json

    from superlora import preset

    spec = importlib.util.spec_from_file_location("lr_gradient_probe", ROOT / "benchmarks" / "lr_gradient_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    batch, classes = probe.fixed_batch("inspection")
    batch = (batch[0][:8], batch[1][:8])
    one, two = (json.dumps(preset("lora", rank=1, alpha=alpha).to_dict()) for alpha in (1.0, 2.0))
    (g_one, moved_one), (g_two, moved_two) = probe.first_step(one, batch, classes), probe.first_step(two, batch, classes)
    assert moved_one > 0 and g_one > 0
    assert moved_two == pytest.approx(2 * moved_one, rel=1e-3) and g_two == pytest.approx(2 * g_one, rel=1e-3)


def test_a_point_no_rule_scales_gets_its_probes_copied_not_trained_again(tmp_path, monkeypatch):
    """Under "sqrt" a point with one rank term keeps the config (and hash) it has under "none": its probes are the
    same runs, so they are copied with the rule's name; only the other points train."""
    import superlora.train

    spec = importlib.util.spec_from_file_location("lr_probe", ROOT / "benchmarks" / "lr_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    from test_pareto_per_point_report import write_rows

    sweep = dict(zip(GRID, (0.5, 0.6, 0.8, 0.7, 0.5)))
    write_rows(tmp_path / "sqrt", point_rows("shared", sweep, key="same") + point_rows("scaled", sweep, key="new"))
    monkeypatch.setattr(probe, "FOLDERS", {"none": tmp_path / "none", "sqrt": tmp_path / "sqrt"})
    monkeypatch.setattr(probe, "ROWS", tmp_path / "probes.csv")
    monkeypatch.setattr(probe, "task_sets", lambda task, spec: ([], []))
    for lr in ("0.015", "0.03", "0.06"):  # the shared point's probes under "none" (100 steps: probes of 25)
        probe.PROBES.append(probe.ROWS, dict(task="digits", rule="none", method="shared", budget="b5000",
                                             config_hash="same", params=5000, full_steps=100, steps=25, lr=lr,
                                             accuracy=0.5, val_loss=1.0, seconds=9.0))
    trained = []

    def fake_train(model, train_set, val_set, config, options):
        trained.append(options.lr)
        return type("Result", (), {"best_accuracy": 0.4, "metrics": {"loss": 2.0}})()

    monkeypatch.setattr(superlora.train, "train", fake_train)
    probe.probe("digits", "sqrt", 0.25, (0.015, 0.03, 0.06))
    rows = probe.read_rows()
    copied = [r for r in rows if r["rule"] == "sqrt" and r["config_hash"] == "same"]
    assert [(r["lr"], r["accuracy"], r["seconds"]) for r in copied] == [("0.015", 0.5, 9.0), ("0.03", 0.5, 9.0),
                                                                        ("0.06", 0.5, 9.0)]
    assert trained == [0.015, 0.03, 0.06]  # the scaled point alone
    assert [r["accuracy"] for r in rows if r["config_hash"] == "new"] == [0.4] * 3
    probe.probe("digits", "sqrt", 0.25, (0.015, 0.03, 0.06))
    assert len(probe.read_rows()) == len(rows) and len(trained) == 3  # resumed: nothing left to do
