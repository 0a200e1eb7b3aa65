"""Pick the adapter learning rate of a run from short probe runs, so that a user need not tune it.

No fixed scale carries one lr across every adapter and budget (docs/benchmarks.md, issue 12): the best lr of the
study's points on the digits task spans 0.015 to 0.06, and 0.03 falls up to 9.8 points short of a point's best.
Probe runs of a quarter of the run, compared by validation loss, do better than the fixed default on both study
tasks (benchmarks/lr_probe.py, seed 0: within 1.5 points of the point's best for 8 of 10 digits points and 16
of 30 inspection points; the default for 6 of 10 and 13 of 30), but one inspection point still lands 19.5 points
short, and at the studio's own settings it moved seven methods by -5 to +3 points over 3 seeds, so this is an
option, not the default. It costs about 75 % more steps.

    options = TrainOptions(steps=150)
    pick = pick_lr("superlora-default", train_set, val_set, preset("lorta", rank=4), options)
    result = train("superlora-default", train_set, val_set, preset("lorta", rank=4), options.replace(lr=pick.lr))

Each probe is an ordinary `train()` run (the same data order, augmentation, seed and head lr) with its warm-up and
cosine schedule compressed to the probe's length; it writes no run folder. The best probe wins by validation
loss, then accuracy, then the smaller lr; a probe whose loss becomes NaN or infinite loses (see `best_probe`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from superlora.config import SuperLoRAConfig, preset
from superlora.data import ImageSet
from superlora.defaults import LR_CANDIDATES, PROBE_FRACTION
from superlora.errors import ConfigError
from superlora.train.loop import train
from superlora.train.options import Callback, NonFiniteLossError, StopSignal, TrainEvent, TrainOptions, TrainResult
from superlora.train.sampling import steps_per_epoch


@dataclass(frozen=True)
class LrProbe:
    """One candidate's short run: its validation accuracy and loss (0 and inf when its loss blew up)."""

    lr: float
    steps: int
    accuracy: float
    loss: float
    diverged: bool = False


@dataclass(frozen=True)
class LrPick:
    """The chosen lr and every probe, in the order they ran; `stopped` when a stop request cut the probes short
    (then `lr` is the best of the probes that finished, or the first candidate if none did)."""

    lr: float
    probes: tuple[LrProbe, ...]
    stopped: bool = False

    def describe(self) -> str:
        tried = ", ".join(f"{p.lr:g}: " + ("diverged" if p.diverged else
                                           f"loss {p.loss:.3f}, {100 * p.accuracy:.1f} %") for p in self.probes)
        return f"lr {self.lr:g} (probe runs of {self.probes[0].steps} steps: {tried})" if self.probes else \
            f"lr {self.lr:g} (no probe finished)"

    def record(self) -> dict[str, Any]:
        """What a run folder's config.json keeps of the pick (under "lr_pick"): the lr and every probe, a diverged
        probe's loss as null (JSON has no infinity)."""
        return {"lr": self.lr, "probes": [{**dataclasses.asdict(p), "loss": p.loss if math.isfinite(p.loss) else None}
                                          for p in self.probes]}


def probe_steps(options: TrainOptions, train_size: int, fraction: float = PROBE_FRACTION) -> int:
    """Steps of one probe: `fraction` of the run `options` describes on `train_size` images, at least one."""
    return max(1, round(fraction * options.total_steps(steps_per_epoch(train_size, options.batch_size))))


def _check(config: SuperLoRAConfig | dict | str | None, val_set: ImageSet | None, candidates: Sequence[float],
           fraction: float) -> None:
    resolved = preset(config) if isinstance(config, str) else \
        SuperLoRAConfig.from_dict(config) if isinstance(config, dict) else config
    if resolved is not None and resolved.head_only:
        raise ConfigError("the head-only method trains no adapter, so there is no adapter lr to pick; set head_lr "
                          "(docs/training.md) or choose an adapter")
    if val_set is None or not len(val_set):
        raise ConfigError("picking the lr needs validation images: the probes are compared on them")
    if not candidates or any(not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0
                             for lr in candidates):
        raise ConfigError(f"candidates={tuple(candidates)!r}: give one or more positive learning rates, "
                          "e.g. (0.015, 0.03, 0.06)")
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction={fraction!r}: a probe runs a share of the run, 0 < fraction <= 1 (e.g. 0.25)")


