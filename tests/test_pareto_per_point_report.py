"""The per-point re-run's report (issue 12) on hand-made rows: each point's own lr, the default lr's shortfall, the
lr-spread numbers, the intervals, and the generated docs block."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks.study.intervals import OVER_BOTH, OVER_SEEDS, bootstrap_interval, encode_correct
from benchmarks.study.pareto.protocol import PER_POINT
from benchmarks.study.pareto.report import TABLE, PointSummary, lr_spread, summarise
from benchmarks.study.pareto.report_markdown import BEGIN, END, analyse, completeness_note, spread_markdown
from benchmarks.study.sweep import HEAD_ONLY_FAMILY

ROOT = Path(__file__).resolve().parent.parent
GRID = PER_POINT.grid  # 0.00375, 0.0075, 0.015, 0.03, 0.06
HEAD_GRID = PER_POINT.head_grid  # 0.0025, 0.005, 0.01, 0.02, 0.04


def row(method, seed, lr, accuracy, *, family="lora", key=None, params=5000, phase="main", correct=(),
        head_lr=0.005, task="digits"):
    values = {name: "" for name in TABLE.columns}
    values.update(task=task, phase=phase, family=family, method=method, budget=f"b{params}",
                  config_hash=key or f"h-{method}", seed=seed, lr=lr, status="ok" if not math.isnan(accuracy)
                  else "nonfinite", accuracy=accuracy, val_loss=1.0 - (0 if math.isnan(accuracy) else accuracy),
                  train_loss=1.0, adapter_params=params, head_params=1930, base_params=1, update_size=1,
                  lora_r1_params=4608, steps=400 if params < 1000 else 100, batch_size=32, head_lr=head_lr,
                  num_classes=10, train_size=100, val_size=len(correct) or 8, seconds=6.0, seconds_per_step=0.06,
                  cpu_seconds_per_step=0.06, threads=1, model="m", setup="s", config="{}", finished="now",
                  val_correct=encode_correct(correct))
    return values


def point_rows(method, sweep, seeds=None, **kw):
    """Seed 0 at every lr of `sweep` (phase sweep), then seeds 1 and 2 at the lrs of `seeds` (lr -> accuracies)."""
    rows = [row(method, 0, lr, accuracy, phase="sweep", **kw) for lr, accuracy in sweep.items()]
    for lr, accuracies in (seeds or {}).items():
        rows += [row(method, seed, lr, accuracy, **kw) for seed, accuracy in zip((1, 2), accuracies)]
    return rows


def by_method(points):
    return {p.method: p for p in points}


def test_each_point_chooses_its_own_lr_with_factor_2_extensions_and_head_only_sweeps_its_head_grid():
    inner = dict(zip(GRID, (0.5, 0.6, 0.8, 0.7, 0.4)))
    top = dict(zip(GRID, (0.4, 0.5, 0.6, 0.7, 0.8)))
    rows = point_rows("inner", inner)
    rows += point_rows("waiting", top)  # best at 0.06: 0.12 runs next, so the sweep is unfinished
    rows += point_rows("skipped", {**top, 0.24: 0.95})  # 4x past the edge is not the factor-2 rule's next lr
    rows += point_rows("stopped", {**top, 0.12: 0.75})  # 0.12 is worse: 0.06 stays, inside the range tried
    rows += point_rows("twice", {**top, 0.12: 0.85, 0.24: 0.9})  # at most 2 extensions: 0.24, at the edge
    rows += point_rows("low", {**dict(zip(GRID, (0.9, 0.5, 0.4, 0.3, 0.2))), 0.001875: 0.8})
    head = dict(zip(HEAD_GRID, (0.6, 0.7, 0.65, 0.62, 0.5)))
    rows += point_rows("head only", head, family=HEAD_ONLY_FAMILY, params=0)
    points, unfinished = summarise(rows, "digits")
    found = by_method(points)
    assert sorted(unfinished) == [("skipped", "h-skipped"), ("waiting", "h-waiting")]
    assert (found["inner"].lr, found["inner"].edge) == (0.015, False)
    assert (found["stopped"].lr, found["stopped"].edge) == (0.06, False)
    assert (found["twice"].lr, found["twice"].edge) == (0.24, True)
    assert (found["low"].lr, found["low"].edge) == (0.00375, False)
    assert found["twice"].sweep == ((0.00375, 0.4), (0.0075, 0.5), (0.015, 0.6), (0.03, 0.7), (0.06, 0.8),
                                    (0.12, 0.85), (0.24, 0.9))
    assert (found["head only"].lr, found["head only"].default_lr, found["head only"].steps) == (0.005, 0.01, 400)
    assert found["head only"].default_accuracies == (0.65,) and found["inner"].default_lr == 0.03
    assert [p.params for p in points] == sorted(p.params for p in points)


def test_the_shortfall_compares_the_chosen_lr_with_the_default_lr_over_their_finished_seeds():
    rows = point_rows("better", dict(zip(GRID, (0.5, 0.6, 0.8, 0.78, 0.4))),
                      {0.015: (0.82, 0.84), 0.03: (0.79, 0.80)})
    rows += point_rows("default", dict(zip(GRID, (0.5, 0.6, 0.7, 0.8, 0.4))), {0.03: (0.7, 0.9)})
    rows += point_rows("diverged", dict(zip(GRID, (0.5, 0.6, 0.8, math.nan, 0.4))), {0.015: (0.8, 0.8)})
    rows += point_rows("only seed 0", dict(zip(GRID, (0.5, 0.6, 0.8, 0.7, 0.4))))
    found = by_method(summarise(rows, "digits")[0])
    better = found["better"]
    assert better.accuracies == (0.8, 0.82, 0.84) and better.default_accuracies == (0.78, 0.79, 0.80)
    assert better.seeds == better.default_seeds == (0, 1, 2)
    assert better.shortfall == pytest.approx(0.82 - 0.79)
    default = found["default"]
    assert default.at_default and default.shortfall == 0.0 and default.default_accuracies == default.accuracies
    assert default.mean == pytest.approx(0.8)
    diverged = found["diverged"]
    assert diverged.default_failed == 1 and diverged.default_accuracies == () and math.isnan(diverged.shortfall)
    assert found["only seed 0"].shortfall == pytest.approx(0.1)  # 1 seed each so far
    assert found["only seed 0"].default_seeds == (0,)
    missing = by_method(summarise(rows, "digits", replace(PER_POINT, default_lr=0.05))[0])
    assert math.isnan(missing["better"].shortfall) and missing["better"].default_seeds == ()


def summary(method, lr, shortfall=0.0, family="lora", params=100, default_seeds=(0, 1, 2), failed=0):
    accuracies = (0.8, 0.8, 0.8)
    return PointSummary("digits", family, method, "b", params, lr, accuracies, 0, f"h-{method}", 100, False,
                        ((lr, 0.8),), (0, 1, 2), (0.7, 0.9), OVER_BOTH, 0.03,
                        tuple(0.8 - shortfall for _ in default_seeds[failed:]), default_seeds, failed)


def test_lr_spread_finds_the_fullest_factor_4_band_and_the_points_the_default_serves():
    points = [summary("a", 0.0075, 0.0), summary("b", 0.015, 0.01), summary("c", 0.03), summary("d", 0.03),
              summary("e", 0.06, 0.02), summary("head", 0.04, 0.3, family=HEAD_ONLY_FAMILY, params=0)]
    spread = lr_spread(points)
    assert spread.lrs == (0.0075, 0.015, 0.03, 0.03, 0.06)
    assert (spread.low, spread.high, spread.ratio) == (0.0075, 0.06, 8.0)
    assert spread.band == (0.0075, 0.03) and spread.in_band == 4 and spread.share == 0.8
    assert not spread.band_met
    assert (spread.points, spread.complete, spread.within) == (5, 5, 4)
    assert spread.worst.method == "e" and spread.default_met is False
    text = "\n".join(spread_markdown(spread, PER_POINT))
    assert "- **Best lrs of ≥ 90 % of the points within one factor-4 band: not met** (80 %)." in text
    assert "The factor-4 band [0.0075, 0.03] holds 4 of 5 (80 %)." in text
    assert "- **With the single default lr 0.03, every point's 3-seed mean within 1.5 points of its own best: " \
           "not met** (4 of 5)." in text
    assert "the largest shortfall is 2.0 points (e b, 100 parameters, chosen lr 0.06)" in text

    close = lr_spread([summary("a", 0.015), summary("b", 0.03, 0.015), summary("c", 0.06, 0.01, default_seeds=(0,))])
    assert close.band == (0.015, 0.06) and close.share == 1.0 and close.band_met
    assert (close.complete, close.within, close.default_met) == (2, 2, None)  # c lacks seeds 1 and 2 at 0.03
    assert lr_spread([summary("a", 0.015), summary("b", 0.03, 0.01)]).default_met is True
    blown = lr_spread([summary("a", 0.015), summary("b", 0.03, 0.0, failed=1)])
    assert blown.worst.method == "b" and blown.within == 1 and blown.default_met is False


def test_the_interval_is_the_bootstrap_over_seeds_and_images_of_the_runs_at_the_chosen_lr():
    masks = [(True, False, True, True, False, True, True, True), (True, True, True, False, False, True, True, True),
             (False, True, True, True, True, True, False, True)]
    accuracy = [sum(m) / len(m) for m in masks]
    rows = [row("p", 0, lr, a, phase="sweep", correct=masks[0] if lr == 0.015 else (True,) * 8)
            for lr, a in zip(GRID, (0.1, 0.2, accuracy[0], 0.3, 0.2))]
    rows += [row("p", seed, 0.015, accuracy[seed], correct=masks[seed]) for seed in (1, 2)]
    point = summarise(rows, "digits")[0][0]
    assert point.interval == bootstrap_interval(masks) and point.interval_over == OVER_BOTH
    assert point.interval[0] < point.mean < point.interval[1]
    rows[-1]["val_correct"] = ""
    assert summarise(rows, "digits")[0][0].interval_over == OVER_SEEDS


def study_rows(task="digits"):
    rows = point_rows("LoRA r=1", dict(zip(GRID, (0.5, 0.6, 0.8, 0.78, 0.4))),
                      {0.015: (0.82, 0.84), 0.03: (0.79, 0.80)}, params=4608, task=task)
    rows += point_rows("LoRTA", dict(zip(GRID, (0.5, 0.6, 0.7, 0.75, 0.7))), {0.03: (0.74, 0.76)}, family="lorta",
                       params=136, task=task)
    rows += point_rows("head only", dict(zip(HEAD_GRID, (0.6, 0.7, 0.65, 0.62, 0.5))), {0.005: (0.7, 0.7)},
                       family=HEAD_ONLY_FAMILY, params=0, task=task)
    return rows


def write_rows(out: Path, rows, task="digits"):
    out.mkdir(parents=True, exist_ok=True)
    for r in rows:
        TABLE.append(out / f"pareto_{task}.csv", r)


def test_analyse_writes_the_figure_and_only_its_block_and_regenerates_byte_for_byte(tmp_path):
    results = tmp_path / "results"
    write_rows(results, study_rows())
    docs = tmp_path / "benchmarks.md"
    tail = "\n\nafter\n<!-- other:begin -->\nkeep\n<!-- other:end -->\n"
    docs.write_text(f"# page\n\nbefore\n\n{BEGIN}\nold\n{END}{tail}")
    written = analyse(results, docs, tmp_path / "figures")
    assert written["figures"] == [tmp_path / "figures" / "pareto_per_point_digits.png"]
    assert written["figures"][0].stat().st_size > 10_000 and written["partial"] == ["digits"]
    first = docs.read_text()
    assert first.startswith(f"# page\n\nbefore\n\n{BEGIN}\n### Results (generated)")
    assert first.endswith(f"{END}{tail}") and "\nold\n" not in first
    assert "| LoRA r=1 | b4608 | 4,608 | 100 | 0.015 | 82.0 ± 2.0 (n=3) |" in first
    assert "| 79.0 (n=3) | 3.0 |" in first  # at the default lr, and the shortfall in points
    assert "| LoRTA | b136 | 136 | 400 | 0.03 | 75.0 ± 1.0 (n=3) |" in first and "| (the chosen lr) | 0.0 |" in first
    assert "Head only (0 adapter parameters, 400 steps): chosen head lr 0.005;" in first
    assert "at the default head lr 0.01, %: 65.0 (n=1), shortfall 5.0 points." in first
    assert "The factor-4 band [0.015, 0.06] holds 2 of 2 (100 %)." in first
    assert "- **Best lrs of ≥ 90 % of the points within one factor-4 band: met** (100 %)." in first
    assert "within 1.5 points of its own best: not met** (1 of 2)." in first
    assert "136 (LoRTA b136: 75.0 %) → 4,608 (LoRA r=1 b4608: 82.0 %)" in first
    assert "2 of 3 points have all 3 seeds at their chosen lr and at the default lr; 0 lack seeds at the chosen " \
           "lr, 1 at the default lr" in first  # head-only has no seeds 1, 2 at its default head lr
    assert "../figures/pareto_per_point_digits.png" not in first and "figures/pareto_per_point_digits.png" in first
    analyse(results, docs, tmp_path / "figures")
    assert docs.read_text() == first


def test_unfinished_sweeps_and_missing_points_are_marked_partial(tmp_path):
    rows = study_rows() + point_rows("waiting", dict(zip(GRID, (0.1, 0.2, 0.3, 0.4, 0.5))), family="loha")
    points, unfinished = summarise(rows, "digits")
    assert unfinished == [("waiting", "h-waiting")]
    expected = [(p.method, p.config_hash) for p in points if p.method != "head only"]
    assert completeness_note(points, unfinished, expected) is None
    note = completeness_note(points, unfinished, [*expected, ("waiting", "h-waiting"), ("never", "h-never")])
    assert note.startswith("**Partial results: 2 of 4 points have all 3 seeds at their chosen lr and at the default "
                           "lr; 0 lack seeds at the chosen lr, 0 at the default lr, 1 are still in their lr sweep "
                           "and 1 have no run yet.**")
    results = tmp_path / "results"
    write_rows(results, [r for r in rows if r["family"] != HEAD_ONLY_FAMILY])
    docs = tmp_path / "page.md"
    written = analyse(results, docs, tmp_path)
    assert written["partial"] == ["digits"]  # the waiting point is on file and unfinished
    text = docs.read_text()
    assert text.startswith(f"# Pareto study, per-point re-run (generated)\n\n{BEGIN}\n### Results (generated)\n\n"
                           "**Partial results (digits)**: see the note under each task.")
    assert "**Partial results: 2 of 3 points have all 3 seeds" in text and "1 are still in their lr sweep" in text


def test_the_docs_page_has_the_per_point_markers_between_the_pareto_and_peft_blocks():
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    order = [text.index(m) for m in ("<!-- pareto-results:end -->", BEGIN, END, "<!-- peft-results:begin -->")]
    assert order == sorted(order)


def test_the_rule_comparison_sets_the_chosen_lrs_side_by_side_on_the_points_decided_under_both(tmp_path):
    from benchmarks.study.pareto import rules

    lora1 = dict(zip(GRID, (0.5, 0.6, 0.8, 0.78, 0.4)))  # T = 1: the same rows under both rules
    none = point_rows("LoRA r=1", lora1, params=4608, key="h1")
    none += point_rows("LoRA r=8", dict(zip(GRID, (0.9, 0.8, 0.7, 0.5, 0.3))) | {0.001875: 0.85}, params=36864,
                       key="h8")  # best at 0.00375 (0.001875 worse): 16x below the top of the band
    none += point_rows("LoTR", dict(zip(GRID, (0.1, 0.2, 0.3, 0.4, 0.5))), family="lotr", key="ht")  # sweeping
    sqrt = point_rows("LoRA r=1", lora1, params=4608, key="h1")
    sqrt += point_rows("LoRA r=8 [sqrt]", dict(zip(GRID, (0.5, 0.6, 0.7, 0.84, 0.8))), params=36864, key="h8s")
    write_rows(tmp_path / "none", none)
    write_rows(tmp_path / "sqrt", sqrt)
    docs = tmp_path / "page.md"
    docs.write_text(f"# page\n\n{rules.BEGIN}\n{rules.END}\n")
    out = rules.analyse({"none": tmp_path / "none", "sqrt": tmp_path / "sqrt"}, docs, ["digits"], PER_POINT, 3)
    by_rule = {s.rule: s for s in out["digits"]}
    assert [p.method for p in by_rule["none"].points] == ["LoRA r=1", "LoRA r=8"]  # LoTR: not decided under both
    assert [p.lr for p in by_rule["sqrt"].points] == [0.015, 0.03]
    assert by_rule["none"].shortfalls == pytest.approx((0.02, 0.4))  # seed 0: best minus seed 0 at 0.03
    assert by_rule["sqrt"].shortfalls == pytest.approx((0.02, 0.0))
    assert by_rule["none"].within == 0 and by_rule["sqrt"].within == 1  # 2 points is more than 1.5
    text = docs.read_text()
    assert "2 adapter points have a finished seed-0 sweep under every rule (points still sweeping or not started " \
           "— none: 1, sqrt: 1)." in text
    assert ("| none | 2 | 0.00375–0.015 | 4× | [0.00375, 0.015] | 2 of 2 (≥ 90 %) | 0 of 2 | "
            "40.0 (LoRA r=8 b36864) |") in text
    assert ("| sqrt | 2 | 0.015–0.03 | 2× | [0.015, 0.06] | 2 of 2 (≥ 90 %) | 1 of 2 | "
            "2.0 (LoRA r=1 b4608) |") in text
    # what a user keeping 0.03 gets: LoRA r=8 goes from 50 % to 84 % (one seed on 8 images: 14.1 points of noise)
    assert ('At the default lr 0.03, seed 0, "sqrt" minus "none" over the 2 points: mean +17.0, median +17.0 '
            "points; higher by more than one standard error (14.1 points) on 1, lower on 0.") in text
    assert "| LoRA | r=8 |" not in text and "| LoRA r=8 | b36864 | 36,864 | 0.00375 (40.0) | 0.03 (0.0) |" in text
    # the declared decision: both meet the band criterion, so the smaller worst shortfall at 0.03 decides
    assert ('**The declared decision on these points: "sqrt"** (every rule meets the band criterion on every task; '
            "the smallest worst seed-0 shortfall at the default lr (2.0 points), then the most points within 1.5 of "
            "their best (1)). Provisional: adapter points not yet decided under every rule: digits 1 of 3; the "
            "default changes only on the finished sweeps.") in text
    # a rule whose chosen lrs spread past one factor-4 band loses to one that keeps them in it, whatever its worst
    linear = point_rows("LoRA r=1", lora1, params=4608, key="h1")
    linear += point_rows("LoRA r=8 [linear]", dict(zip(GRID, (0.3, 0.4, 0.5, 0.6, 0.7))) | {0.12: 0.8, 0.24: 0.75},
                         params=36864, key="h8l")  # chosen 0.12: 8x above LoRA r=1's 0.015
    write_rows(tmp_path / "linear", linear)
    out = rules.analyse({"none": tmp_path / "none", "linear": tmp_path / "linear"}, docs, ["digits"], PER_POINT)
    assert [p.lr for s in out["digits"] if s.rule == "linear" for p in s.points] == [0.015, 0.12]
    assert rules.choose_rule(out) == ("none", "the only rule that meets the band criterion on every task: digits")
    assert rules.choose_rule({"digits": []})[0] is None


def test_the_docs_page_has_the_sqrt_and_rule_comparison_markers():
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    names = ("pareto-per-point:end", "pareto-per-point-sqrt:begin", "pareto-per-point-sqrt:end",
             "pareto-rules:begin", "pareto-rules:end", "peft-results:begin")
    order = [text.index(f"<!-- {m} -->") for m in names]
    assert order == sorted(order)


def test_the_rule_comparison_scores_every_grid_lr_as_the_single_default(tmp_path):
    from benchmarks.study.pareto import rules

    a = point_rows("A", dict(zip(GRID, (0.5, 0.6, 0.8, 0.78, 0.4))), key="ha")  # best 0.015
    b = point_rows("B", dict(zip(GRID, (0.3, 0.4, 0.5, 0.7, 0.71))) | {0.12: 0.6}, key="hb")  # best 0.06
    write_rows(tmp_path / "none", a + b)
    docs = tmp_path / "page.md"
    rules.analyse({"none": tmp_path / "none"}, docs, ["digits"], PER_POINT)
    text = docs.read_text()
    # one seed on 8 images: 2 standard errors = 2 sqrt(0.8 x 0.2 / 8) = 28.3 points
    assert "| single lr | none: within 1.5 / within 2 SE (28.3) points / worst shortfall |" in text
    assert "| 0.015 | 1 of 2 / 2 of 2 / 21.0 |" in text  # A at its best; B 0.71 - 0.5
    assert "| 0.03 | 1 of 2 / 2 of 2 / 2.0 |" in text  # A 0.8 - 0.78 = 2 points (over 1.5), B 0.71 - 0.7 = 1 point
    assert "| 0.06 | 1 of 2 / 1 of 2 / 40.0 |" in text  # A 0.8 - 0.4: beyond the noise too


def test_a_rule_block_keeps_one_method_whole_when_the_rule_tags_only_its_higher_ranks(tmp_path):
    """Under a rank scaling, LoRA r=1 (T = 1) keeps its name and LoRA r=8 is stored as "LoRA [sqrt]"; the rule's
    block shows them as one method, so LoRA r=8's accuracy is found and SuperLoRA is compared with the whole curve."""
    rows = point_rows("LoRA", dict(zip(GRID, (0.5, 0.6, 0.8, 0.78, 0.4))), {0.015: (0.8, 0.8), 0.03: (0.78, 0.78)},
                      params=4608, key="h1")
    rows += point_rows("LoRA [sqrt]", dict(zip(GRID, (0.5, 0.6, 0.7, 0.9, 0.8))), {0.03: (0.9, 0.9)},
                       params=36864, key="h8")
    for r in rows:
        r["budget"] = "r=1" if r["config_hash"] == "h1" else "r=8"
    results = tmp_path / "results"
    write_rows(results, rows)
    docs = tmp_path / "page.md"
    written = analyse(results, docs, tmp_path)
    block = docs.read_text()
    assert "[sqrt]" not in block
    assert [p.method for p in written["summaries"]["digits"]] == ["LoRA", "LoRA"]
    assert "| LoRA | r=8 | 36,864 | 100 | 0.03 | 90.0 ± 0.0 (n=3) |" in block
    assert "≥ LoRA r=8 (90.0 %)" in block and "LoRA r=8 (not run)" not in block


