"""The Model & adapter tab's handlers: the model list, the live count and figures, choosing by budget, uploads.

Counting needs shapes only, so it runs on the model's skeleton on the `meta` device (cached per model and class
count) and answers in milliseconds even for ViT-L. The figures take longer and wait for the controls to settle.
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import gradio as gr
from torch import nn

from superlora import viz
from superlora.base_models import DEFAULT_MODEL, DEFAULT_MODEL_DIR, HUB_MODELS, MAX_CLASSES, create_meta_model, \
    list_models, load_model
from superlora.config import HEAD_ONLY, SuperLoRAConfig
from superlora.controls import ADAPTER_CONTROLS, ADAPTER_NAMES, PRESET_CONTROL_NAMES, VIT_TARGETS, \
    config_from_values, format_count, preset_note, preset_values, values_from_config
from superlora.counting import ParameterCount, count_parameters
from superlora.errors import SuperLoRAError
from superlora.studio.endpoints import friendly_message
from superlora.studio.sessions import Session, SessionStore, StudioError
from superlora.study import STUDY_TASKS
from superlora.suggestions import Suggestion, suggest

log = logging.getLogger(__name__)

UPLOADED = "uploaded checkpoint"
DEFAULT_NUM_CLASSES = 4  # the classifier head counted before any data is loaded
LAYOUT_BINS = 96  # cells per target strip in the layout figure: enough to see groups, small to send
FIGURE_DELAY_S = 0.3  # figures wait this long for the controls to settle (the count never waits)


# ---------------------------------------------------------------------------------------------- models
def model_choices(extra_models: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(label, value) pairs: local model folders given at start-up, the bundled default (when its files are
    there), the curated timm names, then the upload option. Reads no weights and builds no model."""
    choices = [(f"{Path(path).name} (local folder)", str(path)) for path in extra_models]
    if (DEFAULT_MODEL_DIR / "config.json").is_file():
        choices.append((f"{DEFAULT_MODEL} (bundled)", DEFAULT_MODEL))
    choices += [(f"{name} · {description.split(',')[0]}", name) for name, description in HUB_MODELS.items()]
    return choices + [(f"{UPLOADED} (upload a file below)", UPLOADED)]


