"""Jupyter widgets for exploring SuperLoRA: a config panel, a ΔW explorer and a training panel.

The widgets are thin: every number and picture comes from the library (`superlora.controls`, `count_parameters`,
`superlora.viz`, `superlora.train.train`), exactly as the CLI and the studio get them; the config panel's controls
are built from the controls' one description (`superlora.controls.ADAPTER_CONTROLS`). Each panel exposes its
controls as attributes, so a notebook (or a test) can set values programmatically, and `.widget` to display.

    panel = ConfigPanel(model, "lora")
    panel.widget                     # show it in a notebook cell
    panel.rank.value = 4             # the count label and the budget figure follow
    panel.config, panel.count        # the current SuperLoRAConfig and its ParameterCount
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets as w
import plotly.graph_objects as go
from torch import Tensor, nn

from superlora.config import HEAD_ONLY, METHODS, PRESET_DESCRIPTIONS, SuperLoRAConfig, as_config
from superlora.controls import CONTROLS, FACTORING_CHOICES, Control, config_from_values, format_count, \
    preset_values, target_choices, values_from_config
from superlora.counting import ParameterCount, count_parameters
from superlora.errors import ConfigError, SuperLoRAError
from superlora.viz import budget_figure, confusion_figure, curves_figure, delta_heatmap, delta_norms_figure, \
    metric_records, spectra_figure, split_block
from superlora.viz.deltas import NO_BLOCK

__all__ = ["ConfigPanel", "DeltaExplorer", "TrainingPanel", "control_widget", "show_figure", "target_choices"]

# The adapter controls the config panel shows; the others (fold, factoring, projection) are the preset's, and a
# ratio below 1 is projected with Fastfood.
PANEL_CONTROLS = ("preset_name", "rank", "groups", "grouping", "order", "splits", "ratio", "shuffle")
LOG_SLIDER_STEP = 0.25  # a log-scale slider moves in quarter decades
DESCRIPTION_STYLE = dict(description_width="130px")
SLIDER_LAYOUT = dict(width="440px")


def show_figure(widget: go.FigureWidget, figure: go.Figure) -> None:
    """Replace everything a FigureWidget shows by `figure` (one front-end update)."""
    with widget.batch_update():
        widget.data = ()
        widget.add_traces(list(figure.data))
        widget.layout = figure.layout


def control_widget(control: Control, value: Any = None, maximum: float | None = None,
                   options: Sequence[Any] | None = None) -> w.ValueWidget:
    """The ipywidget of a control: a slider (log scale where the control says so), a number box, toggle buttons
    (up to three choices) or a dropdown, or a checkbox; `maximum` and `options` narrow the control's own."""
    value = control.default if value is None else value
    common: dict[str, Any] = dict(value=value, description=control.short, tooltip=control.help,
                                  style=DESCRIPTION_STYLE)
    top = control.maximum if maximum is None else maximum
    if control.kind == "int":
        return w.IntSlider(min=int(control.minimum), max=int(top), step=int(control.step or 1),
                           layout=w.Layout(**SLIDER_LAYOUT), **common)
    if control.kind == "float" and top is None:
        return w.FloatText(layout=w.Layout(width="260px"), **common)
    if control.kind == "float" and control.log_scale:
        return w.FloatLogSlider(base=10, min=math.log10(control.minimum), max=math.log10(top), step=LOG_SLIDER_STEP,
                                readout_format=".3g", layout=w.Layout(**SLIDER_LAYOUT), **common)
    if control.kind == "float":
        return w.FloatSlider(min=control.minimum, max=top, step=control.step, layout=w.Layout(**SLIDER_LAYOUT),
                             **common)
    if control.kind == "choice":
        choices = list(options if options is not None else control.choices)
        if len(choices) <= 3:
            return w.ToggleButtons(options=choices, **{**common, "style": {**DESCRIPTION_STYLE,
                                                                            "button_width": "100px"}})
        return w.Dropdown(options=choices, layout=w.Layout(**SLIDER_LAYOUT), **common)
    if control.kind == "bool":
        return w.Checkbox(indent=False, **{**common, "description": control.label})
    raise ConfigError(f"control {control.name!r} of kind {control.kind!r} has no widget; build it by hand")