def test_paired_difference_pairs_seeds_and_images_and_refuses_unequal_tables():
    from benchmarks.study.intervals import paired_difference

    first = [[1, 1, 1, 0], [1, 1, 0, 0]]
    second = [[1, 0, 1, 0], [1, 1, 0, 0]]
    mean, low, high = paired_difference(first, second)
    assert mean == pytest.approx(0.125)
    assert 0.0 <= low <= mean <= high <= 1.0  # no image is worse under `first`: no resample is below 0
    assert paired_difference(first, second) == (mean, low, high)  # a fixed RNG seed: the page regenerates
    assert paired_difference(first, first) == (0.0, 0.0, 0.0)  # the same runs: no difference, and no noise either
    with pytest.raises(ValueError, match="equal"):
        paired_difference(first, [[1, 0, 1]])


def test_the_held_out_shortfall_leaves_out_seed_0_and_names_the_points_measurably_short(tmp_path):
    right, half = (True,) * 8, (True,) * 4 + (False,) * 4

    def runs(method, chosen_masks, default_masks, key):
        rows = [row(method, 0, lr, accuracy, phase="sweep", key=key, correct=right if lr == 0.015 else half)
                for lr, accuracy in zip(GRID, (0.5, 0.6, 1.0, 0.5, 0.4))]  # seed 0 picks 0.015
        for seed in (1, 2):
            rows.append(row(method, seed, 0.015, sum(chosen_masks) / 8, key=key, correct=chosen_masks))
            rows.append(row(method, seed, 0.03, sum(default_masks) / 8, key=key, correct=default_masks))
        return rows

    rows = runs("short", right, (False,) * 8, "h-short") + runs("lucky", half, half, "h-lucky")
    blown = runs("blown", right, half, "h-blown")  # seed 2 diverges at the default lr: every image counts as wrong
    blown[-1] = row("blown", 2, 0.03, math.nan, key="h-blown")
    points = by_method(summarise(rows + blown, "digits")[0])
    assert points["blown"].held_out[0] == pytest.approx(0.75)  # seed 1: 1 - 0.5, seed 2: 1 - 0
    assert points["short"].held_out == (1.0, 1.0, 1.0)  # every image, both seeds: no spread
    assert points["lucky"].held_out == (0.0, 0.0, 0.0)  # seed 0's 50-point lead is not there on seeds 1, 2
    assert points["lucky"].shortfall == pytest.approx(1 / 6)  # the 3-seed shortfall carries seed 0's luck
    points.pop("blown")
    spread = lr_spread(list(points.values()))
    assert spread.measured == 2 and [p.method for p in spread.short] == ["short"]
    text = "\n".join(spread_markdown(spread, PER_POINT))
    assert ("the default falls more than 1.5 points short with 95 % confidence for 1 of the 2 points measured so "
            "far: short b5000 (100.0 [100.0, 100.0]).") in text
    assert spread.held_out == (0.0, 1.0)  # lucky, short (summaries are in order of parameters, then method)
    mean, low, high = spread.held_out_mean
    assert mean == pytest.approx(0.5) and 0.0 <= low <= mean <= high <= 1.0  # two points, drawn again
    assert ("over the 2 points measured so far (a point whose chosen lr is the default counts 0), the default "
            "gives away 50.0 points on average") in text
    write_rows(tmp_path / "results", rows)
    analyse(tmp_path / "results", tmp_path / "page.md", tmp_path)
    assert "| 16.7 | 0.0 [0.0, 0.0] |" in (tmp_path / "page.md").read_text()  # lucky: 3-seed vs held-out


