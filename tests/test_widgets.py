"""Widgets driven programmatically: the count label and the figures follow the controls, the training panel
follows its event stream and its Stop button reaches the run."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from superlora import ConfigError, SuperLoRAConfig, count_parameters, get_superlora_model, preset
from superlora.controls import CONTROLS, format_count
from superlora.train import TrainEvent
from superlora.viz import trace_by_key
from superlora.widgets import ConfigPanel, DeltaExplorer, TrainingPanel, target_choices
from tests.toy_models import TwoLayerMLP, randomize_trainable, tiny_vit


@pytest.fixture(scope="module")
def model():
    return tiny_vit()


def _shown(panel: ConfigPanel) -> int:
    """The adapter count the label and the budget figure's marker show (they must agree)."""
    marker = trace_by_key(panel.figure, "marker")
    assert f"adapter parameters: {marker.y[0]:,d}" in panel.count_label.value
    return marker.y[0]


def test_target_choices(model):
    assert target_choices(model) == ["q", "k", "v", "qkv", "proj", "fc1", "fc2"]  # head stays trainable
    assert target_choices(TwoLayerMLP()) == ["fc1", "fc2"]


def test_config_panel_counts_follow_the_controls(model):
    panel = ConfigPanel(model, "lora")
    assert panel.config == preset("lora", targets=("q", "v"))
    assert _shown(panel) == count_parameters(model, panel.config).adapter

    panel.rank.value = 3
    assert panel.config == preset("lora", rank=3, targets=("q", "v"))
    assert _shown(panel) == count_parameters(model, preset("lora", rank=3)).adapter
    assert trace_by_key(panel.figure, "marker").x[0] == 3

    panel.target_boxes["k"].value = True
    assert panel.config.targets == ("q", "k", "v")
    assert _shown(panel) == count_parameters(model, preset("lora", rank=3, targets=("q", "k", "v"))).adapter
    lora_curve = trace_by_key(panel.figure, "lora")
    assert lora_curve.y[0] == count_parameters(model, preset("lora", rank=1, targets=("q", "k", "v"))).adapter


def test_config_panel_preset_switch_and_knobs(model):
    panel = ConfigPanel(model, "lora")
    seen = []
    panel.on_change(lambda config, count: seen.append((config, count.adapter)))
    panel.preset.value = "lorta"
    assert panel.config == preset("lorta", targets=("q", "v"))  # the preset's own settings, rank kept at 1
    assert not panel.order.disabled and panel.splits.value == 1
    panel.order.value = 4
    panel.groups.value = 2
    panel.shuffle.value = True
    panel.ratio.value = 0.1
    expected = preset("lorta", order=4, groups=2, shuffle=True, ratio=0.1, projection="fastfood")
    assert panel.config == expected
    assert _shown(panel) == count_parameters(model, expected).adapter
    assert seen[-1] == (expected, count_parameters(model, expected).adapter)
    panel.preset.value = "lokr"
    assert panel.splits.disabled and panel.order.disabled and panel.ratio.disabled
    assert panel.config == preset("lokr", targets=("q", "v"))


def test_config_panel_shows_errors_and_keeps_the_last_figure(model):
    panel = ConfigPanel(model, "superlora-2d")
    before = _shown(panel)
    panel.grouping.value = "layer"
    panel.groups.value = 5  # 4 targets cannot fill 5 layer groups
    assert panel.error and "groups=5" in panel.error
    assert "groups=5" in panel.message.value and "—" in panel.count_label.value
    assert trace_by_key(panel.figure, "marker").y[0] == before
    panel.groups.value = 2
    assert panel.error is None and panel.message.value == ""
    assert _shown(panel) == count_parameters(model, preset("superlora-2d", grouping="layer", groups=2)).adapter


def test_config_panel_starts_from_a_preset(model):
    panel = ConfigPanel(model, preset("lorta", rank=3, groups=2, shuffle=True))
    assert panel.config == preset("lorta", rank=3, groups=2, shuffle=True)
    with pytest.raises(ConfigError, match="starts from a preset"):
        ConfigPanel(model, SuperLoRAConfig(rank=2))