def _preset_label(key: str) -> str:
    return PRESET_DESCRIPTIONS.get(key, key).split(":")[0]


class ConfigPanel:
    """Preset, rank, groups, grouping, order, splits, ratio, shuffle and targets, with a live parameter count and
    the budget figure. `on_change(fn)` calls fn(config, count) after every valid change.

    config: a preset name or a config made by `preset(...)`; the controls start at its values, and the fields
    without a control (fold, factoring, alpha, rank scaling, seed) are the preset's (alpha, rank scaling and seed
    as the config has them).
    Groups 0 means one group per target weight, as in the studio. "head-only" (no adapter) greys out every knob.
    """

    def __init__(self, model: nn.Module, config: SuperLoRAConfig | str = "lora",
                 trainable: Sequence[str] = ("head",), max_rank: int = 16, max_groups: int = 32) -> None:
        self.model = model
        self.trainable = tuple(trainable)
        self.max_rank = max_rank
        start = as_config(config)
        if start.name not in METHODS:
            raise ConfigError(f"ConfigPanel starts from a preset, but this config is {start.name!r}; pass a preset "
                              f"name or preset(name, ...) with one of {', '.join(METHODS)}")
        values = values_from_config(start)
        self._fixed = {"alpha": values["alpha"], "rank_scaling": values["rank_scaling"], "seed": values["seed"]}
        self._callbacks: list[Callable[[SuperLoRAConfig, ParameterCount], None]] = []
        self._quiet = False
        self.config: SuperLoRAConfig | None = None
        self.count: ParameterCount | None = None
        self.error: str | None = None

        maxima = {"rank": max(max_rank, start.reference_rank), "groups": max(max_groups, values["groups"])}
        self.controls = {name: control_widget(CONTROLS[name], values[name], maxima.get(name))
                         for name in PANEL_CONTROLS if name != "preset_name"}
        self.preset = control_widget(CONTROLS["preset_name"], start.name,
                                     options=[(_preset_label(k), k) for k in METHODS])
        # Each control is also an attribute (panel.rank, panel.groups, ...), as notebooks use them.
        self.rank, self.groups, self.grouping, self.order, self.splits, self.ratio, self.shuffle = (
            self.controls[name] for name in PANEL_CONTROLS[1:])
        self.target_boxes = {name: w.Checkbox(value=name in start.targets, description=name, indent=False,
                                              tooltip=CONTROLS["targets"].help, layout=w.Layout(width="70px"))
                             for name in target_choices(model, self.trainable)}
        self.count_label = w.HTML()
        self.message = w.HTML()
        self.figure = go.FigureWidget()

        self._apply_preset_rules(start.name)
        for control in self._controls():
            control.observe(self._changed, names="value")
        self.preset.observe(self._preset_changed, names="value")
        targets_row = w.HBox([w.Label(CONTROLS["targets"].short, layout=w.Layout(width="130px")),
                              *self.target_boxes.values()])
        self.widget = w.VBox([
            w.HBox([w.VBox([self.preset, *self.controls.values(), targets_row]),
                    w.VBox([self.count_label, self.message], layout=w.Layout(padding="0 0 0 20px"))]),
            self.figure,
        ])
        self.update()

    # ------------------------------------------------------------------ wiring
    def _controls(self) -> list[w.ValueWidget]:
        return [*self.controls.values(), *self.target_boxes.values()]

    def _apply_preset_rules(self, key: str) -> None:
        """Grey out the knobs a preset's fold or factoring fixes (they would only produce a ConfigError); head-only
        has no adapter, so it greys out every knob and target."""
        for control in self._controls():
            control.disabled = key == HEAD_ONLY
        if key == HEAD_ONLY:
            return
        values = preset_values(key)
        whole_weights = values["fold"] in ("native", "stack")
        factoring = FACTORING_CHOICES[values["factoring"]]
        self.order.disabled = whole_weights or "lora" in (factoring if isinstance(factoring, tuple) else (factoring,))
        self.ratio.disabled = whole_weights
        self.grouping.disabled = whole_weights
        self.splits.disabled = isinstance(factoring, tuple)

    def _preset_changed(self, change: dict) -> None:
        key = change["new"]
        values = preset_values(key)
        self._quiet = True
        try:
            for name, control in self.controls.items():
                if name in values:
                    control.value = values[name]
        finally:
            self._quiet = False
        self._apply_preset_rules(key)
        self.update()

    def _changed(self, _change: dict) -> None:
        if not self._quiet:
            self.update()

    def on_change(self, callback: Callable[[SuperLoRAConfig, ParameterCount], None]) -> None:
        self._callbacks.append(callback)

    # ------------------------------------------------------------------ state
    def selected_targets(self) -> tuple[str, ...]:
        return tuple(name for name, box in self.target_boxes.items() if box.value)

    def values(self) -> dict[str, Any]:
        """The control values as `superlora.controls.config_from_values` takes them."""
        values = {name: control.value for name, control in self.controls.items()}
        ratio = 1.0 if self.ratio.disabled else float(self.ratio.value)
        return {**values, **self._fixed, "preset_name": self.preset.value, "targets": self.selected_targets(),
                "ratio": ratio, "projection": "fastfood" if ratio < 1.0 else "none"}

    def build_config(self) -> SuperLoRAConfig:
        """The config the controls describe (raises ConfigError for an impossible combination)."""
        return config_from_values(self.values())

    def update(self) -> None:
        """Recount and redraw for the current control values; an invalid combination shows its message."""
        try:
            config = self.build_config()
            count = count_parameters(self.model, config, trainable=self.trainable)
        except SuperLoRAError as err:
            self.error = str(err)
            self.message.value = f"<span style='color:#b00'>{self.error}</span>"
            self.count_label.value = "<b>adapter parameters: —</b>"
            return
        self.config, self.count, self.error = config, count, None
        self.message.value = ""
        self.count_label.value = self.count_html(count)
        show_figure(self.figure, go.Figure() if config.head_only else  # no adapter, no budget to draw
                    budget_figure([t.shape for t in count.targets], config,
                                  max_rank=max(self.max_rank, config.reference_rank)))
        for callback in self._callbacks:
            callback(config, count)

    @staticmethod
    def count_html(count: ParameterCount) -> str:
        """The count label: `superlora.controls.format_count` in its HTML style."""
        return format_count(count, "html")


