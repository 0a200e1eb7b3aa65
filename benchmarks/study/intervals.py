"""Uncertainty of a study point's accuracy: per-image correctness stored in a row (`encode_correct`), and 95 %
percentile bootstrap intervals of the mean accuracy over seeds and validation images (`bootstrap_interval`), or over
seeds alone where a row has no per-image record (`seed_interval`); and the paired difference of two lrs run on the
same seeds and images (`paired_difference`). Shared by the ViT studies."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

BOOTSTRAP_SEED = 12  # fixed, so that a page regenerates byte for byte
RESAMPLES = 2000
LEVEL = 0.95
OVER_BOTH, OVER_SEEDS = "seeds × images", "seeds only"


def encode_correct(correct: Sequence[bool]) -> str:
    """Per-image correctness as hex digits: bit i (of the number they spell) is validation image i; "" for none."""
    if not correct:
        return ""
    value = sum(1 << index for index, right in enumerate(correct) if right)
    return f"{value:0{(len(correct) + 3) // 4}x}"


def decode_correct(text: str, count: int) -> tuple[bool, ...]:
    """The inverse of `encode_correct` for `count` validation images (() for "")."""
    if not text:
        return ()
    value = int(text, 16)
    if value >> count:
        raise ValueError(f"a correctness mask for {count} images has bits beyond image {count - 1}")
    return tuple(bool(value >> index & 1) for index in range(count))


def correct_from_validation(record: dict[str, Any] | None) -> tuple[bool, ...]:
    """Per-image correctness from `train()`'s validation record (every image not among its mistakes); () when
    the record does not list them."""
    if record is None or record.get("mistakes") is None:
        return ()
    wrong = {entry["index"] for entry in record["mistakes"]}
    return tuple(index not in wrong for index in range(record["count"]))


def bootstrap_interval(correct: Sequence[Sequence[bool]], resamples: int = RESAMPLES, level: float = LEVEL,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile interval of the mean accuracy when both the runs (one row of `correct` per seed) and the
    validation images (its columns) are drawn again with replacement, independently."""
    import numpy as np

    means = _resampled_means(np.asarray(correct, dtype=float), resamples, seed)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _resampled_means(matrix, resamples: int, seed: int):
    """The mean of a (runs x images) table after drawing its rows and, independently, its columns again with
    replacement, `resamples` times."""
    import numpy as np

    runs, images = matrix.shape
    rng = np.random.default_rng(seed)
    run_counts = rng.multinomial(runs, np.full(runs, 1 / runs), size=resamples)
    image_counts = rng.multinomial(images, np.full(images, 1 / images), size=resamples)
    # whole counts (exact in float64), divided once: an all-right matrix gives exactly 1.0
    return np.einsum("br,ri,bi->b", run_counts, matrix, image_counts) / (runs * images)


def paired_difference(first: Sequence[Sequence[bool]], second: Sequence[Sequence[bool]],
                      resamples: int = RESAMPLES, level: float = LEVEL, seed: int = BOOTSTRAP_SEED
                      ) -> tuple[float, float, float]:
    """(mean difference, low, high): the mean accuracy of `first` minus that of `second`, where row k of each is
    the same seed on the same validation images, with a percentile interval that draws the seeds (as pairs) and the
    images again with replacement. Pairing removes what the seeds and images have in common, so the interval is
    far narrower than the two means' own intervals would suggest."""
    import numpy as np

    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if a.ndim != 2 or a.shape != b.shape or not a.size:
        raise ValueError(f"paired_difference takes two equal, non-empty (seeds x images) tables, not {a.shape} and "
                         f"{b.shape}")
    matrix = a - b
    means = _resampled_means(matrix, resamples, seed)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(matrix.mean()), float(low), float(high)


def seed_interval(accuracies: Sequence[float], resamples: int = RESAMPLES, level: float = LEVEL,
                  seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """The same over the runs alone (when the per-image correctness is not known)."""
    import numpy as np

    values = np.asarray(accuracies, dtype=float)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(values), np.full(len(values), 1 / len(values)), size=resamples)
    low, high = np.quantile(counts @ values / len(values), [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def rows_interval(rows: Sequence[dict[str, Any]]) -> tuple[tuple[float, float], str]:
    """(interval, what it is over) of the mean accuracy of finished rows (status "ok"): over seeds and images when
    every row has its `val_correct` record, else over seeds; (NaN, NaN) and "–" for none."""
    ok = [r for r in rows if r["status"] == "ok"]
    masks = [decode_correct(r.get("val_correct", ""), int(r["val_size"])) for r in ok]
    if ok and all(masks):
        return bootstrap_interval(masks), OVER_BOTH
    if ok:
        return seed_interval([r["accuracy"] for r in ok]), OVER_SEEDS
    return (math.nan, math.nan), "–"
