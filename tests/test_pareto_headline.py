"""The per-point re-run's statement of what reproduced (benchmarks/study/pareto/headline.py) on hand-made rows:
the smallest adapters against head-only, compared seed by seed and image by image, and the caveat on the longer
runs of the small points."""

from __future__ import annotations

import math
from dataclasses import replace

from benchmarks.study.intervals import paired_difference
from benchmarks.study.pareto.headline import headline_markdown, paired_head_only_claim, versus
from benchmarks.study.pareto.report import summarise
from benchmarks.study.pareto.report_markdown import analyse
from benchmarks.study.sweep import HEAD_ONLY_FAMILY

from test_pareto_per_point_report import GRID, HEAD_GRID, row, write_rows

IMAGES = 20


def mask(right: int, shift: int = 0) -> tuple[bool, ...]:
    """`right` of the IMAGES images right, starting at image `shift` (wrapping round)."""
    return tuple((i - shift) % IMAGES < right for i in range(IMAGES))


def masked_point(method, masks, *, family="lorta", params=300, grid=GRID, chosen=0.015):
    """Seed 0 sweeps `grid` (every lr but `chosen` gets 1 image right), then seeds 1.. run at `chosen`; the runs at
    `chosen` get `masks` right, seed by seed (None: the run diverged)."""
    def at(seed, lr, correct, phase):
        if correct is None:
            return row(method, seed, lr, math.nan, family=family, params=params, phase=phase,
                       correct=(False,) * IMAGES)
        return row(method, seed, lr, sum(correct) / IMAGES, family=family, params=params, phase=phase,
                   correct=correct)

    rows = [at(0, lr, masks[0] if lr == chosen else mask(1), "sweep") for lr in grid]
    return rows + [at(seed, chosen, correct, "main") for seed, correct in enumerate(masks[1:], start=1)]


def head_rows(masks):
    return masked_point("head only", masks, family=HEAD_ONLY_FAMILY, params=0, grid=HEAD_GRID, chosen=0.01)


def points_of(rows):
    points, unfinished = summarise(rows, "digits")
    assert not unfinished
    return {p.method: p for p in points}


def test_versus_pairs_the_shared_seeds_image_by_image_and_counts_a_diverged_run_as_all_wrong():
    head = [mask(10), mask(10, 3), mask(11)]
    better = [mask(16), mask(15, 3), mask(17)]
    found = points_of(head_rows(head) + masked_point("better", better) + masked_point("blown", [mask(12), None])
                      + masked_point("seed 0 only", [mask(12)]))
    diff, low, high, shared = versus(found["better"], found["head only"])
    assert (diff, low, high) == paired_difference(better, head) and shared == 3
    assert math.isclose(diff, (6 + 5 + 6) / 60) and 0 < low <= diff <= high
    assert found["blown"].correct[1] == (False,) * IMAGES  # the diverged seed 1 scores every image wrong
    assert versus(found["blown"], found["head only"])[:3] == paired_difference([mask(12), (False,) * IMAGES],
                                                                                head[:2])
    assert versus(found["seed 0 only"], found["head only"])[3] == 1
    unrecorded = replace(found["better"], correct=((),) * 3)
    assert versus(unrecorded, found["head only"]) is None  # no per-image record: nothing to pair


def test_the_claim_counts_points_above_below_and_within_noise_of_head_only_and_names_the_largest_gain():
    head = [mask(10), mask(10, 5), mask(10, 9)]
    rows = head_rows(head)
    rows += masked_point("above", [mask(18), mask(18, 5), mask(19, 9)], params=120)
    rows += masked_point("level", [mask(10, 1), mask(10, 4), mask(10, 8)], params=400)
    rows += masked_point("below", [mask(2), mask(2, 5), mask(1, 9)], params=900)
    found = points_of(rows)
    few = [found[name] for name in ("above", "level", "below")]
    text = "\n".join(paired_head_only_claim("digits", list(found.values()), few))
    assert "head only (0 adapter parameters, head lr 0.01): 50.0 % over 3 seed(s)" in text
    assert "Of the 3 adapter points with at most 1,000 parameters, 3 ran seeds it ran too: 1 beat it" in text
    assert "1 fall below it and 1 are within noise of it" in text
    diff, low, high, _ = versus(found["above"], found["head only"])
    assert f"The largest gain: above b120 (120 parameters), {100 * diff:+.1f} points [{100 * low:+.1f}, " \
           f"{100 * high:+.1f}] over 3 seed(s)." in text
    assert math.isclose(diff, (8 + 8 + 9) / 60)
    no_head = paired_head_only_claim("digits", few, few)
    assert no_head == ["- digits: the head-only baseline (0 adapter parameters) has no finished run yet, so the "
                       "smallest adapters cannot be compared with it."]


def test_the_headline_says_when_the_small_points_trained_longer_than_lora():
    rows = head_rows([mask(10)]) + masked_point("LoRTA", [mask(15)], params=300)  # 400 steps (row(): < 1,000)
    rows += masked_point("LoRA", [mask(14)], family="lora", params=4608)  # 100 steps
    found = points_of(rows)
    text = headline_markdown({"digits": list(found.values())})
    assert text.startswith("#### What reproduced and what did not\n")
    assert "- digits: the 1 adapter points under 1,000 parameters trained 400 steps and the others, LoRA among " \
           "them, 100;" in text
    same = headline_markdown({"digits": [found["head only"], found["LoRA"]]})
    assert "trained 400 steps" not in same


def test_analyse_puts_the_headline_on_top_of_the_block(tmp_path):
    rows = head_rows([mask(10)]) + masked_point("LoRTA", [mask(15)], params=300)
    write_rows(tmp_path / "results", rows)
    docs = tmp_path / "page.md"
    analyse(tmp_path / "results", docs, seeds=(0,))
    text = docs.read_text()
    assert text.index("#### What reproduced and what did not") < text.index("#### digits")
    assert "1 beat it" in text and "The largest gain: LoRTA b300 (300 parameters), +25.0 points" in text