def test_config_panel_offers_head_only_with_every_knob_greyed_out_and_no_adapter(model):
    panel = ConfigPanel(model, "lora")
    assert "head-only" in [value for _, value in panel.preset.options]
    panel.preset.value = "head-only"
    assert panel.config == preset("head-only") and panel.count.adapter == 0
    assert panel.count.trainable_module_parameters == sum(p.numel() for p in model.head.parameters())
    assert "<b>adapter parameters: 0</b>" in panel.count_label.value and "No adapter" in panel.count_label.value
    assert all(control.disabled for control in (*panel.controls.values(), *panel.target_boxes.values()))
    assert panel.figure.data == ()  # no budget to draw without an adapter
    panel.preset.value = "lora"
    assert not panel.rank.disabled and not panel.target_boxes["q"].disabled
    assert panel.config == preset("lora", targets=("q", "v")) and _shown(panel) == panel.count.adapter > 0
    started = ConfigPanel(model, "head-only")
    assert started.config.head_only and started.rank.disabled

def test_config_panel_controls_come_from_the_control_description(model):
    panel = ConfigPanel(model, preset("lorta", alpha=8.0, seed=3), max_rank=12)
    for name in ("order", "splits"):
        control = getattr(panel, name)
        assert (control.min, control.max) == (CONTROLS[name].minimum, CONTROLS[name].maximum)
        assert control.description == CONTROLS[name].short and control.tooltip == CONTROLS[name].help
    assert (panel.rank.min, panel.rank.max, panel.groups.min, panel.groups.max) == (1, 12, 0, 32)
    assert (panel.ratio.min, panel.ratio.max) == (-3, 0)  # powers of ten: ratio 0.001 .. 1
    assert panel.grouping.options == CONTROLS["grouping"].choices
    assert panel.config == preset("lorta", alpha=8.0, seed=3)  # alpha and seed of the start config are kept
    assert panel.count_label.value == format_count(panel.count, "html")
    panel.grouping.value = "layer"
    panel.groups.value = 0  # 0 = one group per target weight, as in the studio
    assert panel.config == preset("lorta", alpha=8.0, seed=3, grouping="layer", groups="per-target")
    panel.preset.value = "lotr"
    assert panel.config == preset("lotr", alpha=8.0, seed=3)


def test_config_panel_on_a_meta_vit_b():
    from superlora.base_models import create_meta_model

    panel = ConfigPanel(create_meta_model("vit_base_patch16_224"), "superlora-2d")
    assert _shown(panel) == 7_526  # METHOD.md's worked check
    panel.preset.value = "lora"
    assert _shown(panel) == 36_864


@pytest.fixture(scope="module")
def deltas():
    wrapped = get_superlora_model(tiny_vit(), preset("superlora-2d", rank=2, groups=2, targets=("q", "k", "v")))
    randomize_trainable(wrapped)
    return wrapped.delta_weights()


def test_delta_explorer_shows_the_selected_update(deltas):
    explorer = DeltaExplorer(deltas)
    assert explorer.selected_name == "blocks.0.attn.qkv.q"
    explorer.block.value = "blocks.1"
    explorer.kind.value = "attn.qkv.v"
    name = "blocks.1.attn.qkv.v"
    assert explorer.selected_name == name
    assert np.array_equal(np.asarray(explorer.heatmap.data[0].z), deltas[name].numpy())
    np.testing.assert_allclose(trace_by_key(explorer.spectrum, name).y, torch.linalg.svdvals(deltas[name]).numpy(),
                               rtol=1e-6)
    norms = explorer.norms.data[0]
    assert norms.z[1][2] == pytest.approx(torch.linalg.matrix_norm(deltas[name]).item(), rel=1e-6)
    # A click on the norm map (as the front end reports it) selects that cell.
    explorer._norm_clicked(norms, SimpleNamespace(xs=["attn.qkv.k"], ys=["blocks.0"]), None)
    assert explorer.selected_name == "blocks.0.attn.qkv.k"
    assert np.array_equal(np.asarray(explorer.heatmap.data[0].z), deltas["blocks.0.attn.qkv.k"].numpy())