def test_the_grid_wide_held_out_shortfall_counts_points_at_the_default_as_zero_and_needs_two_points():
    from benchmarks.study.pareto.report import LrSpread

    def held(*values, measured=None):
        return LrSpread((0.03,) * len(values), None, 0, len(values), 0, 0, None,
                        measured=len(values) if measured is None else measured, held_out=values)

    assert held().held_out_mean is None and held(0.02).held_out_mean is None  # one point: no spread to draw
    assert held(0.0, 0.0, 0.02, measured=1).held_out_mean is None  # two of them only at the default: not yet
    mean, low, high = held(0.04, 0.0, 0.02).held_out_mean
    assert mean == pytest.approx(0.02) and 0.0 <= low < mean < high <= 0.04  # within the points' own range
    assert held(0.01, 0.01).held_out_mean == pytest.approx((0.01, 0.01, 0.01))  # equal points: no spread
    at_default = summary("c", 0.03, 0.0)  # chosen lr = the default: gives nothing away, held-out or not
    assert at_default.at_default and lr_spread([at_default, summary("d", 0.03, 0.0)]).held_out == (0.0, 0.0)


def test_a_sweep_only_block_has_no_held_out_column(tmp_path):
    write_rows(tmp_path / "results", study_rows())
    analyse(tmp_path / "results", tmp_path / "one.md", tmp_path, seeds=(0,))
    analyse(tmp_path / "results", tmp_path / "three.md", tmp_path)
    one, three = (tmp_path / "one.md").read_text(), (tmp_path / "three.md").read_text()
    assert "held-out" not in one and "| shortfall, points |\n|---|---|---|---|---|---|---|---|---|\n" in one
    assert "| shortfall, points | held-out shortfall [95 %] |" in three and "The held-out shortfall leaves" in three