class DeltaExplorer:
    """Pick a block and a target to see its s·ΔW as a heatmap and its singular values, beside the
    blocks × targets map of ‖ΔW‖_F (clicking a cell of that map selects it in a notebook)."""

    def __init__(self, deltas: Mapping[str, Tensor] | Any, max_side: int = 256) -> None:
        if hasattr(deltas, "delta_weights"):
            deltas = deltas.delta_weights()
        if not deltas:
            raise ValueError("no updates to explore: the adapter has no targets")
        self.deltas = dict(deltas)
        self.max_side = max_side
        self._names = {split_block(name): name for name in self.deltas}
        blocks = list(dict.fromkeys(block for block, _ in self._names))
        kinds = list(dict.fromkeys(kind for _, kind in self._names))
        self.block = w.Dropdown(options=[(b or NO_BLOCK, b) for b in blocks], value=blocks[0], description="block")
        self.kind = w.Dropdown(options=kinds, value=kinds[0], description="target")
        self.message = w.HTML()
        self.heatmap = go.FigureWidget()
        self.spectrum = go.FigureWidget()
        self.norms = go.FigureWidget(delta_norms_figure(self.deltas))
        if self.norms.data:
            self.norms.data[0].on_click(self._norm_clicked)
        self.block.observe(lambda _: self.update(), names="value")
        self.kind.observe(lambda _: self.update(), names="value")
        self.widget = w.VBox([w.HBox([self.block, self.kind]), self.message,
                              w.HBox([self.heatmap, self.spectrum]), self.norms])
        self.update()

    @property
    def selected_name(self) -> str | None:
        return self._names.get((self.block.value, self.kind.value))

    def select(self, name: str) -> None:
        block, kind = split_block(name)
        self.block.value, self.kind.value = block, kind

    def _norm_clicked(self, _trace: Any, points: Any, _state: Any) -> None:
        if points.xs and points.ys:
            block, kind = points.ys[0], points.xs[0]
            self.block.value, self.kind.value = ("" if block == NO_BLOCK else block), kind

    def update(self) -> None:
        name = self.selected_name
        if name is None:
            self.message.value = f"{self.block.value} has no target {self.kind.value}"
            return
        self.message.value = ""
        delta = self.deltas[name]
        heat = delta_heatmap(delta, name, max_side=self.max_side)
        heat.update_layout(width=520, height=480)
        spectrum = spectra_figure({name: delta}, title=f"{name}: spectrum")
        spectrum.update_layout(width=560, height=480, showlegend=False)
        show_figure(self.heatmap, heat)
        show_figure(self.spectrum, spectrum)