def pick_lr(model: nn.Module | str, train_set: ImageSet, val_set: ImageSet, config: SuperLoRAConfig | dict | str,
            options: TrainOptions | None = None, *, candidates: Sequence[float] = LR_CANDIDATES,
            fraction: float = PROBE_FRACTION, callbacks: Iterable[Callback] = (),
            stop: StopSignal | None = None) -> LrPick:
    """Train `config` on `model` for `fraction` of the run at each of `candidates` and return the best lr.

    model: as for `train()`; a module is copied for each probe, so the caller's model is left untouched.
    options: the run the lr is for (its steps or epochs set the probes' length; `lr` and `output_dir` are
        ignored). callbacks: get every probe's events, each with `details["probe"]` = {"index": 1-based,
        "of": the number of candidates, "lr": the probe's lr} (see `probe_of`).
    """
    options = options if options is not None else TrainOptions()
    candidates = tuple(candidates)
    _check(config, val_set, candidates, fraction)
    steps = probe_steps(options, len(train_set), fraction)
    stop = stop or StopSignal()
    probes: list[LrProbe] = []
    for lr in candidates:
        if stop.requested:
            break
        probe_options = options.replace(steps=steps, epochs=None, lr=float(lr), output_dir=None,
                                        checkpoint_every=None, eval_every_epoch=False)
        subject = copy.deepcopy(model) if isinstance(model, nn.Module) else model
        tag = {"index": len(probes) + 1, "of": len(candidates), "lr": float(lr)}
        try:
            result = train(subject, train_set, val_set, config, probe_options, callbacks=_tagged(callbacks, tag),
                           stop=stop)
        except NonFiniteLossError:
            probes.append(LrProbe(float(lr), steps, 0.0, math.inf, diverged=True))
            continue
        if result.stopped:
            break
        probes.append(LrProbe(float(lr), steps, result.best_accuracy, result.metrics.get("loss", math.inf)))
    best = best_probe(probes)
    return LrPick(best.lr if best else float(candidates[0]), tuple(probes), stopped=stop.requested)


def _tagged(callbacks: Iterable[Callback], tag: dict[str, Any]) -> list[Callback]:
    """The callbacks, each given a copy of every event with `details["probe"] = tag`."""
    def forward(callback: Callback) -> Callback:
        return lambda event: callback(dataclasses.replace(event, details={**event.details, "probe": tag}))
    return [forward(callback) for callback in callbacks]


def probe_of(event: TrainEvent) -> dict[str, Any] | None:
    """The probe an event of `pick_lr` belongs to ({"index", "of", "lr"}), or None for an event of a real run."""
    return (getattr(event, "details", None) or {}).get("probe")


def train_at_picked_lr(model: nn.Module | str, train_set: ImageSet, val_set: ImageSet,
                       config: SuperLoRAConfig | dict | str, options: TrainOptions | None = None, *,
                       callbacks: Iterable[Callback] = (), stop: StopSignal | None = None,
                       run_info: Mapping[str, Any] | None = None, candidates: Sequence[float] = LR_CANDIDATES,
                       fraction: float = PROBE_FRACTION, on_pick: Callable[[LrPick], None] | None = None
                       ) -> tuple[TrainResult | None, LrPick]:
    """`pick_lr`, then the whole run at the picked lr: (its TrainResult, the pick). The run folder's config.json
    records the pick under "lr_pick". The callbacks get the probes' events (tagged, see `pick_lr`) and then the
    run's; `on_pick` gets the pick as soon as the probes end. A stop request during the probes ends it there:
    (None, the pick so far), and nothing is trained."""
    options = options if options is not None else TrainOptions()
    stop = stop or StopSignal()
    callbacks = list(callbacks)
    pick = pick_lr(model, train_set, val_set, config, options, candidates=candidates, fraction=fraction,
                   callbacks=callbacks, stop=stop)
    if on_pick is not None:
        on_pick(pick)
    if pick.stopped:
        return None, pick
    result = train(model, train_set, val_set, config, options.replace(lr=pick.lr), callbacks=callbacks, stop=stop,
                   run_info={**(run_info or {}), "lr_pick": pick.record()})
    return result, pick


def best_probe(probes: Sequence[LrProbe]) -> LrProbe | None:
    """The winning probe: the lowest validation loss, then the better accuracy, then the smaller lr; a diverged
    probe only when every probe diverged; None for no probes.

    The loss decides because it moves in small steps: accuracy on a small validation set moves one image at a time
    (0.8 points on 128 images), so short probes often tie or swap on it by chance."""
    finished = [p for p in probes if not p.diverged] or list(probes)
    return min(finished, key=lambda p: (p.loss, -p.accuracy, p.lr)) if finished else None