def architecture_choices(extra_models: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(label, value) of the architectures an uploaded weights file may have: the local folders' (same shapes as
    that folder's model), the bundled default's and the curated timm names."""
    return [*((f"same as {Path(path).name} (local folder)", path) for path in extra_models),
            (DEFAULT_MODEL, DEFAULT_MODEL), *((name, name) for name in HUB_MODELS)]


@functools.cache
def _model_infos() -> dict[str, Any]:
    # list_models builds a meta model per hub name (about a second): done once, in the background at start-up.
    return {info.name: info for info in list_models()}


@functools.lru_cache(maxsize=32)
def _skeleton(name: str, num_classes: int) -> nn.Module:
    """The model's architecture on the meta device: counting needs shapes only, so ViT-L costs nothing."""
    return create_meta_model(name, num_classes=num_classes)


def warm_up(model_name: str) -> None:
    """Build what the first page load needs, in the background while the server starts."""
    try:
        _skeleton(model_name, DEFAULT_NUM_CLASSES)
        _model_infos()
    except Exception:  # noqa: BLE001 - only a cache; the request that needs it reports the error
        log.debug("studio warm-up failed", exc_info=True)


def load_checkpoint(path: Path, arch: str, max_classes: int = MAX_CLASSES) -> nn.Module:
    """An uploaded weights file as a model. `arch` is a model name, or a local model folder whose config.json
    (copied next to the file by `upload_checkpoint`) describes the architecture. A file whose head declares more
    than `max_classes` classes (--max-classes) is refused before anything is built."""
    if Path(arch).is_dir():
        return load_model(str(path), max_classes=max_classes)
    return load_model(str(path), arch=arch, max_classes=max_classes)


def training_base_model(model_name: str, session: Session, max_classes: int = MAX_CLASSES) -> str | nn.Module:
    """What `train` gets: a registry name or folder, or a freshly loaded uploaded checkpoint."""
    if model_name == UPLOADED:
        if session.checkpoint is None:
            raise StudioError("Base model: upload a model file first (Model & adapter tab), or pick a model "
                              "from the list")
        return load_checkpoint(session.checkpoint, session.checkpoint_arch, max_classes)
    return model_name


def _counting_model(model_name: str, session: Session) -> nn.Module:
    num_classes = len(session.data.classes) if session.data is not None else DEFAULT_NUM_CLASSES
    if model_name == UPLOADED:
        if session.checkpoint is None:
            raise StudioError("Base model: upload a model file below first, or pick a model from the list")
        return _skeleton(session.checkpoint_arch, num_classes)
    if not model_name:
        raise StudioError("Base model: pick a model from the list")
    return _skeleton(model_name, num_classes)


def describe_model(model_name: str, sessions: SessionStore, request: gr.Request | None) -> str:
    """One line under the model picker: what the model is and whether it can be trained offline."""
    session = sessions.get(request)
    if model_name == UPLOADED:
        if session.checkpoint is None:
            return "Upload a weights file in the box below and say which architecture it is."
        return f"Your file **{session.checkpoint.name}** ({Path(session.checkpoint_arch).name})."
    if model_name and Path(model_name).is_dir():
        return f"Local model folder `{model_name}`: weights on this machine ✓"
    info = _model_infos().get(model_name)
    if info is None:
        return ""
    size = f"{info.input_size[-1]} px, {info.params / 1e6:.1f} M parameters"
    where = "weights on this machine ✓" if info.available_offline else (
        "⚠️ weights not on this machine: counts and figures work, training downloads them once (needs "
        "internet), or upload the weights file below")
    return f"{info.description}; {size}. {where}"


# ---------------------------------------------------------------------------------------------- configs
# The inputs of the count, the figures and `/count_parameters`, in order: the model, then the adapter controls.
CONTROL_NAMES = ("model_name", *ADAPTER_NAMES)


# The adapter controls a preset leaves as the user set them; head-only greys them out with the others.
USER_CONTROL_NAMES = ("rank", "alpha", "targets")


def preset_controls(preset_name: str) -> list[Any]:
    """The page's preset change: the values of the controls the preset sets (PRESET_CONTROL_NAMES, in order), then
    USER_CONTROL_NAMES (rank, α and targets stay as the user set them), then the preset's note. Head-only has no
    adapter, so every adapter control is shown as not applicable (greyed out) until another method is chosen."""
    values = preset_values(preset_name)
    applicable = preset_name != HEAD_ONLY
    return [*(gr.update(value=values[name], interactive=applicable) for name in PRESET_CONTROL_NAMES),
            *(gr.update(interactive=applicable) for _ in USER_CONTROL_NAMES), preset_note(preset_name)]


def preset_settings(preset_name: str) -> dict[str, Any]:
    """The control values of a preset by name, to pass on to `count_parameters` or `train` (API callers set every
    control, so a preset name alone does not change the others)."""
    return {"preset_name": preset_name, **preset_values(preset_name)}


def count_for_controls(values: dict[str, Any], session: Session) -> tuple[SuperLoRAConfig, nn.Module, ParameterCount]:
    """The config the controls describe, the model skeleton, and the exact count (from shapes, no weights)."""
    config = config_from_values(values, VIT_TARGETS)
    skeleton = _counting_model(values["model_name"], session)
    return config, skeleton, count_parameters(skeleton, config, trainable=("head",))


def show_count(values: dict[str, Any], sessions: SessionStore, request: gr.Request | None) -> tuple[Any, str]:
    """(count panel, error line): a bad combination is shown next to the controls, never raised."""
    session = sessions.get(request)
    session.controls_version += 1
    try:
        _, _, count = count_for_controls(values, session)
    except SuperLoRAError as err:
        return gr.update(), f"⚠️ {friendly_message(err)} *(the numbers below are for the last valid settings)*"
    return format_count(count), ""


def show_figures(values: dict[str, Any], sessions: SessionStore, request: gr.Request | None) -> tuple[Any, Any]:
    """The budget and layout figures of the controls (left as they are while the combination is invalid).

    Drawing them takes far longer than counting (up to a second for ViT-B, on the server and in the browser), so
    while a slider is still moving they wait FIGURE_DELAY_S and are skipped if the controls changed meanwhile.
    """
    session = sessions.get(request)
    version = session.controls_version
    time.sleep(FIGURE_DELAY_S)
    if session.controls_version != version:
        return gr.update(), gr.update()
    try:
        config, skeleton, _ = count_for_controls(values, session)
        found, layout = viz.model_plan(skeleton, config)
    except SuperLoRAError:
        return gr.update(), gr.update()
    if config.head_only:  # no adapter: no budget to draw and no update entries to lay out
        return None, None
    return (viz.budget_figure([t.shape for t in found], config),
            viz.layout_figure(layout, found, seed=config.seed, max_bins=LAYOUT_BINS))


def count_endpoint(values: dict[str, Any], sessions: SessionStore, request: gr.Request | None) -> dict[str, Any]:
    """The exact trainable-parameter count of these settings on this model, as a dict (raises on bad settings)."""
    config, _, count = count_for_controls(values, sessions.get(request))
    return {**count.as_dict(), "config": config.to_dict()}



# ---------------------------------------------------------------------------------------------- choose by budget
SUGGESTIONS_SHOWN = 8  # rows of the budget table
SUGGESTION_HEADERS = ["#", "method", "budget", "adapter parameters", *(f"{t}, %" for t in STUDY_TASKS), "study lr"]


def _suggestions(model_name: str, budget: Any, session: Session) -> list[Suggestion]:
    if budget is None or budget == "":
        raise StudioError("Budget: type the most adapter parameters you want to train, e.g. 1000")
    whole = int(budget) if isinstance(budget, float) and budget.is_integer() else budget
    return suggest(_counting_model(model_name, session), budget=whole, limit=SUGGESTIONS_SHOWN)


def _accuracy_cell(suggestion: Suggestion, task: str) -> str:
    found = [m for m in suggestion.measured if m.task == task]
    return f"{100 * found[0].mean:.1f} ± {100 * found[0].sd:.1f} (n={found[0].seeds})" if found else "–"


def show_suggestions(model_name: str, budget: float | None, sessions: SessionStore, request: gr.Request | None
                     ) -> tuple[list[list[Any]], Any, str]:
    """The Budget box's Suggest: the study's configurations whose exact count on this model fits the budget, best
    measured first (table rows), the same as choices to pick from, and a note on what the numbers are."""
    found = _suggestions(model_name, budget, sessions.get(request))
    rows = [[rank, s.method, s.budget_label, s.parameters, *(_accuracy_cell(s, t) for t in STUDY_TASKS),
             s.lrs] for rank, s in enumerate(found, start=1)]
    choices = [(f"#{rank} {s.label} · {s.parameters:,} parameters", s.label) for rank, s in enumerate(found, start=1)]
    note = (f"**#1 {found[0].label}**: {found[0].why}. Parameters are exact on this model; accuracies are what the "
            "Pareto study measured on its own model and tasks (mean ± sd over seeds, docs/benchmarks.md). Pick one "
            "below to set the controls.")
    return rows, gr.update(choices=choices, value=None), note


def apply_suggestion(model_name: str, budget: float | None, choice: str | None, sessions: SessionStore,
                     request: gr.Request | None) -> list[Any]:
    """Picking a suggestion: the values of every adapter control (ADAPTER_NAMES, in order) for its config, then the
    preset's note. The head-only suggestion (no config) picks the head-only method with the other controls at
    their defaults (the page greys them out: `adapter_interactivity`). The suggestions are recomputed from the
    model and budget, so the page keeps no list."""
    found = {s.label: s for s in _suggestions(model_name, budget, sessions.get(request))}
    if choice not in found:
        raise StudioError(f"Suggestion: {choice!r} does not fit this budget on this model; press Suggest again")
    config = found[choice].config
    if config is None:
        values = {control.name: control.default for control in ADAPTER_CONTROLS}
        values["preset_name"] = HEAD_ONLY
    else:
        values = values_from_config(config)
    return [*(values[name] for name in ADAPTER_NAMES), preset_note(values["preset_name"])]


def adapter_interactivity(preset_name: str) -> list[Any]:
    """The adapter controls after the method (ADAPTER_NAMES[1:]) editable, or greyed out for head-only."""
    return [gr.update(interactive=preset_name != HEAD_ONLY) for _ in ADAPTER_NAMES[1:]]


def upload_checkpoint(file: str | None, arch: str, sessions: SessionStore, request: gr.Request | None
                      ) -> tuple[str, str]:
    """Check an uploaded base model file (.safetensors, or a .pth/.bin state dict read with weights_only) and
    select it. The file must hold weights of `arch`; a mismatch names the first tensor that does not fit."""
    session = sessions.get(request)
    if not file:
        raise StudioError("Choose a model weights file to upload.")
    known = dict((value, label) for label, value in architecture_choices(sessions.extra_models))
    if arch not in known:
        raise StudioError(f"Architecture of the file: {arch!r} is not one the studio offers; choose one of "
                          f"{', '.join(known)}")
    source = Path(file)
    folder = session.workdir / f"checkpoint-{uuid.uuid4().hex[:6]}"
    target = folder / source.name
    try:
        folder.mkdir()
        shutil.copyfile(source, target)
        if Path(arch).is_dir():
            shutil.copyfile(Path(arch) / "config.json", target.with_suffix(".json"))
        load_checkpoint(target, arch, sessions.limits.max_classes)
    except BaseException:  # a refused file, a full disk, an interrupted request: no copy stays behind
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if session.checkpoint is not None:
        shutil.rmtree(session.checkpoint.parent, ignore_errors=True)
    session.checkpoint, session.checkpoint_arch = target, arch
    return UPLOADED, f"Using your file **{source.name}** ({Path(arch).name})."