class TrainingPanel:
    """Runs `superlora.train.train` in a background thread with a progress bar, a Stop button and live curves.

    `lr` and `head_lr` are the learning-rate boxes (built from `superlora.controls`); a run takes `options` (default
    `TrainOptions()`) with those two rates. With the `pick_lr` box ticked, a run is `train_at_picked_lr` instead:
    short probe runs choose the adapter lr (the bar and status follow them; the curves show the real run only),
    the lr box then shows the lr picked and `lr_pick` holds the probes.

    The Stop button calls `StopSignal.request()`; training ends at the next step and reports "stopped".
    `start()` returns at once; `wait()` blocks until the run ends and returns its TrainResult (re-raising any
    error). `train_fn` (default `superlora.train.train`) is called with the same arguments as `train`; tests pass
    a fake that emits a scripted event stream.
    """

    def __init__(self, model: nn.Module, train_set: Any, val_set: Any, config: SuperLoRAConfig | str,
                 options: Any = None, *, train_fn: Callable[..., Any] | None = None,
                 redraw_every_s: float = 0.5) -> None:
        self.model, self.train_set, self.val_set = model, train_set, val_set
        self.config = as_config(config)
        self.options = options
        self._train_fn = train_fn
        self.redraw_every_s = redraw_every_s
        self.events: list[Any] = []
        self.result: Any = None
        self.exception: BaseException | None = None
        self.stop_signal: Any = None
        self._thread: threading.Thread | None = None
        self._last_draw = 0.0
        self._lock = threading.Lock()

        self.progress = w.IntProgress(value=0, min=0, max=1, description="step", bar_style="info",
                                      layout=w.Layout(width="420px"))
        self.status = w.HTML("ready")
        # The learning rates, from the controls' one description; they start at `options`' values.
        self.lr, self.head_lr = (control_widget(CONTROLS[name], getattr(options, name, CONTROLS[name].default))
                                 for name in ("lr", "head_lr"))
        self.pick_lr = control_widget(CONTROLS["pick_lr"])
        self.lr_pick: Any = None
        self.start_button = w.Button(description="Train", button_style="primary", icon="play")
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.start_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        self.curves = go.FigureWidget(curves_figure([]))
        self.confusion = go.FigureWidget()
        self.widget = w.VBox([w.HBox([self.lr, self.head_lr]), self.pick_lr,
                              w.HBox([self.start_button, self.stop_button, self.progress]), self.status,
                              self.curves, self.confusion])

    # ------------------------------------------------------------------ control
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start training in a background thread (a second call while running does nothing)."""
        if self.running:
            return
        from superlora.train import StopSignal, TrainOptions, train

        train_fn = self._train_fn or train
        rates = dict(lr=float(self.lr.value), head_lr=float(self.head_lr.value))
        options = self.options.replace(**rates) if self.options is not None else TrainOptions(**rates)
        self.events, self.result, self.exception, self.lr_pick = [], None, None, None
        self.stop_signal = StopSignal()
        self.start_button.disabled, self.stop_button.disabled = True, False
        self.progress.value, self.progress.bar_style = 0, "info"
        self.status.value = "starting…"
        kwargs: dict[str, Any] = dict(options=options, callbacks=(self.handle,), stop=self.stop_signal)
        picking = bool(self.pick_lr.value)

        def run() -> None:
            try:
                if picking:
                    self._train_at_picked_lr(kwargs)
                else:
                    self.result = train_fn(self.model, self.train_set, self.val_set, self.config, **kwargs)
            except BaseException as err:  # noqa: BLE001 - reported in the panel and re-raised by wait()
                self.exception = err
                self.status.value = f"<span style='color:#b00'>error: {err}</span>"
                self.progress.bar_style = "danger"
            finally:
                self.start_button.disabled, self.stop_button.disabled = False, True
                self._redraw()

        self._thread = threading.Thread(target=run, name="superlora-training", daemon=True)
        self._thread.start()

    def _train_at_picked_lr(self, kwargs: dict[str, Any]) -> None:
        from superlora.train import train_at_picked_lr

        self.result, self.lr_pick = train_at_picked_lr(self.model, self.train_set, self.val_set, self.config,
                                                       **kwargs)
        if self.result is None:
            self.status.value = "stopped while picking the learning rate: " + self.lr_pick.describe()
            self.progress.bar_style = "warning"
        else:
            self.lr.value = self.lr_pick.lr
            self.status.value += " · picked " + self.lr_pick.describe()

    def stop(self) -> None:
        """Ask the running training to stop after its current step."""
        if self.stop_signal is not None:
            self.stop_signal.request()
            self.status.value = "stopping…"

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the run ends; return its TrainResult, or raise the error it raised."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self.exception is not None:
            raise self.exception
        return self.result

    # ------------------------------------------------------------------ events
    def handle(self, event: Any) -> None:
        """The training callback: progress, status line, the latest validation confusion matrix and (at most
        every redraw_every_s, and at every non-step event) the curves. A probe's events (`pick_lr`) move the bar and
        the status only."""
        from superlora.train.auto_lr import probe_of

        probe = probe_of(event)
        if probe is not None:
            self.progress.max = max(1, int(event.total_steps or 1))
            self.progress.value = min(int(event.step or 0), self.progress.max)
            self.status.value = (f"picking the learning rate: short run {probe['index']} of {probe['of']} at lr "
                                 f"{probe['lr']:g} · " + self.status_text(event))
            return
        with self._lock:
            self.events.append(event)
        if getattr(event, "total_steps", None):
            self.progress.max = max(1, int(event.total_steps))
        if getattr(event, "step", None) is not None:
            self.progress.value = min(int(event.step), self.progress.max)
        self.status.value = self.status_text(event)
        if event.kind in ("done", "stopped", "error"):
            self.progress.bar_style = {"done": "success", "stopped": "warning", "error": "danger"}[event.kind]
        details = getattr(event, "details", None) or {}
        if event.kind == "eval" and details.get("confusion"):
            figure = confusion_figure(details["confusion"], details["classes"], title=f"Validation at step "
                                      f"{event.step}: accuracy {100 * event.metrics.get('accuracy', 0):.1f}%")
            figure.update_layout(width=480, height=420)
            show_figure(self.confusion, figure)
        if event.kind != "step" or time.monotonic() - self._last_draw >= self.redraw_every_s:
            self._redraw()

    @staticmethod
    def status_text(event: Any) -> str:
        parts = [event.kind]
        if getattr(event, "total_steps", None):
            parts.append(f"step {event.step}/{event.total_steps}")
        for key, value in (getattr(event, "metrics", None) or {}).items():
            if isinstance(value, float):
                parts.append(f"{key} {value:.4g}")
        if getattr(event, "eta_s", None):
            parts.append(f"ETA {event.eta_s:.0f} s")
        if getattr(event, "message", None):
            parts.append(str(event.message))
        return " · ".join(parts)

    def _redraw(self) -> None:
        with self._lock:
            events = list(self.events)
        self._last_draw = time.monotonic()
        show_figure(self.curves, curves_figure(metric_records(events)))
