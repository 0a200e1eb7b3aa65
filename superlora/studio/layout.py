"""The studio's page: one function builds each tab's components, one wires each tab's events to its handlers.

Every control that a handler reads is kept in one dict by its API parameter name (`Page.controls`), and each
endpoint's inputs are looked up there from one ordered tuple of names (`CONTROL_NAMES`, `TRAIN_INPUT_NAMES`,
`CONFIG_KEYS`), so an input's position and its name cannot drift apart.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import gradio as gr

from superlora.base_models import DEFAULT_MODEL, load_model
from superlora.config import METHODS, PRESET_DESCRIPTIONS
from superlora.controls import ADAPTER_NAMES, CONTROLS, PRESET_CONTROL_NAMES, Control, preset_note
from superlora.data import LABEL_MODES, SAMPLES
from superlora.errors import ConfigError
from superlora.report import CLASS_TABLE_HEADERS
from superlora.studio.data_tab import THUMBNAILS_PER_CLASS, load_data, use_sample
from superlora.studio.endpoints import session_endpoint, user_errors, with_parameters
from superlora.studio.export_tab import EXPORT_CHOICES, export_help, export_model, export_report
from superlora.studio.inspect_tab import inspect_deltas
from superlora.studio.model_tab import CONTROL_NAMES, architecture_choices, count_endpoint, describe_model, \
    USER_CONTROL_NAMES, model_choices, preset_controls, preset_settings, show_count, show_figures, upload_checkpoint, \
    warm_up
from superlora.studio.model_tab import SUGGESTION_HEADERS, adapter_interactivity, apply_suggestion, show_suggestions
from superlora.studio.sessions import SessionStore, StudioLimits
from superlora.studio.settings_file import CONFIG_KEYS, check_app_config, save_app_config
from superlora.studio.train_tab import TRAIN_INPUT_NAMES, check_training, good_class_choices, \
    good_class_items, lr_interactivity, mark_done, queue_training, recount_validation, show_validation, stop_training, \
    train_model
from superlora.studio.try_tab import pick_validation_image, predict_image

INTRO = """# SuperLoRA studio
Fine-tune a vision transformer on your own images by training a few hundred to a few thousand parameters.
**1** pick a model and an adapter · **2** load images · **3** train · **4** see what changed ·
**5** try it on an image · **6** download the result."""

CSS = """
#config-error p { color: #b42318; font-weight: 600; background: #fef3f2; border-left: 4px solid #d92d20;
                  padding: 8px 12px; border-radius: 4px; margin: 0; }