def test_the_tucker_ratio_lead_puts_lorta_and_lotr_at_twice_the_default_and_the_others_at_it(tmp_path):
    from benchmarks.study.pareto import rules

    rows = point_rows("LoRA r=1", dict(zip(GRID, (0.5, 0.6, 0.7, 0.8, 0.6))), key="hl")  # best at 0.03
    rows += point_rows("LoRTA M=3 r=8", dict(zip(GRID, (0.5, 0.6, 0.7, 0.75, 0.8))) | {0.12: 0.7}, key="ht",
                       family="lorta")  # best at 0.06: 5 points short at 0.03, none at 0.06
    rows += point_rows("LoTR r=8", dict(zip(GRID, (0.5, 0.6, 0.9, 0.7, 0.6))), key="hr", family="lotr")  # 0.015
    write_rows(tmp_path / "none", rows)
    out = rules.analyse({"none": tmp_path / "none"}, tmp_path / "page.md", ["digits"], PER_POINT)
    assert [rules.tucker(p) for p in out["digits"][0].points] == [False, True, True]
    lines = rules.ratio_markdown(out["digits"], 0.03, images=8)
    # at 0.03: LoRA 0, LoRTA 5, LoTR 20 points short; with LoRTA and LoTR at 0.06: 0, 0 and 30 (2 SE on 8 images:
    # 28.3 points)
    assert lines[2] == "| none | 0.03 for all | 3 | 1 | 3 | 8.3 | 20.0 |"
    assert lines[3] == "| none | 0.06 for LoRTA and LoTR, 0.03 for the others | 3 | 2 | 2 | 10.0 | 30.0 |"


def test_the_shipped_rank_scaling_is_the_declared_decision_once_it_is_final():
    """docs/benchmarks.md's rule comparison states the declared decision; while points are undecided it says so and
    the default stays as it is, and once the sweeps are finished the library must ship the rule it names."""
    import re

    from superlora.defaults import DEFAULT_RANK_SCALING

    text = (ROOT / "docs" / "benchmarks.md").read_text()
    block = text[text.index("<!-- pareto-rules:begin -->"):text.index("<!-- pareto-rules:end -->")]
    found = re.search(r'\*\*The declared decision on these points: "(\w+)"\*\*[^\n]*', block)
    assert found or "**The declared decision cannot be made yet**" in block
    if found and "Provisional:" not in found.group(0):
        assert DEFAULT_RANK_SCALING == found.group(1)
    else:
        assert DEFAULT_RANK_SCALING == "none"  # no change of default before the decision is final