def test_delta_explorer_on_targets_outside_blocks():
    wrapped = get_superlora_model(TwoLayerMLP(), preset("lora", rank=2, targets=("fc1", "fc2")))
    randomize_trainable(wrapped)
    explorer = DeltaExplorer(wrapped)
    assert explorer.block.options == (("(no block)", ""),) and explorer.kind.options == ("fc1", "fc2")
    explorer.kind.value = "fc2"
    assert np.array_equal(np.asarray(explorer.heatmap.data[0].z), wrapped.delta_weights()["fc2"].numpy())


def _event(kind, step, metrics=None, **extra):
    return TrainEvent(kind=kind, step=step, total_steps=4, epoch=1, metrics=metrics or {}, **extra)


def fake_train(reached: threading.Event | None = None, gate: threading.Event | None = None):
    """A stand-in for superlora.train.train that emits a scripted stream and honours the stop signal; with
    `reached` and `gate` it signals after step 2 and waits for the gate before step 3."""

    def run(model, train_set, val_set, config, options=None, *, callbacks=(), stop=None):
        def emit(event):
            for callback in callbacks:
                callback(event)

        emit(_event("start", 0, message="training"))
        for step in range(1, 5):
            if gate is not None and step == 3:
                reached.set()
                gate.wait(5)
            if stop is not None and stop.requested:
                emit(_event("stopped", step - 1))
                return SimpleNamespace(stopped=True, steps=step - 1, config=config)
            emit(_event("step", step, {"loss": 1.0 / step, "lr": 1e-3}, eta_s=4.0 - step))
            if step == 2:
                emit(_event("eval", step, {"accuracy": 0.5, "loss": 0.8},
                            details={"confusion": [[1, 1], [0, 2]], "classes": ["a", "b"]}))
        emit(_event("eval", 4, {"accuracy": 0.75, "loss": 0.6},
                    details={"confusion": [[2, 0], [1, 1]], "classes": ["a", "b"]}))
        emit(_event("done", 4, {"best_accuracy": 0.75}))
        return SimpleNamespace(stopped=False, steps=4, config=config)

    return run


def test_training_panel_follows_the_events():
    panel = TrainingPanel("model", "train", "val", "lora", train_fn=fake_train(), redraw_every_s=0.0)
    panel.start()
    result = panel.wait(10)
    assert not result.stopped and result.config == preset("lora")
    assert panel.progress.max == 4 and panel.progress.value == 4 and panel.progress.bar_style == "success"
    assert "done" in panel.status.value and "best_accuracy 0.75" in panel.status.value
    curves = {trace.meta["metric"]: (list(trace.x), list(trace.y)) for trace in panel.curves.data}
    assert curves["loss"] == ([1, 2, 3, 4], [1.0, 0.5, 1 / 3, 0.25])
    assert curves["val_accuracy"] == ([2, 4], [0.5, 0.75])
    assert np.array_equal(np.asarray(panel.confusion.data[0].z), [[2, 0], [1, 1]])
    assert not panel.start_button.disabled and panel.stop_button.disabled


def test_training_panel_stop_button_stops_the_run():
    reached, gate = threading.Event(), threading.Event()
    panel = TrainingPanel("model", "train", "val", "lora", train_fn=fake_train(reached, gate))
    panel.start()
    assert reached.wait(5)
    assert panel.running and panel.start_button.disabled and not panel.stop_button.disabled
    panel.stop_button.click()
    assert panel.stop_signal.requested
    gate.set()
    result = panel.wait(10)
    assert result.stopped and result.steps == 2
    assert panel.progress.bar_style == "warning" and panel.status.value.startswith("stopped")


