"""Picking the lr from short probe runs (superlora.train.auto_lr): which probe wins, how long probes run, what
they leave untouched, stop requests, diverged probes, bad arguments, and a real run on a tiny ViT."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from superlora import preset
from superlora.errors import ConfigError
from superlora.train import NonFiniteLossError, StopSignal, TrainEvent, TrainOptions, probe_of, train_at_picked_lr
from superlora.train import auto_lr
from superlora.train.auto_lr import LR_CANDIDATES, pick_lr, probe_steps

from train_helpers import colour_split, tiny_vit

LORA = preset("lora", rank=2)


class FakeTrain:
    """Stands in for `train()`: accuracy and loss per lr from tables, records what each probe was given."""

    def __init__(self, accuracy, loss=None, diverge=(), stop_after=None):
        self.accuracy, self.loss, self.diverge, self.stop_after = accuracy, loss or {}, set(diverge), stop_after
        self.calls = []

    def __call__(self, model, train_set, val_set, config, options, callbacks=(), stop=None, run_info=None):
        self.calls.append(SimpleNamespace(model=model, options=options, run_info=run_info))
        for callback in callbacks:
            callback(TrainEvent("start", 0, options.steps, 1, message="training"))
        if options.lr in self.diverge:
            raise NonFiniteLossError("loss is nan")
        if self.stop_after is not None and len(self.calls) > self.stop_after:
            stop.request()
            return SimpleNamespace(stopped=True, best_accuracy=0.0, metrics={})
        return SimpleNamespace(stopped=False, best_accuracy=self.accuracy[options.lr],
                               metrics={"loss": self.loss.get(options.lr, 1.0)})


def test_the_best_probe_wins_by_loss_then_accuracy_then_the_smaller_lr(monkeypatch):
    train_set, val_set = colour_split()  # 27 training images
    # 0.06 has the best accuracy but 0.03 the lowest loss: the loss decides
    fake = FakeTrain({0.015: 0.7, 0.03: 0.8, 0.06: 0.85}, loss={0.015: 0.9, 0.03: 0.4, 0.06: 0.6})
    monkeypatch.setattr(auto_lr, "train", fake)
    options = TrainOptions(epochs=4, batch_size=8, output_dir="somewhere", checkpoint_every=2)  # 16 steps
    pick = pick_lr("any-model", train_set, val_set, LORA, options)
    assert pick.lr == 0.03 and not pick.stopped
    assert [p.lr for p in pick.probes] == list(LR_CANDIDATES) and {p.steps for p in pick.probes} == {4}
    for call, lr in zip(fake.calls, LR_CANDIDATES):  # a quarter of the run, no run folder, at the candidate
        assert (call.options.steps, call.options.epochs, call.options.lr) == (4, None, lr)
        assert call.options.output_dir is None and call.options.checkpoint_every is None
        assert call.options.batch_size == 8 and call.options.seed == options.seed
    assert pick.describe() == ("lr 0.03 (probe runs of 4 steps: 0.015: loss 0.900, 70.0 %, "
                               "0.03: loss 0.400, 80.0 %, 0.06: loss 0.600, 85.0 %)")

    fake = FakeTrain({0.015: 0.7, 0.03: 0.8, 0.06: 0.75}, loss={0.015: 0.5, 0.03: 0.5, 0.06: 0.5})
    monkeypatch.setattr(auto_lr, "train", fake)
    assert pick_lr("any-model", train_set, val_set, LORA, options).lr == 0.03  # equal losses: the better accuracy
    fake = FakeTrain({0.015: 0.8, 0.03: 0.8, 0.06: 0.8})
    monkeypatch.setattr(auto_lr, "train", fake)
    assert pick_lr("any-model", train_set, val_set, LORA, options).lr == 0.015  # all equal: the smallest


def test_a_diverged_probe_loses_and_a_module_is_copied_for_every_probe(monkeypatch):
    train_set, val_set = colour_split()
    fake = FakeTrain({0.015: 0.5, 0.03: 0.6}, diverge={0.06})
    monkeypatch.setattr(auto_lr, "train", fake)
    model = tiny_vit()
    pick = pick_lr(model, train_set, val_set, LORA, TrainOptions(steps=10, batch_size=8))
    assert pick.lr == 0.03 and pick.probes[-1].diverged and pick.probes[-1].loss == math.inf
    assert pick.record()["probes"][-1]["loss"] is None  # JSON has no infinity
    assert all(call.model is not model for call in fake.calls)
    assert len({id(call.model) for call in fake.calls}) == 3
    assert [p.steps for p in pick.probes] == [2, 2, 2]  # round(0.25 x 10) = round(2.5), to even
    assert "0.06: diverged" in pick.describe()


def test_a_stop_request_ends_the_probes_with_the_best_finished_one(monkeypatch):
    train_set, val_set = colour_split()
    fake = FakeTrain({0.015: 0.5, 0.03: 0.9, 0.06: 0.99}, stop_after=2)
    monkeypatch.setattr(auto_lr, "train", fake)
    pick = pick_lr("m", train_set, val_set, LORA, TrainOptions(steps=8, batch_size=8))
    assert pick.stopped and pick.lr == 0.03 and [p.lr for p in pick.probes] == [0.015, 0.03]
    stop = StopSignal()
    stop.request()
    pick = pick_lr("m", train_set, val_set, LORA, TrainOptions(steps=8, batch_size=8), stop=stop)
    assert pick.stopped and pick.probes == () and pick.lr == LR_CANDIDATES[0]
    assert pick.describe() == "lr 0.015 (no probe finished)"


@pytest.mark.parametrize("kwargs, message", [
    (dict(val_set=None), "needs validation images"),
    (dict(candidates=()), "one or more positive learning rates"),
    (dict(candidates=(0.01, -1.0)), "one or more positive learning rates"),
    (dict(candidates=(float("nan"),)), "one or more positive learning rates"),
    (dict(fraction=0.0), "0 < fraction <= 1"),
    (dict(fraction=1.5), "0 < fraction <= 1"),
    (dict(config="head-only"), "no adapter lr to pick"),
    (dict(config={"name": "head-only", "targets": []}), "no adapter lr to pick"),
])
def test_bad_arguments_are_refused_before_any_training(monkeypatch, kwargs, message):
    train_set, val_set = colour_split()
    fake = FakeTrain({})
    monkeypatch.setattr(auto_lr, "train", fake)
    arguments = dict(val_set=val_set, config=LORA) | kwargs
    val, config = arguments.pop("val_set"), arguments.pop("config")
    with pytest.raises(ConfigError, match=message):
        pick_lr("m", train_set, val, config, TrainOptions(steps=8, batch_size=8), **arguments)
    assert fake.calls == []


def test_train_at_picked_lr_probes_then_trains_once_at_the_pick_and_records_it(monkeypatch):
    train_set, val_set = colour_split()
    fake = FakeTrain({0.015: 0.7, 0.03: 0.8, 0.06: 0.6}, loss={0.015: 0.9, 0.03: 0.5, 0.06: 1.2})
    monkeypatch.setattr(auto_lr, "train", fake)
    events, picks = [], []
    options = TrainOptions(steps=12, batch_size=8, output_dir="run-folder")
    result, pick = train_at_picked_lr("any-model", train_set, val_set, LORA, options, callbacks=[events.append],
                                      run_info={"data": {"source": "x"}},
                                      on_pick=lambda p: picks.append((p.lr, len(fake.calls))))
    assert picks == [(0.03, 3)]  # told as soon as the three probes ended, before the run
    assert [(c.options.lr, c.options.steps, c.options.output_dir) for c in fake.calls] == \
        [(0.015, 3, None), (0.03, 3, None), (0.06, 3, None), (0.03, 12, "run-folder")]
    run_info = fake.calls[-1].run_info
    assert run_info["data"] == {"source": "x"} and run_info["lr_pick"] == pick.record()
    assert pick.record() == {"lr": 0.03, "probes": [
        {"lr": lr, "steps": 3, "accuracy": acc, "loss": loss, "diverged": False}
        for lr, acc, loss in ((0.015, 0.7, 0.9), (0.03, 0.8, 0.5), (0.06, 0.6, 1.2))]}
    assert result is not None and not result.stopped
    # the probes' events carry which probe they are; the run's carry none
    assert [probe_of(e) for e in events] == [{"index": 1, "of": 3, "lr": 0.015}, {"index": 2, "of": 3, "lr": 0.03},
                                            {"index": 3, "of": 3, "lr": 0.06}, None]

    fake = FakeTrain({0.015: 0.7, 0.03: 0.8, 0.06: 0.6}, stop_after=1)  # stopped during the second probe
    monkeypatch.setattr(auto_lr, "train", fake)
    result, pick = train_at_picked_lr("any-model", train_set, val_set, LORA, options)
    assert result is None and pick.stopped and len(fake.calls) == 2  # nothing trained after the stop


def test_probe_steps_follow_the_run_length():
    assert probe_steps(TrainOptions(steps=150), 1000) == 38  # round(37.5): to the even 38
    assert probe_steps(TrainOptions(epochs=3, batch_size=32), 256) == 6  # 8 steps per epoch x 3 = 24
    assert probe_steps(TrainOptions(steps=2), 100) == 1  # at least one step
    assert probe_steps(TrainOptions(steps=100), 100, fraction=1.0) == 100


def test_a_real_pick_on_a_tiny_vit_leaves_the_model_as_it_was():
    import torch

    train_set, val_set = colour_split()
    model = tiny_vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pick = pick_lr(model, train_set, val_set, LORA, TrainOptions(epochs=4, batch_size=8, head_lr=1e-2),
                   candidates=(1e-3, 1e-2))
    assert pick.lr in (1e-3, 1e-2) and [p.steps for p in pick.probes] == [4, 4]
    assert all(0.0 <= p.accuracy <= 1.0 and math.isfinite(p.loss) for p in pick.probes)
    best = min(pick.probes, key=lambda p: (p.loss, -p.accuracy))
    assert pick.lr == best.lr
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # probes trained copies


def test_the_run_after_the_probes_repeats_a_plain_run_at_the_picked_lr_exactly():
    """The probes use their own seeded randomness: the picked run is the run `train` gives at that lr, bit for bit."""
    import torch

    from superlora.train import train

    train_set, val_set = colour_split()
    options = TrainOptions(epochs=3, batch_size=8, head_lr=1e-2, seed=3)
    picked, pick = train_at_picked_lr(tiny_vit(), train_set, val_set, LORA, options, candidates=(1e-3, 1e-2))
    plain = train(tiny_vit(), train_set, val_set, LORA, options.replace(lr=pick.lr))
    drop = ("elapsed_s",)
    assert [{k: v for k, v in h.items() if k not in drop} for h in picked.history] == \
        [{k: v for k, v in h.items() if k not in drop} for h in plain.history]
    assert all(torch.equal(a, b) for a, b in zip(picked.model.state_dict().values(), plain.model.state_dict().values()))
