"""The Model & adapter tab's handlers: the model list, the live parameter count and figures, uploaded weights.

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
from superlora.config import PER_TARGET, PRESET_DESCRIPTIONS, PRESETS, SuperLoRAConfig, preset
from superlora.counting import ParameterCount, count_parameters
from superlora.errors import ConfigError, SuperLoRAError
from superlora.studio.endpoints import friendly_message
from superlora.studio.sessions import Session, SessionStore, StudioError

log = logging.getLogger(__name__)

# What the target checkboxes mean on a timm ViT (q/k/v are the row blocks of the fused qkv layer).
TARGET_CHOICES = {"q": "q", "k": "k", "v": "v", "proj": "attn.proj", "mlp": "mlp"}
FACTORING_CHOICES = {"lora": "lora", "tucker": "tucker", "hadamard": "hadamard", "full": "full",
                     "full ⊗ lora": ("full", "lora")}
FOLD_CHOICES = ("native", "stack", "auto")
PROJECTION_CHOICES = ("none", "fastfood", "gaussian")
UPLOADED = "uploaded checkpoint"
PER_TARGET_GROUPS = 0  # the groups slider's "one group per target weight"
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
def config_from_controls(preset_name: str, rank: float, alpha: float | None, groups: float, grouping: str,
                         fold: str, order: float, splits: float, factoring: str, projection: str, ratio: float,
                         shuffle: bool, targets: list[str] | None, seed: int = 0) -> SuperLoRAConfig:
    """The SuperLoRAConfig the controls describe. groups=0 means one group per target weight; alpha empty or 0
    means alpha = rank. Raises ConfigError, whose message names the field (see FIELD_LABELS)."""
    targets = list(targets or [])
    unknown = [t for t in targets if t not in TARGET_CHOICES]
    if unknown:
        raise ConfigError(f"targets={unknown}: not a target the studio knows; choose from "
                          f"{', '.join(TARGET_CHOICES)}")
    patterns = tuple(TARGET_CHOICES[t] for t in targets)
    if not patterns:
        raise ConfigError("targets=(): tick at least one of q, k, v, proj or mlp")
    if preset_name not in PRESETS:
        raise ConfigError(f"preset {preset_name!r} is unknown; choose one of {', '.join(PRESETS)}")
    if factoring not in FACTORING_CHOICES:
        raise ConfigError(f"factoring={factoring!r}: not a factoring; choose one of {', '.join(FACTORING_CHOICES)}")
    chosen_factoring = FACTORING_CHOICES[factoring]
    overrides: dict[str, Any] = {}
    if "tucker" not in (chosen_factoring if isinstance(chosen_factoring, tuple) else (chosen_factoring,)):
        overrides["uncompressed_modes"] = ()  # LoTR's identity mode belongs to its Tucker factoring only
    return preset(
        preset_name,
        targets=patterns,
        rank=int(rank),
        alpha=float(alpha) if alpha else None,
        groups=PER_TARGET if int(groups) == PER_TARGET_GROUPS else int(groups),
        grouping=grouping,
        fold=fold,
        order=int(order),
        splits=int(splits),
        factoring=chosen_factoring,
        projection=projection,
        ratio=float(ratio),
        shuffle=bool(shuffle),
        seed=int(seed),
        **overrides,
    )


def preset_controls(preset_name: str) -> tuple:
    """Control values that reproduce a preset (rank and targets stay as the user set them)."""
    settings = PRESETS[preset_name]
    base = SuperLoRAConfig(**{**settings, "targets": ("q", "v")})
    groups = PER_TARGET_GROUPS if settings.get("groups") == PER_TARGET else base.groups
    factoring = next((label for label, value in FACTORING_CHOICES.items() if value == base.factoring), "lora")
    return (groups, base.grouping, base.fold if isinstance(base.fold, str) else "auto", base.fold_order,
            base.splits, factoring, "none", 1.0, False, preset_note(preset_name))


PRESET_CONTROL_NAMES = ("groups", "grouping", "fold", "order", "splits", "factoring", "projection", "ratio",
                        "shuffle")


def preset_settings(preset_name: str) -> dict[str, Any]:
    """The control values of a preset by name, to pass on to `count_parameters` or `train` (API callers set every
    control, so a preset name alone does not change the others)."""
    if preset_name not in PRESETS:
        raise StudioError(f"Method (preset): {preset_name!r} is unknown; choose one of {', '.join(PRESETS)}")
    return {"preset_name": preset_name, **dict(zip(PRESET_CONTROL_NAMES, preset_controls(preset_name)))}


def preset_note(preset_name: str) -> str:
    """The one-line description under the method picker."""
    return f"*{PRESET_DESCRIPTIONS.get(preset_name, '')}*"


def format_count(count: ParameterCount) -> str:
    """The live panel: adapter, head, total, share of the model, factor vs LoRA r=1, adapter file size."""
    size = count.adapter_bytes
    size_text = f"{size / 1024:.1f} KiB" if size < 1024**2 else f"{size / 1024**2:.2f} MiB"
    factor = count.factor_vs_lora_r1
    if 0.95 <= factor <= 1.05:
        factor_text = "about as many parameters as"
    elif factor > 1:
        factor_text = f"**{factor:.1f}×** fewer parameters than"
    else:
        factor_text = f"**{1 / factor:.1f}×** more parameters than"
    return "\n".join([
        "| trainable parameters | |",
        "|---|---:|",
        f"| **adapter** | **{count.adapter:,}** |",
        f"| classifier head | {count.trainable_module_parameters:,} |",
        f"| total | {count.total_trainable:,} |",
        f"| share of the model ({count.base_model:,}) | {count.percent_of_model:.3f} % |",
        f"| LoRA r=1 on the same targets | {count.lora_r1:,} |",
        f"| adapter file (float32) | {size_text} |",
        "",
        f"The adapter has {factor_text} LoRA r=1 on the same {len(count.targets)} target matrices "
        f"({count.update_size:,} update entries, {len(count.groups)} group(s)).",
    ])


CONTROL_NAMES = ("model_name", "preset_name", "rank", "alpha", "groups", "grouping", "fold", "order", "splits",
                 "factoring", "projection", "ratio", "shuffle", "targets")


def count_for_controls(values: dict[str, Any], session: Session) -> tuple[SuperLoRAConfig, nn.Module, ParameterCount]:
    """The config the controls describe, the model skeleton, and the exact count (from shapes, no weights)."""
    config = config_from_controls(*(values[name] for name in CONTROL_NAMES[1:]))
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
        found, layout = viz.model_layout(skeleton, config)
    except SuperLoRAError:
        return gr.update(), gr.update()
    return (viz.budget_figure([t.shape for t in found], config),
            viz.layout_figure(layout, found, seed=config.seed, max_bins=LAYOUT_BINS))


def count_endpoint(values: dict[str, Any], sessions: SessionStore, request: gr.Request | None) -> dict[str, Any]:
    """The exact trainable-parameter count of these settings on this model, as a dict (raises on bad settings)."""
    config, _, count = count_for_controls(values, sessions.get(request))
    return {**count.as_dict(), "config": config.to_dict()}



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