def test_training_panel_reports_errors():
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    panel = TrainingPanel("model", "train", "val", "lora", train_fn=broken)
    panel.start()
    with pytest.raises(RuntimeError, match="out of memory"):
        panel.wait(10)
    assert "out of memory" in panel.status.value and panel.progress.bar_style == "danger"


def test_training_panel_with_the_real_train():
    from superlora.train import TrainOptions
    from tests.train_helpers import colour_split, tiny_vit as trainable_vit

    train_set, val_set = colour_split(per_class=8)
    panel = TrainingPanel(trainable_vit(), train_set, val_set, preset("lora", rank=2),
                          TrainOptions(steps=6, batch_size=8, device="cpu"), redraw_every_s=0.0)
    panel.start()
    result = panel.wait(120)
    kinds = [event.kind for event in panel.events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("step") == 6
    assert panel.progress.value == panel.progress.max == 6
    losses = [event.metrics["loss"] for event in panel.events if event.kind == "step"]
    curve = next(trace for trace in panel.curves.data if trace.meta["metric"] == "loss")
    assert list(curve.y) == pytest.approx(losses)
    assert np.array_equal(np.asarray(panel.confusion.data[0].z), np.asarray(result.confusion))


def test_training_panel_picks_the_lr_with_short_runs_first(monkeypatch):
    from superlora.train import TrainOptions, auto_lr

    calls = []
    fake = fake_train()

    def train(model, train_set, val_set, config, options=None, *, callbacks=(), stop=None, run_info=None):
        calls.append((options.lr, options.steps, run_info))
        return SimpleNamespace(**vars(fake(model, train_set, val_set, config, options, callbacks=callbacks, stop=stop)),
                               best_accuracy={0.015: 0.5, 0.03: 0.7, 0.06: 0.6}.get(options.lr, 0.8),
                               metrics={"loss": {0.015: 0.9, 0.03: 0.5, 0.06: 0.7}.get(options.lr, 0.4)})

    monkeypatch.setattr(auto_lr, "train", train)
    panel = TrainingPanel("model", "train", "val", "lora", TrainOptions(steps=8), redraw_every_s=0.0)
    assert panel.pick_lr.value is False and panel.pick_lr in panel.widget.children
    panel.pick_lr.value = True
    panel.start()
    result = panel.wait(10)
    assert [c[:2] for c in calls] == [(0.015, 2), (0.03, 2), (0.06, 2), (0.03, 8)]  # 3 probes, then the run
    assert calls[-1][2]["lr_pick"]["lr"] == 0.03 and len(calls[-1][2]["lr_pick"]["probes"]) == 3
    assert result.steps == 4 and panel.lr_pick.lr == 0.03 and panel.lr.value == 0.03
    assert "picked lr 0.03" in panel.status.value and panel.progress.bar_style == "success"
    # the events and curves are the run's own: the probes' 3 x 4 steps are not drawn
    assert [e.kind for e in panel.events].count("step") == 4
    curves = {trace.meta["metric"]: list(trace.x) for trace in panel.curves.data}
    assert curves["loss"] == [1, 2, 3, 4]


def test_training_panel_stopped_while_picking_trains_nothing(monkeypatch):
    from superlora.train import auto_lr

    reached, gate = threading.Event(), threading.Event()
    calls = []
    fake = fake_train(reached, gate)

    def train(model, train_set, val_set, config, options=None, *, callbacks=(), stop=None, run_info=None):
        calls.append(options.lr)
        return fake(model, train_set, val_set, config, options, callbacks=callbacks, stop=stop)

    monkeypatch.setattr(auto_lr, "train", train)
    panel = TrainingPanel("model", "train", "val", "lora")
    panel.pick_lr.value = True
    panel.start()
    assert reached.wait(5)
    assert "picking the learning rate: short run 1 of 3 at lr 0.015" in panel.status.value
    panel.stop_button.click()
    gate.set()
    assert panel.wait(10) is None and calls == [0.015]
    assert panel.status.value.startswith("stopped while picking the learning rate")
    assert panel.progress.bar_style == "warning" and not panel.start_button.disabled