#count-panel table { width: 100%; }
.train-bar { height: 10px; background: #eceef2; border-radius: 5px; overflow: hidden; margin: 2px 0 6px; }
.train-bar > div { height: 100%; background: #f97316; transition: width 0.4s; }
"""

# The page's elem_ids (what the browser test and custom CSS find) and the controls shown as radio buttons.
ELEM_IDS = {"preset_name": "preset", "targets": "targets", "rank": "rank", "groups": "groups",
            "grouping": "grouping", "steps": "steps", "batch_size": "batch-size", "pick_lr": "pick-lr"}
RADIO_CONTROLS = ("grouping",)
# The adapter controls as the page lays them out, row by row (a row of one stands alone).
ADAPTER_ROWS = (("targets",), ("rank",), ("groups", "grouping"), ("fold", "order", "splits"),
                ("factoring", "projection", "ratio"), ("shuffle", "alpha", "rank_scaling"))


class Page(SimpleNamespace):
    """The components of the page: `controls` (every control a handler reads, by its API parameter name) and the
    other components by name."""

    controls: dict[str, Any]

    def inputs(self, names: tuple[str, ...]) -> list[Any]:
        """The controls of these API parameter names, in that order."""
        return [self.controls[name] for name in names]


# ---------------------------------------------------------------------------------------------- components
def _model_picker(page: Page, models: list[tuple[str, str]], default_model: str,
                  extra_models: tuple[str, ...]) -> None:
    page.controls["model_name"] = gr.Dropdown(models, value=default_model, label="Base model", elem_id="model")
    page.model_note = gr.Markdown(elem_id="model-note", label="About the model")
    with gr.Accordion("…or upload your own model file", open=False):
        page.checkpoint_arch = gr.Dropdown(architecture_choices(extra_models), value=DEFAULT_MODEL,
                                           label="Architecture of the file")
        page.checkpoint = gr.File(label="Model weights (.safetensors, or a .pth/.bin state dict)",
                                  file_types=[".safetensors", ".pth", ".bin", ".pt"], type="filepath")


def _component(control: Control, **options: Any) -> Any:
    """The Gradio component of one control of `superlora.controls`: a slider for a bounded number, a number box
    for an unbounded one, a dropdown (or radio buttons) for a choice, checkboxes for a subset, a checkbox."""
    options = {"label": control.label, "elem_id": ELEM_IDS.get(control.name), **options}
    if control.kind in ("int", "float") and control.maximum is not None:
        return gr.Slider(control.minimum, control.maximum, value=control.default, step=control.step, **options)
    if control.kind in ("int", "float"):
        return gr.Number(control.default, minimum=control.minimum, **options)
    if control.kind == "choice":
        widget = gr.Radio if control.name in RADIO_CONTROLS else gr.Dropdown
        return widget(options.pop("choices", list(control.choices)), value=control.default, **options)
    if control.kind == "multi":
        return gr.CheckboxGroup(list(control.choices), value=list(control.default), **options)
    return gr.Checkbox(control.default, **options)


def _adapter_controls(page: Page) -> None:
    """Method, targets and the adapter's settings (`superlora.controls.ADAPTER_CONTROLS`), as ADAPTER_ROWS."""
    controls = page.controls
    methods = [(f"{name} — {PRESET_DESCRIPTIONS[name].split(':')[0]}", name) for name in METHODS]
    controls["preset_name"] = _component(CONTROLS["preset_name"], choices=methods)
    page.preset_note = gr.Markdown(preset_note(CONTROLS["preset_name"].default))
    for row in ADAPTER_ROWS:
        with gr.Row() if len(row) > 1 else contextlib.nullcontext():
            for name in row:
                controls[name] = _component(CONTROLS[name])


def _model_tab(page: Page, models: list[tuple[str, str]], default_model: str, extra_models: tuple[str, ...]) -> None:
    with gr.Tab("1 · Model & adapter", id="model"):
        with gr.Row():
            with gr.Column(scale=2):
                _model_picker(page, models, default_model, extra_models)
                _adapter_controls(page)
            with gr.Column(scale=3):
                page.config_error = gr.Markdown(elem_id="config-error")
                page.count_md = gr.Markdown(elem_id="count-panel")
                page.count_json = gr.JSON(visible=False, label="result")
                page.budget_plot = gr.Plot(label="Budget: adapter parameters against rank", elem_id="budget-plot")
        _budget_box(page)
        page.layout_plot = gr.Plot(label="Layout: which group produces each update entry", elem_id="layout-plot")
        with gr.Accordion("Save or load all settings (JSON)", open=False):
            with gr.Row():
                page.save_config = gr.Button("Save settings")
                page.load_config = gr.UploadButton("Load settings…", file_types=[".json"], type="filepath")
                page.config_file = gr.File(label="Settings file", type="filepath", interactive=False)


def _budget_box(page: Page) -> None:
    """Choose by budget: the study's configurations that fit, best measured first; picking one sets the controls."""
    with gr.Accordion("Choose by budget: the study's best adapters within a parameter count", open=True):
        with gr.Row():
            page.budget = gr.Number(1000, minimum=0, precision=0, label="Budget (adapter parameters on this model)",
                                    elem_id="budget")
            page.suggest_button = gr.Button("Suggest", elem_id="suggest")
            page.suggestion_pick = gr.Dropdown([], value=None, label="Use this suggestion", elem_id="suggestion-pick",
                                               allow_custom_value=True)  # choices vary per session; the handler checks
        page.suggestion_note = gr.Markdown(elem_id="suggestion-note")
        page.suggestion_table = gr.Dataframe(headers=SUGGESTION_HEADERS, interactive=False, elem_id="suggestions",
                                             label="Suggestions: exact count here, accuracy the study measured")


def _data_tab(page: Page) -> None:
    controls = page.controls
    with gr.Tab("2 · Data", id="data"):
        with gr.Row():
            with gr.Column(scale=3):
                page.uploads = gr.File(label="A .zip of class folders, or many images named class_xxx.png",
                                       file_count="multiple", type="filepath", elem_id="uploads")
                with gr.Row():
                    page.csv_file = gr.File(label="Optional label CSV (rows: path,label)", file_types=[".csv"],
                                            type="filepath")
                    controls["labels"] = gr.Radio(list(LABEL_MODES), value="auto", label="Labels from",
                                                  info="auto: folders in a zip, else file-name prefixes, or the CSV")
                page.load_button = gr.Button("Load my images", variant="primary")
            with gr.Column(scale=2):
                controls["sample"] = gr.Dropdown([(f"{k}: {v}", k) for k, v in SAMPLES.items()], value="inspection",
                                                 label="…or start with sample data")
                page.sample_button = gr.Button("Use sample data", elem_id="use-sample")
        page.data_summary = gr.Markdown(elem_id="data-summary", label="Summary")
        with gr.Row():
            page.class_table = gr.Dataframe(headers=["class", "images", "train", "validation"], label="Classes",
                                            interactive=False, elem_id="class-table")
            page.rejected = gr.Dataframe(headers=["file", "why it was skipped"], label="Skipped files",
                                         interactive=False, elem_id="rejected")
        page.gallery = gr.Gallery(label="Examples: one row per class", columns=THUMBNAILS_PER_CLASS, height="auto",
                                  object_fit="contain", allow_preview=True, elem_id="thumbnails")


def _good_class_control() -> gr.Dropdown:
    # Custom values: the choices follow each session's data, which Gradio's own check of API inputs does not see.
    control = CONTROLS["good_class"]
    return _component(control, choices=good_class_items([]), allow_custom_value=True, info=control.help,
                      elem_id="good-class")


def _validation_widgets() -> list[Any]:
    """The Train tab's results of the last run: missed defects and false alarms, the per-class table, mistakes."""
    quality = gr.Markdown(elem_id="validation-quality", label="Missed defects and false alarms")
    class_metrics = gr.Dataframe(headers=CLASS_TABLE_HEADERS, interactive=False, elem_id="class-metrics",
                                 label="Per class: precision, recall and F1, with the counts behind them")
    mistakes = gr.Gallery(label="Mistakes, most confident first (click one for its true and predicted class, "
                                "confidence and top classes)", columns=8, height="auto", object_fit="contain",
                          allow_preview=True, elem_id="mistakes")
    return [mistakes, class_metrics, quality]


def _train_tab(page: Page) -> None:
    controls = page.controls
    with gr.Tab("3 · Train", id="train"):
        with gr.Row():
            for name in ("steps", "epochs", "lr", "head_lr", "batch_size"):
                controls[name] = _component(CONTROLS[name])
        controls["pick_lr"] = _component(CONTROLS["pick_lr"], info=CONTROLS["pick_lr"].help)
        controls["good_class"] = _good_class_control()
        with gr.Row():
            page.start = gr.Button("Start training", variant="primary", elem_id="start")
            page.stop = gr.Button("Stop", variant="stop", elem_id="stop")
        page.train_status = gr.Markdown("Load data (tab 2), then press Start.", elem_id="train-status",
                                        label="Status")
        page.stop_reply = gr.Markdown(visible=False, label="Reply")
        page.curves = gr.Plot(label="Loss and accuracy", elem_id="curves")
        with gr.Row():
            page.per_class = gr.Dataframe(headers=["class", "validation accuracy"], label="Per class",
                                          interactive=False)
            page.confusion = gr.Plot(label="Confusion matrix", elem_id="confusion")
        page.validation_outputs = _validation_widgets()


def _inspect_tab(page: Page) -> None:
    with gr.Tab("4 · Inspect ΔW", id="inspect"):
        page.inspect_button = gr.Button("Show the update of every layer", elem_id="inspect-button")
        page.inspect_note = gr.Markdown(elem_id="inspect-note", label="Summary")
        page.norms_plot = gr.Plot(label="‖ΔW‖ per block and target", elem_id="norms-plot")
        page.spectra_plot = gr.Plot(label="Singular values per target")
        page.target_pick = gr.Dropdown([], label="Target", allow_custom_value=False)
        page.heatmap_plot = gr.Plot(label="ΔW of one target")


def _try_tab(page: Page) -> None:
    with gr.Tab("5 · Try it", id="try"):
        with gr.Row():
            with gr.Column():
                page.image = gr.Image(type="filepath", label="An image to classify", elem_id="try-image",
                                      sources=["upload", "clipboard"], height=280)
                page.picks = gr.Gallery(label="…or pick a validation image (caption: its true class)", columns=4,
                                        height=300, allow_preview=False, elem_id="picks")
            with gr.Column():
                page.controls["top_k"] = gr.Slider(1, 10, value=3, step=1, label="Top k")
                page.predict_button = gr.Button("Classify", variant="primary", elem_id="classify")
                page.prediction = gr.Label(label="Prediction", elem_id="prediction")
        page.image_file = gr.File(visible=False, type="filepath")  # the API's input: any file, checked by us


def _report_widgets() -> tuple[gr.Button, gr.File]:
    gr.Markdown("**A one-page report to share**: data, model and adapter, settings, curves, per-class results, "
                "missed defects and false alarms, the confusion matrix and the mistakes, in one HTML file that "
                "opens offline.")
    with gr.Row():
        button = gr.Button("Report (HTML)", elem_id="report-button")
        file = gr.File(label="Report", elem_id="report-file")
    return button, file


def _export_tab(page: Page) -> None:
    with gr.Tab("6 · Export", id="export"):
        page.controls["formats"] = gr.CheckboxGroup(
            list(EXPORT_CHOICES), value=["adapter"], label="Formats",
            info="adapter: a few KB, needs superlora and the base model · merged: a plain timm checkpoint · "
                 "onnx: for deployment")
        page.export_button = gr.Button("Export", variant="primary", elem_id="export-button")
        page.downloads = gr.File(label="Downloads", file_count="multiple", elem_id="downloads")
        page.export_note = gr.Markdown(elem_id="export-note")
        page.report_button, page.report_file = _report_widgets()


# ---------------------------------------------------------------------------------------------- events
def _wire_model_tab(app: gr.Blocks, page: Page, sessions: SessionStore, bind: Callable) -> Callable:
    """The live count (on every change, unqueued), the figures once the controls settle, presets, the model note,
    uploaded weights, and the hidden `/preset` and `/count_parameters` endpoints. Returns the count's handler."""
    controls = page.inputs(CONTROL_NAMES)
    counted = with_parameters(show_count, CONTROL_NAMES, sessions)
    drawn = with_parameters(show_figures, CONTROL_NAMES, sessions)
    model, preset_name = page.controls["model_name"], page.controls["preset_name"]
    # One listener for all controls: while a count runs, only the latest change waits (always_last).
    gr.on([c.change for c in controls], counted, controls, [page.count_md, page.config_error], queue=False,
          show_progress="hidden", trigger_mode="always_last", api_name=False).then(
        drawn, controls, [page.budget_plot, page.layout_plot], show_progress="hidden", trigger_mode="always_last",
        api_name=False)
    preset_name.input(preset_controls, [preset_name], [*page.inputs((*PRESET_CONTROL_NAMES, *USER_CONTROL_NAMES)),
                                                       page.preset_note], api_name=False, queue=False)
    gr.Button(visible=False).click(user_errors(preset_settings), [preset_name], [page.count_json], api_name="preset")
    model.change(bind(describe_model), [model], [page.model_note], queue=False, api_name=False)
    app.load(counted, controls, [page.count_md, page.config_error], api_name=False).then(
        drawn, controls, [page.budget_plot, page.layout_plot], api_name=False)
    app.load(bind(describe_model), [model], [page.model_note], api_name=False)  # may wait for list_models once
    gr.Button(visible=False).click(with_parameters(count_endpoint, CONTROL_NAMES, sessions), controls,
                                   [page.count_json], api_name="count_parameters")
    page.checkpoint.upload(bind(upload_checkpoint), [page.checkpoint, page.checkpoint_arch],
                           [model, page.model_note], api_name="upload_checkpoint")
    _wire_budget_box(page, bind)
    return counted


def _wire_budget_box(page: Page, bind: Callable) -> None:
    """Suggest fills the table and the choices (`/suggest`); picking one sets every adapter control
    (`/use_suggestion`), and the controls' change events recount."""
    model = page.controls["model_name"]
    page.suggest_button.click(bind(show_suggestions), [model, page.budget],
                              [page.suggestion_table, page.suggestion_pick, page.suggestion_note], api_name="suggest")
    page.suggestion_pick.input(bind(apply_suggestion), [model, page.budget, page.suggestion_pick],
                               [*page.inputs(ADAPTER_NAMES), page.preset_note], api_name="use_suggestion").then(
        adapter_interactivity, [page.controls["preset_name"]], page.inputs(ADAPTER_NAMES[1:]), api_name=False,
        queue=False)


def _wire_data_tab(page: Page, bind: Callable, counted: Callable) -> None:
    """Loading data also recounts (the head's size follows the classes) and resets the good-class choices."""
    data_outputs = [page.data_summary, page.class_table, page.gallery, page.rejected, page.picks]
    sample_loaded = page.sample_button.click(bind(use_sample), page.inputs(("sample",)), data_outputs,
                                             api_name="use_sample")
    upload_loaded = page.load_button.click(bind(load_data), [page.uploads, page.csv_file, page.controls["labels"]],
                                           data_outputs, api_name="load_data")
    for loaded in (sample_loaded, upload_loaded):
        loaded.then(counted, page.inputs(CONTROL_NAMES), [page.count_md, page.config_error], api_name=False)
        loaded.then(bind(good_class_choices), None, [page.controls["good_class"]], queue=False, api_name=False)


def _wire_train_tab(page: Page, sessions: SessionStore, bind: Callable, max_training_jobs: int) -> None:
    """Start (a refusal or a queued mark, then the run), Stop, and the kept run's results (`_wire_results`)."""
    start, good_class = page.start, page.controls["good_class"]
    training = start.click(bind(queue_training), page.inputs(("steps", "epochs", "batch_size", "pick_lr")), [start],
                           queue=False, api_name=False).then(
        with_parameters(train_model, TRAIN_INPUT_NAMES, sessions), page.inputs(TRAIN_INPUT_NAMES),
        [page.train_status, page.curves, page.per_class, page.confusion], api_name="train",
        concurrency_limit=max_training_jobs, concurrency_id="training", show_progress_on=[page.train_status],
        validator=with_parameters(check_training, TRAIN_INPUT_NAMES, sessions))
    lr, pick, preset_name = page.controls["lr"], page.controls["pick_lr"], page.controls["preset_name"]
    gr.on([preset_name.change, pick.change], lr_interactivity, [preset_name, pick], [lr, pick], queue=False,
          api_name=False)
    # Gradio 6.31's page runs `.then` listeners only after success (not "regardless"), so failure is listed too.
    training.then(bind(mark_done), None, [start], queue=False, api_name=False)
    training.failure(bind(mark_done), None, [start], queue=False, api_name=False)
    _wire_results(bind, start, training, good_class, page.validation_outputs, page.report_button, page.report_file)
    page.stop.click(bind(stop_training), None, [page.stop_reply], api_name="stop", concurrency_limit=None,
                    show_progress="hidden")


def _wire_results(bind: Callable, start: Any, training: Any, good_class: Any, validation_outputs: list[Any],
                  report_button: Any, report_file: Any) -> None:
    """After a run: its validation results (also `/validation`), recounted when the good class changes; the report
    download (`/report`). A new run clears the previous run's results at once."""
    start.click(lambda: ([], [], ""), None, validation_outputs, queue=False, api_name=False, show_progress="hidden")
    training.then(bind(show_validation), [good_class], validation_outputs, api_name="validation")
    good_class.input(bind(recount_validation), [good_class], validation_outputs, api_name=False)
    report_button.click(bind(export_report), [good_class], [report_file], api_name="report")


def _wire_inspect_try_export(page: Page, bind: Callable) -> None:
    inspect_outputs = [page.inspect_note, page.target_pick, page.norms_plot, page.spectra_plot, page.heatmap_plot]
    page.inspect_button.click(bind(inspect_deltas), [page.target_pick], inspect_outputs, api_name="inspect")
    page.target_pick.input(bind(inspect_deltas), [page.target_pick], inspect_outputs, api_name=False)
    top_k, image, prediction = page.controls["top_k"], page.image, page.prediction
    # Unprocessed: the image reaches the studio's decoder as the uploaded file, not decoded by Gradio.
    page.predict_button.click(bind(predict_image), [image, top_k], [prediction], api_name=False, preprocess=False)
    image.upload(bind(predict_image), [image, top_k], [prediction], api_name=False, preprocess=False)
    page.picks.select(bind(pick_validation_image), [top_k], [image, prediction], api_name=False)
    gr.Button(visible=False).click(bind(predict_image), [page.image_file, top_k], [prediction], api_name="predict")
    formats = page.controls["formats"]
    page.export_button.click(bind(export_model), [formats], [page.downloads], api_name="export").success(
        bind(export_help), [formats], [page.export_note], api_name=False)


def _wire_settings_file(page: Page, sessions: SessionStore) -> None:
    saved = dict(zip(CONFIG_KEYS, page.inputs(CONFIG_KEYS)))
    page.save_config.click(with_parameters(save_app_config, CONFIG_KEYS, sessions), list(saved.values()),
                           [page.config_file], api_name="save_config")
    page.load_config.upload(user_errors(functools.partial(check_app_config, components=saved)), [page.load_config],
                            list(saved.values()), api_name="load_config")


# ---------------------------------------------------------------------------------------------- the app
def _default_model(models: list[tuple[str, str]], extra_models: tuple[str, ...]) -> str:
    """The first local folder given at start-up, else the bundled default when its files are there."""
    values = [value for _, value in models]
    return extra_models[0] if extra_models else (DEFAULT_MODEL if DEFAULT_MODEL in values else values[0])


def build_app(max_training_jobs: int = 1, extra_models: tuple[str, ...] = (),
              sessions: SessionStore | None = None, limits: StudioLimits | None = None) -> gr.Blocks:
    """The studio's Blocks. `max_training_jobs` bounds concurrent training runs across all sessions (others
    wait in the queue); `extra_models` are local model folders (written by `superlora.base_models.save_model`)
    offered first; `limits` bound what sessions may hold and start (ignored when `sessions` is given). The returned
    Blocks carries its `SessionStore` as `.sessions`. `launch` also queues it with `api_open=False` and adds the
    `HeartbeatWatch` middleware; whoever serves the Blocks another way must do both, or sessionless `/run/` calls
    are answered and idle tabs lose their session after `session_idle_minutes`."""
    if max_training_jobs < 1:
        raise ConfigError(f"max_training_jobs={max_training_jobs}: allow at least one training job")
    extra_models = tuple(str(p) for p in extra_models)
    for path in extra_models:
        load_model(path)  # fail at start-up, with the loader's message, rather than on first use
    sessions = sessions if sessions is not None else SessionStore(limits, extra_models=extra_models)
    models = model_choices(extra_models)
    default_model = _default_model(models, extra_models)
    # Not a daemon: interrupting start-up waits for it instead of killing torch mid-call (an abort).
    threading.Thread(target=warm_up, args=(default_model,), name="studio-warm-up").start()

    def bind(fn: Callable) -> Callable:
        return session_endpoint(fn, sessions)

    page = Page(controls={})
    with gr.Blocks(title="SuperLoRA studio", delete_cache=(1800, 3600)) as app:
        gr.Markdown(INTRO)
        _model_tab(page, models, default_model, extra_models)
        _data_tab(page)
        _train_tab(page)
        _inspect_tab(page)
        _try_tab(page)
        _export_tab(page)
        counted = _wire_model_tab(app, page, sessions, bind)
        _wire_data_tab(page, bind, counted)
        _wire_train_tab(page, sessions, bind, max_training_jobs)
        _wire_inspect_try_export(page, bind)
        _wire_settings_file(page, sessions)
        app.unload(sessions.end)
    app.sessions = sessions
    sessions.waiting_jobs = functools.partial(_waiting_jobs, app, "training")
    sessions.start_sweeper()
    return app


def _waiting_jobs(app: gr.Blocks, concurrency_id: str) -> int:
    """Jobs waiting in Gradio's queue for a slot of `concurrency_id` (Gradio 6 keeps one list per id)."""
    queues = getattr(getattr(app, "_queue", None), "event_queue_per_concurrency_id", {})
    waiting = queues.get(concurrency_id)
    return len(waiting.queue) if waiting is not None else 0
