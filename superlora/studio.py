"""The studio: a Gradio app in which someone who never read the code fine-tunes a ViT with SuperLoRA.

A thin shell over the library: every number, figure, training run, prediction and export comes from the same
functions the CLI and notebooks call (`count_parameters`, `superlora.viz`, `superlora.data`, `train`,
`predict`, `export`). This module only turns widget values into those calls and their results into widgets.

Sessions: each browser tab (or `gradio_client.Client`) is one Gradio session, identified by its session hash,
and owns one `Session` (its data, trained model and a private temporary folder). Nothing is shared between
sessions except read-only caches of model skeletons for counting. When the tab closes (Gradio's heartbeat ends)
the session's training is stopped and its folder deleted at once. Sessions without an open heartbeat (raw HTTP
callers of `/gradio_api/call/`, which get a new session per request) are dropped after `StudioLimits.
session_idle_minutes` without a call. Calls without any session (`/gradio_api/run/...`) are refused: queued
endpoints by Gradio (`api_open=False`), the others by `SessionStore.get`.

Limits (`StudioLimits`, all set by `app.py` flags and listed in docs/studio.md): images are kept at most
`image_side` px per side and count against a per-session and a global memory budget; uploads hold at most
`max_upload_files` files; at most `max_queued_jobs` training runs wait for a slot, each of at most `max_steps` steps.

Named API endpoints (see docs/studio.md): `preset`, `count_parameters`, `use_sample`, `load_data`,
`upload_checkpoint`, `train`, `validation`, `stop`, `inspect`, `predict`, `export`, `report`, `save_config`,
`load_config`.

Training runs write a run folder (`superlora.runs`) inside the session's folder: its `validation/` files feed the
Train tab's mistakes and per-class table, and `superlora.report.write_report` makes the Export tab's report from
it. A new run replaces the previous one; the folder goes with the session.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import os
import queue
import re
import shutil
import tempfile
import threading
import time
import typing
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image
from starlette.middleware import Middleware
from torch import nn

from superlora import viz
from superlora.config import PER_TARGET, PRESET_DESCRIPTIONS, PRESETS, SuperLoRAConfig, preset
from superlora.counting import ParameterCount, count_parameters
from superlora.data import (SAMPLES, ImageSet, MemoryBudgetExceeded, decode_image, load_dataset, sample_dataset,
                            train_val_split)
from superlora.data.decode import ImageRejected
from superlora.errors import CheckpointError, ConfigError, SuperLoRAError
from superlora.files import atomic_write
from superlora.base_models import DEFAULT_MODEL, DEFAULT_MODEL_DIR, HUB_MODELS, MAX_CLASSES, create_meta_model, \
    list_models, load_model
from superlora.report import CLASS_TABLE_HEADERS, validation_view, write_report

log = logging.getLogger(__name__)

# What the target checkboxes mean on a timm ViT (q/k/v are the row blocks of the fused qkv layer).
TARGET_CHOICES = {"q": "q", "k": "k", "v": "v", "proj": "attn.proj", "mlp": "mlp"}
FACTORING_CHOICES = {"lora": "lora", "tucker": "tucker", "hadamard": "hadamard", "full": "full",
                     "full ⊗ lora": ("full", "lora")}
FOLD_CHOICES = ("native", "stack", "auto")
PROJECTION_CHOICES = ("none", "fastfood", "gaussian")
LABEL_CHOICES = ("auto", "folders", "prefix", "csv")
EXPORT_CHOICES = ("adapter", "merged", "onnx")
UPLOADED = "uploaded checkpoint"
PER_TARGET_GROUPS = 0  # the groups slider's "one group per target weight"
DEFAULT_NUM_CLASSES = 4  # the classifier head counted before any data is loaded
THUMBNAILS_PER_CLASS = 6  # one gallery row per class
THUMBNAIL_SIDE = 96
VALIDATION_PICKS_PER_CLASS = 2
VAL_FRACTION, SPLIT_SEED = 0.2, 0  # the fixed 80/20 split of every class
MAX_SHOWN_MISTAKES = 100  # mistakes in the Train tab's gallery; the report and predictions.csv list them all
AUTO_GOOD_CLASS = "auto"  # the good-class choice that leaves the pick to the library (ok/good/pass/normal)
LAYOUT_BINS = 96  # cells per target strip in the layout figure: enough to see groups, small to send
FIGURE_DELAY_S = 0.3  # figures wait this long for the controls to settle (the count never waits)
STUDIO_CONFIG_VERSION = 1
MIB = 1 << 20
NO_SESSION = ("This studio answers only calls that belong to a session: use gradio_client, the web page, or "
              "/gradio_api/call/<endpoint> (which opens a session per request). Direct /gradio_api/run/ calls "
              "without a session_hash are refused.")
HEARTBEAT_PATH = re.compile(r"/heartbeat/([^/]+)/?$")

# The control each config field is set with, so an error message can say where to look.
FIELD_LABELS = {"targets": "Adapt these weights", "rank": "Rank r", "alpha": "α", "groups": "Groups G",
                "grouping": "Grouping", "fold": "Fold", "order": "Tensor order M", "splits": "Kronecker splits K",
                "factoring": "Factoring", "projection": "Projection", "ratio": "Projection ratio ρ",
                "shuffle": "Shuffle", "uncompressed_modes": "Method (preset)", "steps": "Steps", "epochs": "Epochs",
                "lr": "Learning rate", "batch_size": "Batch size", "good_class": "Good (defect-free) class"}


class StudioError(SuperLoRAError):
    """Something a studio user did that cannot work (e.g. training before any data is loaded)."""


@dataclass(frozen=True)
class StudioLimits:
    """What one studio lets its users hold and start; each field is an `app.py` flag (see docs/studio.md)."""

    session_idle_minutes: float = 15.0  # a session with no open heartbeat and no call for this long is dropped
    image_side: int = 256  # images are kept at most this many px per side (timm's 224-px models resize to 256)
    session_memory_mb: int = 1024  # decoded images one session may hold
    memory_mb: int = 4096  # decoded images all sessions together may hold
    max_upload_files: int = 5000  # files in one upload (a zip counts as one; its members have their own limit)
    max_queued_jobs: int = 8  # training runs waiting for a slot; more are refused
    max_steps: int = 10_000  # optimizer steps of one training run (steps, or epochs x steps per epoch)
    max_classes: int = MAX_CLASSES  # the largest classifier head an uploaded weights file may declare

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            if not value > 0:
                raise ConfigError(f"{name}={value}: must be positive")
        if self.session_memory_mb > self.memory_mb:
            raise ConfigError(f"session_memory_mb={self.session_memory_mb} is over memory_mb={self.memory_mb}; "
                              "one session cannot hold more than all sessions together")


# ---------------------------------------------------------------------------------------------- sessions
@dataclass
class Session:
    """Everything one browser session owns. Its folder is created on first use and deleted by `close`."""

    folder: Path
    checkpoint: Path | None = None  # an uploaded base model file
    checkpoint_arch: str = ""  # its architecture: a model name, or a local model folder of the same shapes
    data: ImageSet | None = None
    data_source: str = ""
    data_sample: str = ""  # the bundled sample's name when `data` is one
    train_set: ImageSet | None = None
    val_set: ImageSet | None = None
    result: Any = None  # TrainResult of the last finished run
    trained_model_source: str = ""
    events: list[Any] = field(default_factory=list)
    stop: Any = None  # StopSignal of the queued or running training job
    phase: str = "idle"  # "idle", "queued" (waiting for a training slot) or "training"
    controls_version: int = 0  # counts control changes, so figures of settings already changed are skipped
    last_used: float = field(default_factory=time.monotonic)
    closed: bool = False
    data_bytes: int = 0  # pixel memory of `data` (its train/validation halves share its images)
    export_dir: Path | None = None  # the latest export; a new one replaces it
    run_dir: Path | None = None  # the run folder of `result`; a new run replaces it

    @property
    def workdir(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder

    def close(self) -> None:
        self.closed = True
        if self.stop is not None:
            self.stop.request()
        self.data = self.train_set = self.val_set = self.result = self.run_dir = None
        self.data_bytes = 0
        shutil.rmtree(self.folder, ignore_errors=True)


class SessionStore:
    """The sessions of one app, keyed by Gradio's session hash; their folders live under one temporary root.

    Also the app's memory account: `image_budget` hands a loading session the bytes it may decode, so that no
    session holds more than `limits.session_memory_mb` and all of them together no more than `limits.memory_mb`.
    """

    def __init__(self, limits: StudioLimits | None = None, extra_models: tuple[str, ...] = (),
                 idle_s: float | None = None):
        self.root = Path(tempfile.mkdtemp(prefix="superlora-studio-"))
        self.extra_models = extra_models  # local model folders the app offers
        self.limits = limits or StudioLimits()
        self.idle_s = idle_s if idle_s is not None else 60 * self.limits.session_idle_minutes
        self.waiting_jobs: Callable[[], int] = lambda: 0  # training runs waiting for a slot (set by build_app)
        self._sessions: dict[str, Session] = {}
        self._heartbeats: collections.Counter[str] = collections.Counter()  # open heartbeat streams per hash
        self._reserved: dict[int, int] = {}  # bytes promised to loads in progress, by session id
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        atexit.register(self.close_all)

    def get(self, request: gr.Request | None) -> Session:
        """The caller's session, created on first use. `request` None is a direct Python call (tests, notebooks);
        a Gradio request without a session hash is a sessionless HTTP call and is refused."""
        key = "local" if request is None else getattr(request, "session_hash", None)
        if not key:
            raise StudioError(NO_SESSION)
        now = time.monotonic()
        with self._lock:
            self._drop_idle(now)
            session = self._sessions.get(key)
            if session is None:
                # The folder name is ours, never the client-chosen hash, so no hash can point outside the root.
                session = self._sessions[key] = Session(folder=self.root / uuid.uuid4().hex[:16])
            session.last_used = now
            return session

    def peek(self, session_hash: str) -> Session | None:
        """The session of this hash if it exists (for tests and clean-up), without creating one."""
        with self._lock:
            return self._sessions.get(session_hash)

    def end(self, request: gr.Request | None) -> None:
        """Called when a browser tab or client disconnects: stop its training, delete its files."""
        key = getattr(request, "session_hash", None)
        with self._lock:
            session = self._sessions.pop(key, None) if key else None
        if session is not None:
            session.close()

    def heartbeat(self, session_hash: str, open_: bool) -> None:
        """A page or gradio_client opened (or closed) its heartbeat stream: while one is open, never idle."""
        with self._lock:
            self._heartbeats[session_hash] += 1 if open_ else -1
            if self._heartbeats[session_hash] <= 0:
                del self._heartbeats[session_hash]

    def sweep(self) -> None:
        """Drop idle sessions now (also done on every call and by the background sweeper)."""
        with self._lock:
            self._drop_idle(time.monotonic())

    def start_sweeper(self) -> None:
        """Drop idle sessions even when no call arrives, checking a few times per idle period."""
        period = min(60.0, max(self.idle_s / 4, 0.05))

        def sweep_until_closed() -> None:
            while not self._stopped.wait(period):
                self.sweep()
        threading.Thread(target=sweep_until_closed, name="studio-session-sweeper", daemon=True).start()

    def _drop_idle(self, now: float) -> None:
        for key, session in list(self._sessions.items()):
            if now - session.last_used > self.idle_s and session.phase == "idle" and key not in self._heartbeats:
                self._sessions.pop(key).close()

    @contextlib.contextmanager
    def image_budget(self, session: Session) -> Iterator[int]:
        """The bytes of decoded images `session` may load now (its current images are replaced, so they do not
        count), reserved against the global budget until the load ends."""
        limits = self.limits
        with self._lock:
            others = sum(s.data_bytes for s in self._sessions.values() if s is not session)
            others += sum(b for owner, b in self._reserved.items() if owner != id(session))
            left = limits.memory_mb * MIB - others
            if left < MIB:
                raise StudioError(f"The server's memory for images ({limits.memory_mb:,} MiB for all sessions, "
                                  "--memory-mb) is in use by other sessions; try again later.")
            budget = self._reserved[id(session)] = min(limits.session_memory_mb * MIB, left)
        try:
            yield budget
        finally:
            with self._lock:
                self._reserved.pop(id(session), None)

    def connected(self) -> list[str]:
        """The session hashes with an open heartbeat stream now."""
        with self._lock:
            return list(self._heartbeats)

    def hashes(self) -> list[str]:
        """The session hashes the store holds now."""
        with self._lock:
            return list(self._sessions)

    def memory_used(self) -> int:
        """Pixel bytes of the images all sessions hold."""
        with self._lock:
            return sum(s.data_bytes for s in self._sessions.values())

    def close_all(self) -> None:
        self._stopped.set()
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            session.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def __len__(self) -> int:
        return len(self._sessions)


class HeartbeatWatch:
    """ASGI middleware that tells the store which sessions hold an open heartbeat stream (a page or a
    gradio_client), so that only sessions nobody is connected to expire."""

    def __init__(self, app: Any, sessions: SessionStore):
        self.app, self.sessions = app, sessions

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        match = HEARTBEAT_PATH.search(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        self.sessions.heartbeat(match.group(1), True)
        try:
            await self.app(scope, receive, send)
        finally:
            self.sessions.heartbeat(match.group(1), False)


# ---------------------------------------------------------------------------------------------- messages
def _friendly_message(err: Exception) -> str:
    """A library error in the words of the studio: the control to look at first, then the library's message."""
    text = str(err)
    match = re.match(r"^(\w+)=", text)
    if isinstance(err, ConfigError) and match and match.group(1) in FIELD_LABELS:
        return f"{FIELD_LABELS[match.group(1)]}: {text}"
    return text


def _unexpected(err: Exception) -> gr.Error:
    # Gradio prints this error's traceback (with its cause) to the server console; the user sees one line.
    return gr.Error(f"Something went wrong that the studio did not expect ({type(err).__name__}: {err}). "
                    "Your session is still usable; if it happens again, please report it with this message.",
                    print_exception=True)


def user_errors(fn: Callable) -> Callable:
    """Show a library error as its message (a gr.Error), and anything unexpected as one line, never a traceback."""
    if _is_generator(fn):
        @functools.wraps(fn)
        def generator(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except SuperLoRAError as err:
                raise gr.Error(_friendly_message(err), print_exception=False) from err
            except Exception as err:  # noqa: BLE001 - the user gets one line; the console gets the traceback
                raise _unexpected(err) from err
        return generator

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except SuperLoRAError as err:
            raise gr.Error(_friendly_message(err), print_exception=False) from err
        except Exception as err:  # noqa: BLE001
            raise _unexpected(err) from err
    return wrapper


def _is_generator(fn: Callable) -> bool:
    return inspect.isgeneratorfunction(fn)


def session_endpoint(fn: Callable, sessions: SessionStore) -> Callable:
    """`fn` as Gradio should see it: its parameters minus `sessions` (filled in with this app's store), with the
    real type hints (Gradio injects `gr.Request`, `gr.SelectData` and `gr.Progress` by annotation or default), and
    errors shown as messages (`user_errors`)."""
    wrapped = user_errors(fn)
    signature = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    # Gradio passes inputs by position, so keyword-only parameters (after a defaulted one) are shown as positional.
    parameters = [p.replace(annotation=hints.get(name, p.annotation), kind=inspect.Parameter.POSITIONAL_OR_KEYWORD)
                  for name, p in signature.parameters.items() if name != "sessions"]
    names = [p.name for p in parameters]

    def arguments(args: tuple, kwargs: dict) -> dict:
        return {**dict(zip(names, args)), **kwargs, "sessions": sessions}

    if _is_generator(fn):
        def endpoint(*args: Any, **kwargs: Any) -> Iterator[Any]:
            yield from wrapped(**arguments(args, kwargs))
    else:
        def endpoint(*args: Any, **kwargs: Any) -> Any:
            return wrapped(**arguments(args, kwargs))
    endpoint.__name__, endpoint.__qualname__, endpoint.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    endpoint.__signature__ = signature.replace(parameters=parameters, return_annotation=inspect.Signature.empty)
    endpoint.__annotations__ = {name: hint for name, hint in hints.items() if name in names}
    return endpoint


def with_parameters(fn: Callable, names: tuple[str, ...], sessions: SessionStore) -> Callable:
    """`fn(values, sessions, request)` as Gradio should see it: one positional parameter per name (the API's
    parameter names), then the request, with errors shown as messages."""
    wrapped = user_errors(fn)

    def endpoint(*args: Any) -> Any:
        *values, request = args
        return wrapped(dict(zip(names, values)), sessions, request)
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    endpoint.__signature__ = inspect.Signature([*(inspect.Parameter(name, kind) for name in names),
                                                inspect.Parameter("request", kind, annotation=gr.Request)])
    endpoint.__annotations__ = {"request": gr.Request}
    endpoint.__name__ = endpoint.__qualname__ = fn.__name__
    endpoint.__doc__ = fn.__doc__
    return endpoint


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


def _warm_up(model_name: str) -> None:
    """Build what the first page load needs, in the background while the server starts."""
    try:
        _skeleton(model_name, DEFAULT_NUM_CLASSES)
        _model_infos()
    except Exception:  # noqa: BLE001 - only a cache; the request that needs it reports the error
        log.debug("studio warm-up failed", exc_info=True)


def _load_checkpoint(path: Path, arch: str, max_classes: int = MAX_CLASSES) -> nn.Module:
    """An uploaded weights file as a model. `arch` is a model name, or a local model folder whose config.json
    (copied next to the file by `upload_checkpoint`) describes the architecture. A file whose head declares more
    than `max_classes` classes (--max-classes) is refused before anything is built."""
    if Path(arch).is_dir():
        return load_model(str(path), max_classes=max_classes)
    return load_model(str(path), arch=arch, max_classes=max_classes)


def _base_model(model_name: str, session: Session, max_classes: int = MAX_CLASSES) -> str | nn.Module:
    """What `train` gets: a registry name or folder, or a freshly loaded uploaded checkpoint."""
    if model_name == UPLOADED:
        if session.checkpoint is None:
            raise StudioError("Base model: upload a model file first (Model & adapter tab), or pick a model "
                              "from the list")
        return _load_checkpoint(session.checkpoint, session.checkpoint_arch, max_classes)
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
            base.splits, factoring, "none", 1.0, False, _preset_note(preset_name))


PRESET_CONTROL_NAMES = ("groups", "grouping", "fold", "order", "splits", "factoring", "projection", "ratio",
                        "shuffle")


def preset_settings(preset_name: str) -> dict[str, Any]:
    """The control values of a preset by name, to pass on to `count_parameters` or `train` (API callers set every
    control, so a preset name alone does not change the others)."""
    if preset_name not in PRESETS:
        raise StudioError(f"Method (preset): {preset_name!r} is unknown; choose one of {', '.join(PRESETS)}")
    return {"preset_name": preset_name, **dict(zip(PRESET_CONTROL_NAMES, preset_controls(preset_name)))}


def _preset_note(preset_name: str) -> str:
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
        return gr.update(), f"⚠️ {_friendly_message(err)} *(the numbers below are for the last valid settings)*"
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
    return (viz.budget_figure([t.shape for t in found], config),
            viz.layout_figure(layout, found, seed=config.seed, max_bins=LAYOUT_BINS))


def count_endpoint(values: dict[str, Any], sessions: SessionStore, request: gr.Request | None) -> dict[str, Any]:
    """The exact trainable-parameter count of these settings on this model, as a dict (raises on bad settings)."""
    config, _, count = count_for_controls(values, sessions.get(request))
    return {**count.as_dict(), "config": config.to_dict()}


# ---------------------------------------------------------------------------------------------- data
def _thumbnail(image: Image.Image) -> Image.Image:
    thumb = image.copy()
    thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    return thumb


def _blank() -> Image.Image:
    return Image.new("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE), (244, 244, 246))


def _data_outputs(session: Session) -> tuple:
    """Summary, class table, thumbnail grid (one row per class), skipped files, validation images to pick."""
    data = session.data
    counts = data.class_counts()
    train_counts = session.train_set.class_counts()
    val_counts = session.val_set.class_counts()
    table = [[name, counts[name], train_counts[name], val_counts[name]] for name in data.classes]
    gallery = []
    for index, name in enumerate(data.classes):
        members = [image for image, label in zip(data.images, data.labels) if label == index]
        row = [(_thumbnail(image), name) for image in members[:THUMBNAILS_PER_CLASS]]
        # Pad short classes so that every class keeps its own row of the grid.
        gallery += row + [(_blank(), "")] * (THUMBNAILS_PER_CLASS - len(row))
    picks = []
    for index, name in enumerate(data.classes):
        members = [image for image, label in zip(session.val_set.images, session.val_set.labels) if label == index]
        picks += [(_thumbnail(image), name) for image in members[:VALIDATION_PICKS_PER_CLASS]]
    rejected = [[r.name, r.reason] for r in data.rejected] or [["—", "no file was skipped"]]
    notes = [f"**{len(data.images)} images in {len(data.classes)} classes** from {session.data_source}: "
             f"{sum(train_counts.values())} for training, {sum(val_counts.values())} for validation "
             "(a fixed 80/20 split per class)."]
    notes += [f"⚠️ {warning}" for warning in dict.fromkeys(session.train_set.warnings)]
    if data.rejected:
        notes.append(f"⚠️ {len(data.rejected)} file(s) were skipped; the list below says why.")
    return notes_text(notes), table, gallery, rejected, picks


def notes_text(lines: list[str]) -> str:
    return "\n\n".join(lines)


def _set_data(session: Session, data: ImageSet, source: str, sample: str = "") -> tuple:
    train_set, val_set = train_val_split(data, val_fraction=VAL_FRACTION, seed=SPLIT_SEED)
    session.data, session.data_source, session.train_set, session.val_set = data, source, train_set, val_set
    session.data_sample = sample
    session.data_bytes = data.memory_bytes()
    return _data_outputs(session)


def _over_budget_message(err: MemoryBudgetExceeded, limits: StudioLimits) -> str:
    if err.budget >= limits.session_memory_mb * MIB:
        which = (f"the memory one session may use for images ({limits.session_memory_mb:,} MiB, "
                 "--session-memory-mb)")
    else:
        which = (f"the memory left for images on this server ({err.budget / MIB:,.0f} MiB of "
                 f"{limits.memory_mb:,} MiB shared by all sessions, --memory-mb)")
    return (f"Your images do not fit into {which}: the first {err.decoded:,} of {err.total:,} files already take "
            f"more. Images are kept at most {limits.image_side} px per side; upload fewer images, or ask whoever "
            "runs the studio to raise the limit.")


def use_sample(name: str, sessions: SessionStore, request: gr.Request | None) -> tuple:
    """Load one of the bundled samples."""
    session = sessions.get(request)
    if name not in SAMPLES:
        raise StudioError(f"Sample data: unknown sample {name!r}; choose one of {', '.join(SAMPLES)}")
    with sessions.image_budget(session) as budget:
        data = sample_dataset(name)
        if data.memory_bytes() > budget:
            raise StudioError(_over_budget_message(MemoryBudgetExceeded(
                "", budget=budget, decoded=len(data), total=len(data)), sessions.limits))
        return _set_data(session, data, f"the sample '{name}'", sample=name)


def _checked_upload(files: list[str] | None, csv_file: str | None, labels: str, limits: StudioLimits
                    ) -> tuple[list[Path], str | None, bool, int]:
    """(the distinct data files, the label CSV, whether it is a zip, how many listed files were repeats), after
    every check that needs no copy. A file listed more than once (the same upload, so the same path) is used once."""
    paths = list(dict.fromkeys(Path(f) for f in (files or [])))
    repeated = len(files or []) - len(paths)
    if not paths:
        raise StudioError("Upload a .zip or some images first (or press 'Use sample data').")
    if labels not in LABEL_CHOICES:
        raise StudioError(f"Labels from: {labels!r} is not an option; choose one of {', '.join(LABEL_CHOICES)}")
    if len(paths) > limits.max_upload_files:
        raise StudioError(f"{len(paths):,} files were uploaded at once, over the limit of {limits.max_upload_files:,} "
                          "(--max-upload-files); put the images into one .zip instead.")
    csvs = [p for p in paths if p.suffix.lower() == ".csv"]
    paths = [p for p in paths if p.suffix.lower() != ".csv"]
    if csvs and csv_file:
        raise StudioError("Two label CSVs were given; keep one (either in the CSV box or among the files).")
    if len(csvs) > 1:
        raise StudioError(f"{len(csvs)} CSV files were uploaded; give one label CSV with rows path,label.")
    csv_path = csv_file or (str(csvs[0]) if csvs else None)
    zips = [p for p in paths if p.suffix.lower() == ".zip"]
    if zips and len(paths) > 1:
        raise StudioError("Upload either one .zip or image files, not both (put everything into the zip).")
    if not paths:
        raise StudioError("Only a CSV was uploaded; add the images (or a .zip of them) too.")
    if csv_path and labels not in ("auto", "csv"):
        raise StudioError(f"A label CSV was given but 'Labels from' is '{labels}'; choose 'csv' (or 'auto').")
    if not zips and labels == "folders":
        raise StudioError("Labels from folders need a .zip: a browser uploads single images without their "
                          "folders. Zip the class folders and upload the .zip, or name the files "
                          "class_xxx.png ('prefix'), or add a CSV.")
    return paths, csv_path, bool(zips), repeated


def _copy_uploads(paths: list[Path], upload_dir: Path) -> list[Path]:
    """Link (or copy) each upload into `upload_dir`, which the caller deletes; clashing names get a suffix."""
    copies = []
    for path in paths:
        destination = upload_dir / path.name
        if destination.exists():
            destination = upload_dir / f"{path.stem}-{uuid.uuid4().hex[:4]}{path.suffix}"
        try:
            os.link(path, destination)  # no second copy on disk when both sit on one file system
        except OSError:
            shutil.copyfile(path, destination)
        copies.append(destination)
    return copies


def load_data(files: list[str] | None, csv_file: str | None, labels: str, sessions: SessionStore,
              request: gr.Request | None) -> tuple:
    """Load uploaded images: one .zip (labels from its folders, prefixes or a CSV), or many images (labels from
    file-name prefixes or a CSV; a browser upload keeps no folder names)."""
    session = sessions.get(request)
    paths, csv_path, is_zip, repeated = _checked_upload(files, csv_file, labels, sessions.limits)
    # Copy into the session's folder: the upload cache is Gradio's, the session folder is deleted with the session.
    upload_dir = session.workdir / f"upload-{uuid.uuid4().hex[:6]}"
    # Messages and the skipped-files list name files as the user knows them, not by their place on the server.
    hidden_prefix = f"{upload_dir}{os.sep}"
    try:
        upload_dir.mkdir(parents=True)
        copies = _copy_uploads(paths, upload_dir)
        with sessions.image_budget(session) as budget:
            options = dict(csv=csv_path, max_side=sessions.limits.image_side, max_image_bytes=budget)
            if is_zip:
                data = load_dataset(copies[0], labels=labels, **options)
            else:
                mode = labels if labels != "auto" else ("csv" if csv_path else "prefix")
                data = load_dataset([str(p) for p in copies], labels=mode, **options)
            notes = [f"{repeated} file(s) were listed more than once; each was used once"] if repeated else []
            data = dataclasses.replace(
                data, names=[name.replace(hidden_prefix, "") for name in data.names],
                rejected=[dataclasses.replace(r, name=r.name.replace(hidden_prefix, "")) for r in data.rejected],
                warnings=[*data.warnings, *notes])
            names = ", ".join(p.name for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
            return _set_data(session, data, f"your upload ({names})")
    except MemoryBudgetExceeded as err:
        raise StudioError(_over_budget_message(err, sessions.limits)) from err
    except SuperLoRAError as err:
        raise type(err)(str(err).replace(hidden_prefix, "")) from err
    finally:
        shutil.rmtree(upload_dir, ignore_errors=True)  # the images are decoded into memory


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
        _load_checkpoint(target, arch, sessions.limits.max_classes)
    except BaseException:  # a refused file, a full disk, an interrupted request: no copy stays behind
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if session.checkpoint is not None:
        shutil.rmtree(session.checkpoint.parent, ignore_errors=True)
    session.checkpoint, session.checkpoint_arch = target, arch
    return UPLOADED, f"Using your file **{source.name}** ({Path(arch).name})."


# ---------------------------------------------------------------------------------------------- training
def _progress_text(event: Any, best_accuracy: float | None) -> str:
    """A progress bar, then one line: step, loss, time left and the best validation accuracy so far."""
    share = 100 * event.step / event.total_steps if event.total_steps else 0
    return f'<div class="train-bar"><div style="width: {share:.1f}%"></div></div>\n\n' + \
        _progress_line(event, best_accuracy)


def _progress_line(event: Any, best_accuracy: float | None) -> str:
    if event.kind == "start":
        return event.message[:1].upper() + event.message[1:] + "…"
    parts = [f"step {event.step}/{event.total_steps}"]
    if "loss" in event.metrics and event.kind == "step":
        parts.append(f"loss {event.metrics['loss']:.3f}")
    if event.eta_s is not None and event.kind == "step":
        parts.append(f"about {event.eta_s:.0f} s left")
    if best_accuracy is not None:
        parts.append(f"best validation accuracy so far {100 * best_accuracy:.1f} %")
    else:
        parts.append("validation after each epoch")
    return " · ".join(parts)


def _run_steps(train_size: int | None, steps: float, epochs: float, batch_size: float) -> int | None:
    """The optimizer steps a run of these settings takes (None while no data is loaded and epochs are asked)."""
    from superlora.train.sampling import steps_per_epoch

    if not epochs:
        return int(steps)
    if train_size is None or int(batch_size) < 1:
        return None
    return int(epochs) * steps_per_epoch(train_size, int(batch_size))


def _too_many_steps(train_size: int | None, limits: StudioLimits, steps: float, epochs: float, batch_size: float
                    ) -> str | None:
    run_steps = _run_steps(train_size, steps, epochs, batch_size)
    if run_steps is not None and run_steps > limits.max_steps:
        return (f"This run would take {run_steps:,} steps, over the limit of {limits.max_steps:,} per run "
                "(--max-steps); choose fewer steps or epochs.")
    return None


def _train_size(session: Session | None) -> int | None:
    return len(session.train_set) if session is not None and session.train_set is not None else None


def training_refusal(session: Session | None, sessions: SessionStore, steps: float, epochs: float,
                     batch_size: float) -> str | None:
    """Why a new training run may not join the queue (too many steps, or the queue is full), or None."""
    limits = sessions.limits
    too_many = _too_many_steps(_train_size(session), limits, steps, epochs, batch_size)
    if too_many:
        return too_many
    waiting = sessions.waiting_jobs()
    if waiting >= limits.max_queued_jobs:
        return (f"The training queue is full: {waiting} runs are waiting for a slot (at most "
                f"{limits.max_queued_jobs}, --max-queued-jobs). Try again when one has finished.")
    return None


def mark_queued(sessions: SessionStore, request: gr.Request | None) -> Any:
    """Before a training job enters the queue: a fresh stop signal (Stop works while it waits) and a busy button."""
    from superlora.train import StopSignal

    session = sessions.get(request)
    if session.phase == "idle":
        session.stop, session.phase = StopSignal(), "queued"
    return gr.update(interactive=False, value="Training…")


def queue_training(steps: float, epochs: float, batch_size: float, sessions: SessionStore,
                   request: gr.Request | None) -> Any:
    """The Start button's first step: refuse a run that may not join the queue (a message; the button stays as
    it is), else `mark_queued`."""
    session = sessions.get(request)
    refusal = training_refusal(session, sessions, steps, epochs, batch_size) if session.phase == "idle" else None
    if refusal:
        raise StudioError(refusal)
    return mark_queued(sessions, request)


def check_training(model_name: str, preset_name: str, rank: float, alpha: float | None, groups: float,
                   grouping: str, fold: str, order: float, splits: float, factoring: str, projection: str,
                   ratio: float, shuffle: bool, targets: list[str], steps: float, epochs: float, lr: float,
                   batch_size: float, good_class: str | None = AUTO_GOOD_CLASS, *, sessions: SessionStore,
                   request: gr.Request | None = None) -> list[Any]:
    """Gradio's validator of `/train`, run on every route before the job joins the queue: a refusal is shown on
    the Steps control (the page) or raised as a ValidationError (gradio_client). A /call/ request has no session
    hash yet at this point (Gradio gives it one after validation), and no data."""
    session_hash = getattr(request, "session_hash", None)
    session = sessions.peek(session_hash) if session_hash else None
    refusal = training_refusal(session, sessions, steps, epochs, batch_size)
    checks = [gr.validate(True, "")] * len(TRAIN_INPUT_NAMES)
    checks[TRAIN_INPUT_NAMES.index("steps")] = gr.validate(refusal is None, refusal or "")
    return checks


TRAIN_INPUT_NAMES = (*CONTROL_NAMES, "steps", "epochs", "lr", "batch_size", "good_class")


def mark_done(sessions: SessionStore, request: gr.Request | None) -> Any:
    session = sessions.get(request)
    if session.phase == "queued":  # the job failed before it started
        session.phase = "idle"
    return gr.update(interactive=True, value="Start training")


def train_model(model_name: str, preset_name: str, rank: float, alpha: float | None, groups: float, grouping: str,
                fold: str, order: float, splits: float, factoring: str, projection: str, ratio: float,
                shuffle: bool, targets: list[str], steps: float, epochs: float, lr: float, batch_size: float,
                good_class: str | None = AUTO_GOOD_CLASS, *, sessions: SessionStore,
                request: gr.Request | None = None) -> Iterator[tuple]:
    """Train in a worker thread and stream (status, curves, per-class accuracy, confusion matrix). The status
    carries its own progress bar (Gradio's overlay would hide the line under it). The run is written to a new run
    folder in the session's folder; `good_class` ("auto": the library's pick) counts missed defects and false
    alarms. The mistakes and the per-class table of the run come from `/validation`."""
    from superlora.train import StopSignal, TrainOptions, train

    session = sessions.get(request)
    if session.phase == "training":
        raise StudioError("This session is already training; press Stop or wait for it to finish.")
    if session.phase != "queued":  # called through the API, without the button's queued step
        session.stop = StopSignal()
    try:
        if session.stop.requested:
            yield "Stopped before training started.", gr.update(), gr.update(), gr.update()
            return
        if session.train_set is None:
            raise StudioError("Load data first: upload images or press 'Use sample data' on the Data tab.")
        too_many = _too_many_steps(_train_size(session), sessions.limits, steps, epochs, batch_size)
        if too_many:
            raise StudioError(too_many)
        config = config_from_controls(preset_name, rank, alpha, groups, grouping, fold, order, splits, factoring,
                                      projection, ratio, shuffle, targets)
        options = TrainOptions(epochs=int(epochs) if epochs else None, steps=None if epochs else int(steps),
                               lr=float(lr), batch_size=int(batch_size), good_class=_good_class_option(good_class),
                               output_dir=str(session.workdir / f"run-{uuid.uuid4().hex[:8]}"))
        session.phase, session.events = "training", []
        yield from _run_training(session, model_name, config, options, train, sessions.limits.max_classes)
    finally:
        session.phase, session.last_used = "idle", time.monotonic()


def _good_class_option(good_class: str | None) -> str | None:
    """TrainOptions.good_class of the Good-class control: None (the library's pick) for "auto" or nothing."""
    return None if not good_class or good_class == AUTO_GOOD_CLASS else str(good_class)


def _run_info(session: Session) -> dict[str, Any]:
    """What the run folder's config.json records about the data, so that the report can describe it (only a
    sample can be loaded again: uploads are deleted once decoded)."""
    data: dict[str, Any] = {"val_fraction": VAL_FRACTION, "split_seed": SPLIT_SEED, "studio_source": session.data_source}
    if session.data_sample:
        data["source"] = f"sample:{session.data_sample}"  # the form `superlora train --data` reads
    return {"data": data}


def _discard_run(session: Session, run_dir: Path, worker: threading.Thread | None = None) -> None:
    """Delete a run folder that did not become the session's run (failed, or abandoned), once its writer ended."""
    if worker is not None:
        worker.join()
    if session.closed:  # closed while training: the run may have written after the folder was deleted
        shutil.rmtree(session.folder, ignore_errors=True)
    elif session.run_dir != run_dir:
        shutil.rmtree(run_dir, ignore_errors=True)


def _keep_run(session: Session, result: Any, model_name: str) -> None:
    """A finished run becomes the session's: its result and run folder replace the previous ones."""
    previous = session.run_dir
    session.result, session.run_dir = result, result.run_dir
    if previous is not None and previous != result.run_dir:
        shutil.rmtree(previous, ignore_errors=True)
    session.trained_model_source = model_name if model_name != UPLOADED else \
        f"{session.checkpoint.name} ({Path(session.checkpoint_arch).name})"


def _run_training(session: Session, model_name: str, config: SuperLoRAConfig, options: Any, train: Callable,
                  max_classes: int = MAX_CLASSES) -> Iterator[tuple]:
    events: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}
    stop = session.stop
    run_dir = Path(options.output_dir)

    def work() -> None:
        try:
            source = _base_model(model_name, session, max_classes)
            outcome["result"] = train(source, session.train_set, session.val_set, config, options,
                                      callbacks=[events.put], stop=stop, run_info=_run_info(session))
        except Exception as err:  # noqa: BLE001 - handed to the request thread, which shows it
            outcome["error"] = err
        finally:
            events.put(None)

    worker = threading.Thread(target=work, name="studio-train", daemon=True)
    worker.start()
    try:
        yield from _stream_progress(session, events)
    except BaseException:  # the request was abandoned (tab closed): do not leave a run or its files behind
        if worker.is_alive():
            stop.request()
            threading.Thread(target=_discard_run, args=(session, run_dir, worker), daemon=True).start()
        raise
    worker.join()
    try:
        if "error" in outcome:
            error = outcome["error"]
            shown = _training_error(error, model_name)
            if shown is error:
                raise error
            raise shown from error
        _keep_run(session, outcome["result"], model_name)
    finally:
        _discard_run(session, run_dir)
    yield _result_outputs(session)


def _stream_progress(session: Session, events: queue.Queue) -> Iterator[tuple]:
    """(status, curves, unchanged, unchanged) while the run's events arrive, until the worker's None."""
    last_draw, best_accuracy = 0.0, None
    # Clear the previous run's results at once; the model loads before the first event arrives.
    yield '<div class="train-bar"><div style="width: 0%"></div></div>\n\nLoading the model…', None, [], None
    while (event := events.get()) is not None:
        session.events.append(event)
        best_accuracy = event.metrics.get("best_accuracy", best_accuracy)
        # Redraw at most twice a second: the page stays responsive and the socket quiet.
        if time.monotonic() - last_draw > 0.5 or event.kind in ("start", "eval", "done", "stopped"):
            last_draw = time.monotonic()
            yield (_progress_text(event, best_accuracy), viz.curves_figure(session.events), gr.update(),
                   gr.update())


def _training_error(error: Exception, model_name: str) -> Exception:
    """The exception to show for a run that failed: a missing hub model says what to do in the studio."""
    if isinstance(error, CheckpointError) and model_name in HUB_MODELS:
        return StudioError(_missing_weights_message(error))
    if isinstance(error, (SuperLoRAError, gr.Error)):
        return error
    return _unexpected(error)


def _missing_weights_message(error: CheckpointError) -> str:
    """The library's reason (its advice is for Python users), then what to do in the studio."""
    reason = str(error).split(". Offline", 1)[0]
    return (f"{reason}. In the studio: pick {DEFAULT_MODEL} or a local folder in the model list, or upload the "
            "weights file under '…or upload your own model file' (Model & adapter tab).")


def _result_outputs(session: Session) -> tuple:
    result = session.result
    accuracy = "n/a (no validation run)" if result.best_accuracy is None else f"{100 * result.best_accuracy:.1f} %"
    ending = "Stopped" if result.stopped else "Done"
    loss = result.metrics.get("loss")
    details = f" · validation loss {loss:.3f}" if loss is not None else ""
    best = f" (the adapter of step {result.best_step} is kept)" if result.best_step is not None else ""
    status = (f"**{ending}** after {result.steps} steps · best validation accuracy **{accuracy}**{details}{best}. "
              "Next: look at ΔW (tab 4) or try an image (tab 5).")
    per_class = [[name, "n/a" if acc is None else f"{100 * acc:.1f} %"]
                 for name, acc in result.per_class_accuracy.items()]
    confusion = viz.confusion_figure(result.confusion, result.classes) if result.confusion else None
    return status, viz.curves_figure(session.events), per_class, confusion


def stop_training(sessions: SessionStore, request: gr.Request | None) -> str:
    """Ask this session's queued or running training job to stop (within one step; the result is kept)."""
    session = sessions.get(request)
    if session.stop is not None and session.phase in ("queued", "training"):
        session.stop.request()
        reply = "Stopping after the current step…"
    else:
        reply = "Nothing is training."
    # A toast, not the status line: this reply may arrive after the run's last status and must not replace it.
    gr.Info(reply, duration=4)
    return reply


# ---------------------------------------------------------------------------------------------- validation
def _finished_run(session: Session) -> Path:
    if session.result is None or session.run_dir is None or not session.run_dir.is_dir():
        raise StudioError("Train a model first (Train tab): the mistakes, the per-class table and the report are "
                          "made from the run's saved files.")
    return session.run_dir


def show_validation(good_class: str | None, sessions: SessionStore, request: gr.Request | None
                    ) -> tuple[list[tuple[Any, str]], list[list[Any]], str]:
    """The last run's validation results, read from its run folder: the mistakes as (image, caption) pairs, most
    confident first (at most MAX_SHOWN_MISTAKES); the per-class precision / recall / F1 table with support, TP,
    FP and FN; and the missed-defect / false-alarm sentence. `good_class` recounts the last two numbers with
    another good class ("auto" or empty: the one the run used)."""
    session = sessions.get(request)
    run_dir = _finished_run(session)
    view = validation_view(run_dir, session.val_set.images if session.val_set is not None else None,
                           good_class=_good_class_option(good_class))
    if view is None:
        return [], [], "No validation results: the run stopped before its first evaluation."
    count, total = view.record.get("mistake_count", len(view.mistakes)), view.record.get("count", 0)
    lines = [f"**{count} of {total} validation images misclassified.** {_sentence(view.quality)}"]
    if len(view.mistakes) > MAX_SHOWN_MISTAKES:
        lines.append(f"The {MAX_SHOWN_MISTAKES} most confident mistakes are shown; the report (Export tab) has "
                     "up to 100 and lists the rest by name.")
    lines += [_sentence(note) for note in view.notes]
    return view.mistakes[:MAX_SHOWN_MISTAKES], view.class_rows, notes_text(lines)


def recount_validation(good_class: str | None, sessions: SessionStore, request: gr.Request | None) -> tuple:
    """The Good-class control changed: show the last run's results with it (nothing changes before a run)."""
    session = sessions.get(request)
    if session.result is None or session.run_dir is None or session.phase != "idle":
        return gr.update(), gr.update(), gr.update()
    return show_validation(good_class, sessions, request)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if not text or text.endswith(".") else ".")


def good_class_choices(sessions: SessionStore, request: gr.Request | None) -> Any:
    """The Good-class control's choices: "auto" and the loaded data's classes (back to "auto" on new data)."""
    session = sessions.get(request)
    classes = list(session.data.classes) if session.data is not None else []
    return gr.update(choices=_good_class_items(classes), value=AUTO_GOOD_CLASS)


def _good_class_items(classes: list[str]) -> list[tuple[str, str]]:
    return [("auto (the class named ok, good, pass or normal)", AUTO_GOOD_CLASS), *((name, name) for name in classes)]


def export_report(good_class: str | None, sessions: SessionStore, request: gr.Request | None) -> str:
    """The one-page HTML report of the last run (`superlora.report.write_report` on its run folder), replacing
    the previous one. `good_class` as for `/validation`."""
    session = sessions.get(request)
    run_dir = _finished_run(session)
    return str(write_report(run_dir, run_dir / "superlora-report.html", good_class=_good_class_option(good_class)))


# ---------------------------------------------------------------------------------------------- inspect / try
def _trained(session: Session) -> Any:
    if session.result is None:
        raise StudioError("Train a model first (Train tab).")
    return session.result


def inspect_deltas(target: str | None, sessions: SessionStore, request: gr.Request | None) -> tuple:
    """Per-layer ΔW figures of the trained adapter: ‖ΔW‖ per block and target, spectra, and one heatmap."""
    result = _trained(sessions.get(request))
    deltas = result.model.delta_weights()
    names = list(deltas)
    chosen = target if target in deltas else names[0]
    norms = {name: float(delta.norm()) for name, delta in deltas.items()}
    largest = max(norms, key=norms.get)
    note = (f"{len(names)} weights were updated; the largest change is in **{largest}** "
            f"(‖ΔW‖_F = {norms[largest]:.3g}). Pick a target below to see its ΔW entry by entry.")
    return (note, gr.update(choices=names, value=chosen), viz.delta_norms_figure(deltas), viz.spectra_figure(deltas),
            viz.delta_heatmap(deltas[chosen], chosen))


def _open_image(image: Any, max_side: int | None = None) -> Image.Image:
    """A Try-it image through the library's decoder and its checks: a file path, or the page's unprocessed
    upload (a dict whose "path" Gradio has checked lies in its upload folder)."""
    path = image.get("path") if isinstance(image, dict) else image
    if not path:
        raise StudioError("Upload an image to classify, or pick one of the validation images.")
    try:
        return decode_image(path, max_side=max_side)
    except ImageRejected as err:
        raise StudioError(f"That file cannot be classified: {err.reason}.") from err
    except OSError as err:
        raise StudioError(f"That file cannot be read ({err.strerror or err}).") from err


def predict_image(image: Any, top_k: float, sessions: SessionStore, request: gr.Request | None
                  ) -> dict[str, float]:
    """Top-k classes with probabilities for one image (a file path, the page's upload, or a PIL image)."""
    from superlora.inference import input_config, predict

    session = sessions.get(request)
    if image is None:
        raise StudioError("Upload an image to classify, or pick one of the validation images.")
    picture = image if isinstance(image, Image.Image) else _open_image(image, sessions.limits.image_side)
    result = _trained(session)
    (ranked,) = predict(result.model, [picture], input_config(result.model), result.classes, top_k=int(top_k))
    return dict(ranked)


def pick_validation_image(top_k: float, sessions: SessionStore, request: gr.Request | None,
                          selected: gr.SelectData) -> tuple[Any, dict[str, float]]:
    """A validation image picked in the gallery: show it and classify it."""
    session = sessions.get(request)
    if session.val_set is None:
        raise StudioError("Load data first (Data tab).")
    picks = []
    for index in range(len(session.data.classes)):
        members = [i for i, label in enumerate(session.val_set.labels) if label == index]
        picks += members[:VALIDATION_PICKS_PER_CLASS]
    image = session.val_set.images[picks[selected.index]]
    return image, predict_image(image, top_k, sessions, request)


def export_model(formats: list[str], sessions: SessionStore, request: gr.Request | None) -> list[str]:
    """Write the chosen formats and return downloadable files (folders are zipped)."""
    from superlora.export import export

    session = sessions.get(request)
    result = _trained(session)
    formats = list(formats or [])
    if not formats:
        raise StudioError("Tick at least one format to export.")
    folder = session.workdir / f"export-{uuid.uuid4().hex[:6]}"
    try:
        files = _export_files(export(result.model, folder, formats, classes=result.classes,
                                     metadata={"base_model": session.trained_model_source}), folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    # The new export replaces the previous one (Gradio keeps its own copy of what was downloaded).
    if session.export_dir is not None:
        shutil.rmtree(session.export_dir, ignore_errors=True)
    session.export_dir = folder
    return files


def _export_files(written: dict[str, Any], folder: Path) -> list[str]:
    """The downloadable files of an export: files as they are, folders zipped into `folder`."""
    files = []
    for name, item in written.items():
        path = Path(getattr(item, "path", item))
        if path.is_dir():
            archive = folder / f"superlora-{name}.zip"
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
                for member in sorted(path.rglob("*")):
                    zf.write(member, Path(f"superlora-{name}") / member.relative_to(path))
            files.append(str(archive))
        else:
            files.append(str(path))
    return files


def export_help(formats: list[str], sessions: SessionStore, request: gr.Request | None) -> str:
    """How to use what was just exported, in a few lines of Python."""
    base = sessions.get(request).trained_model_source
    lines = ["**Using the files** (unzip them first):"]
    if "adapter" in (formats or []):
        lines.append(f"- adapter: `superlora.inference.load_trained('superlora-adapter', model={base!r})"
                     ".predict(['photo.jpg'])`; it holds only the adapter and the head, so it needs the base model.")
    if "merged" in (formats or []):
        lines.append("- merged: the base model with the update merged in, a plain checkpoint: "
                     "`superlora.base_models.load_model('superlora-merged')` (or timm, see its config.json).")
    if "onnx" in (formats or []):
        lines.append("- onnx: for onnxruntime and other runtimes; input `pixel_values` (normalised as in the model's "
                     "data config, stored in the file's metadata with the class names), output `logits`.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- app config
CONFIG_KEYS = ("model_name", "preset_name", "rank", "alpha", "groups", "grouping", "fold", "order", "splits",
               "factoring", "projection", "ratio", "shuffle", "targets", "steps", "epochs", "lr", "batch_size",
               "sample", "labels", "top_k", "formats")


def save_app_config(values: dict[str, Any], sessions: SessionStore, request: gr.Request | None) -> str:
    """Write every control's value to a JSON file for download."""
    session = sessions.get(request)
    data = {"studio_config_version": STUDIO_CONFIG_VERSION, **values}
    path = session.workdir / "superlora-studio-config.json"
    atomic_write(path, lambda temporary: Path(temporary).write_text(json.dumps(data, indent=2) + "\n"))
    return str(path)


def check_app_config(file: str | None, components: dict[str, Any]) -> list[Any]:
    """The control values of a JSON file written by save_app_config, checked against each control."""
    if not file:
        return [gr.update() for _ in components]
    try:
        data = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StudioError(f"That file is not a studio settings file (JSON): {err}") from err
    if not isinstance(data, dict) or data.get("studio_config_version") != STUDIO_CONFIG_VERSION:
        raise StudioError("That file is not a settings file saved by this studio "
                          f"(no \"studio_config_version\": {STUDIO_CONFIG_VERSION}).")
    unknown = sorted(set(data) - set(components) - {"studio_config_version"})
    if unknown:
        raise StudioError(f"Unknown settings in the file: {', '.join(unknown)}; known ones are "
                          f"{', '.join(components)}")
    values = []
    for name, component in components.items():
        if name not in data:
            values.append(gr.update())
            continue
        values.append(_checked_value(name, data[name], component))
    return values


def _checked_value(name: str, value: Any, component: Any) -> Any:
    problem = None
    if isinstance(component, gr.Slider):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or \
                not component.minimum <= value <= component.maximum:
            problem = f"must be a number from {component.minimum} to {component.maximum}"
    elif isinstance(component, (gr.Dropdown, gr.Radio, gr.CheckboxGroup)):
        allowed = [choice[1] if isinstance(choice, tuple) else choice for choice in component.choices]
        items = value if isinstance(component, gr.CheckboxGroup) and isinstance(value, list) else [value]
        if isinstance(component, gr.CheckboxGroup) and not isinstance(value, list):
            problem = "must be a list"
        elif any(item not in allowed for item in items):
            problem = f"must be one of {', '.join(map(str, allowed))}"
    elif isinstance(component, gr.Checkbox):
        if not isinstance(value, bool):
            problem = "must be true or false"
    elif isinstance(component, gr.Number):
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            problem = "must be a number"
    if problem:
        raise StudioError(f"Settings file: {name}={value!r} {problem}.")
    return value


# ---------------------------------------------------------------------------------------------- layout
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


def _good_class_control() -> gr.Dropdown:
    # Custom values: the choices follow each session's data, which Gradio's own check of API inputs does not see.
    return gr.Dropdown(_good_class_items([]), value=AUTO_GOOD_CLASS, label="Good (defect-free) class",
                       allow_custom_value=True,
                       info="counts missed defects (defects predicted good) and false alarms (good parts flagged)",
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


def _report_widgets() -> tuple[gr.Button, gr.File]:
    gr.Markdown("**A one-page report to share**: data, model and adapter, settings, curves, per-class results, "
                "missed defects and false alarms, the confusion matrix and the mistakes, in one HTML file that "
                "opens offline.")
    with gr.Row():
        button = gr.Button("Report (HTML)", elem_id="report-button")
        file = gr.File(label="Report", elem_id="report-file")
    return button, file


def _wire_results(bind: Callable, start: Any, training: Any, good_class: Any, validation_outputs: list[Any],
                  report_button: Any, report_file: Any) -> None:
    """After a run: its validation results (also `/validation`), recounted when the good class changes; the report
    download (`/report`). A new run clears the previous run's results at once."""
    start.click(lambda: ([], [], ""), None, validation_outputs, queue=False, api_name=False, show_progress="hidden")
    training.then(bind(show_validation), [good_class], validation_outputs, api_name="validation")
    good_class.input(bind(recount_validation), [good_class], validation_outputs, api_name=False)
    report_button.click(bind(export_report), [good_class], [report_file], api_name="report")


def build_app(max_training_jobs: int = 1, extra_models: tuple[str, ...] = (),
              sessions: SessionStore | None = None, limits: StudioLimits | None = None) -> gr.Blocks:
    """The studio's Blocks. `max_training_jobs` bounds concurrent training runs across all sessions (others
    wait in the queue); `extra_models` are local model folders (written by `superlora.base_models.save_model`) offered
    first; `limits` bound what sessions may hold and start (ignored when `sessions` is given). The returned
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
    values = [value for _, value in models]
    default_model = extra_models[0] if extra_models else (DEFAULT_MODEL if DEFAULT_MODEL in values else values[0])
    # Not a daemon: interrupting start-up waits for it instead of killing torch mid-call (an abort).
    threading.Thread(target=_warm_up, args=(default_model,), name="studio-warm-up").start()

    def bind(fn: Callable) -> Callable:
        return session_endpoint(fn, sessions)

    with gr.Blocks(title="SuperLoRA studio", delete_cache=(1800, 3600)) as app:
        gr.Markdown(INTRO)
        with gr.Tab("1 · Model & adapter", id="model"):
            with gr.Row():
                with gr.Column(scale=2):
                    model = gr.Dropdown(models, value=default_model, label="Base model", elem_id="model")
                    model_note = gr.Markdown(elem_id="model-note", label="About the model")
                    with gr.Accordion("…or upload your own model file", open=False):
                        checkpoint_arch = gr.Dropdown(architecture_choices(extra_models), value=DEFAULT_MODEL,
                                                      label="Architecture of the file")
                        checkpoint = gr.File(label="Model weights (.safetensors, or a .pth/.bin state dict)",
                                             file_types=[".safetensors", ".pth", ".bin", ".pt"], type="filepath")
                    preset_name = gr.Dropdown([(f"{k} — {PRESET_DESCRIPTIONS[k].split(':')[0]}", k) for k in PRESETS],
                                              value="lorta", label="Method (preset)", elem_id="preset")
                    preset_note = gr.Markdown(_preset_note("lorta"))
                    targets = gr.CheckboxGroup(list(TARGET_CHOICES), value=["q", "v"],
                                               label="Adapt these weights (in every block)", elem_id="targets")
                    rank = gr.Slider(1, 64, value=4, step=1, label="Rank r", elem_id="rank")
                    with gr.Row():
                        groups = gr.Slider(0, 64, value=1, step=1, label="Groups G (0 = one per weight)",
                                           elem_id="groups")
                        grouping = gr.Radio(["contiguous", "layer"], value="contiguous", label="Grouping",
                                            elem_id="grouping")
                    with gr.Row():
                        fold = gr.Dropdown(list(FOLD_CHOICES), value="auto", label="Fold")
                        order = gr.Slider(2, 6, value=3, step=1, label="Tensor order M")
                        splits = gr.Slider(1, 4, value=1, step=1, label="Kronecker splits K")
                    with gr.Row():
                        factoring = gr.Dropdown(list(FACTORING_CHOICES), value="tucker", label="Factoring")
                        projection = gr.Dropdown(list(PROJECTION_CHOICES), value="none", label="Projection")
                        ratio = gr.Slider(0.001, 1.0, value=1.0, step=0.001, label="Projection ratio ρ")
                    with gr.Row():
                        shuffle = gr.Checkbox(False, label="Shuffle entries across layers")
                        alpha = gr.Number(0, label="α (scale numerator; 0 = same as rank)", minimum=0)
                with gr.Column(scale=3):
                    config_error = gr.Markdown(elem_id="config-error")
                    count_md = gr.Markdown(elem_id="count-panel")
                    count_json = gr.JSON(visible=False, label="result")
                    budget_plot = gr.Plot(label="Budget: adapter parameters against rank", elem_id="budget-plot")
            layout_plot = gr.Plot(label="Layout: which group produces each update entry", elem_id="layout-plot")
            with gr.Accordion("Save or load all settings (JSON)", open=False):
                with gr.Row():
                    save_config = gr.Button("Save settings")
                    load_config = gr.UploadButton("Load settings…", file_types=[".json"], type="filepath")
                    config_file = gr.File(label="Settings file", type="filepath", interactive=False)

        with gr.Tab("2 · Data", id="data"):
            with gr.Row():
                with gr.Column(scale=3):
                    uploads = gr.File(label="A .zip of class folders, or many images named class_xxx.png",
                                      file_count="multiple", type="filepath", elem_id="uploads")
                    with gr.Row():
                        csv_file = gr.File(label="Optional label CSV (rows: path,label)", file_types=[".csv"],
                                           type="filepath")
                        labels = gr.Radio(list(LABEL_CHOICES), value="auto", label="Labels from",
                                          info="auto: folders in a zip, else file-name prefixes, or the CSV")
                    load_button = gr.Button("Load my images", variant="primary")
                with gr.Column(scale=2):
                    sample = gr.Dropdown([(f"{k}: {v}", k) for k, v in SAMPLES.items()], value="inspection",
                                         label="…or start with sample data")
                    sample_button = gr.Button("Use sample data", elem_id="use-sample")
            data_summary = gr.Markdown(elem_id="data-summary", label="Summary")
            with gr.Row():
                class_table = gr.Dataframe(headers=["class", "images", "train", "validation"], label="Classes",
                                           interactive=False, elem_id="class-table")
                rejected = gr.Dataframe(headers=["file", "why it was skipped"], label="Skipped files",
                                        interactive=False, elem_id="rejected")
            gallery = gr.Gallery(label="Examples: one row per class", columns=THUMBNAILS_PER_CLASS, height="auto",
                                 object_fit="contain", allow_preview=True, elem_id="thumbnails")

        with gr.Tab("3 · Train", id="train"):
            with gr.Row():
                steps = gr.Slider(1, 2000, value=150, step=1, label="Steps", elem_id="steps")
                epochs = gr.Slider(0, 50, value=0, step=1, label="Epochs (0 = use steps)")
                lr = gr.Number(3e-3, label="Learning rate (adapter)", minimum=0)
                batch_size = gr.Slider(1, 128, value=32, step=1, label="Batch size", elem_id="batch-size")
            good_class = _good_class_control()
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="start")
                stop = gr.Button("Stop", variant="stop", elem_id="stop")
            train_status = gr.Markdown("Load data (tab 2), then press Start.", elem_id="train-status",
                                       label="Status")
            stop_reply = gr.Markdown(visible=False, label="Reply")
            curves = gr.Plot(label="Loss and accuracy", elem_id="curves")
            with gr.Row():
                per_class = gr.Dataframe(headers=["class", "validation accuracy"], label="Per class",
                                         interactive=False)
                confusion = gr.Plot(label="Confusion matrix", elem_id="confusion")
            validation_outputs = _validation_widgets()

        with gr.Tab("4 · Inspect ΔW", id="inspect"):
            inspect_button = gr.Button("Show the update of every layer", elem_id="inspect-button")
            inspect_note = gr.Markdown(elem_id="inspect-note", label="Summary")
            norms_plot = gr.Plot(label="‖ΔW‖ per block and target", elem_id="norms-plot")
            spectra_plot = gr.Plot(label="Singular values per target")
            target_pick = gr.Dropdown([], label="Target", allow_custom_value=False)
            heatmap_plot = gr.Plot(label="ΔW of one target")

        with gr.Tab("5 · Try it", id="try"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(type="filepath", label="An image to classify", elem_id="try-image",
                                     sources=["upload", "clipboard"], height=280)
                    picks = gr.Gallery(label="…or pick a validation image (caption: its true class)", columns=4,
                                       height=300, allow_preview=False, elem_id="picks")
                with gr.Column():
                    top_k = gr.Slider(1, 10, value=3, step=1, label="Top k")
                    predict_button = gr.Button("Classify", variant="primary", elem_id="classify")
                    prediction = gr.Label(label="Prediction", elem_id="prediction")
            image_file = gr.File(visible=False, type="filepath")  # the API's input: any file, checked by us

        with gr.Tab("6 · Export", id="export"):
            formats = gr.CheckboxGroup(list(EXPORT_CHOICES), value=["adapter"], label="Formats",
                                       info="adapter: a few KB, needs superlora and the base model · merged: a "
                                            "plain timm checkpoint · onnx: for deployment")
            export_button = gr.Button("Export", variant="primary", elem_id="export-button")
            downloads = gr.File(label="Downloads", file_count="multiple", elem_id="downloads")
            export_note = gr.Markdown(elem_id="export-note")
            report_button, report_file = _report_widgets()

        # ------------------------------------------------------------------ events
        adapter_controls = [preset_name, rank, alpha, groups, grouping, fold, order, splits, factoring, projection,
                            ratio, shuffle, targets]
        controls = [model, *adapter_controls]

        counted = with_parameters(show_count, CONTROL_NAMES, sessions)
        drawn = with_parameters(show_figures, CONTROL_NAMES, sessions)

        # One listener for all controls: while a count runs, only the latest change waits (always_last).
        gr.on([c.change for c in controls], counted, controls, [count_md, config_error], queue=False,
              show_progress="hidden", trigger_mode="always_last", api_name=False).then(
            drawn, controls, [budget_plot, layout_plot], show_progress="hidden", trigger_mode="always_last",
            api_name=False)
        preset_name.input(preset_controls, [preset_name],
                          [groups, grouping, fold, order, splits, factoring, projection, ratio, shuffle, preset_note],
                          api_name=False, queue=False)
        gr.Button(visible=False).click(user_errors(preset_settings), [preset_name], [count_json], api_name="preset")
        model.change(bind(describe_model), [model], [model_note], queue=False, api_name=False)
        app.load(counted, controls, [count_md, config_error], api_name=False).then(
            drawn, controls, [budget_plot, layout_plot], api_name=False)
        app.load(bind(describe_model), [model], [model_note], api_name=False)  # may wait for list_models once
        gr.Button(visible=False).click(with_parameters(count_endpoint, CONTROL_NAMES, sessions), controls,
                                       [count_json], api_name="count_parameters")
        checkpoint.upload(bind(upload_checkpoint), [checkpoint, checkpoint_arch], [model, model_note],
                          api_name="upload_checkpoint")

        data_outputs = [data_summary, class_table, gallery, rejected, picks]
        for loaded in (sample_button.click(bind(use_sample), [sample], data_outputs, api_name="use_sample"),
                       load_button.click(bind(load_data), [uploads, csv_file, labels], data_outputs,
                                         api_name="load_data")):
            loaded.then(counted, controls, [count_md, config_error], api_name=False)
            loaded.then(bind(good_class_choices), None, [good_class], queue=False, api_name=False)

        train_inputs = [*controls, steps, epochs, lr, batch_size, good_class]
        training = start.click(bind(queue_training), [steps, epochs, batch_size], [start], queue=False,
                               api_name=False).then(
            bind(train_model), train_inputs, [train_status, curves, per_class, confusion], api_name="train",
            concurrency_limit=max_training_jobs, concurrency_id="training", show_progress_on=[train_status],
            validator=bind(check_training))
        # Gradio 6.31's page runs `.then` listeners only after success (not "regardless"), so failure is listed too.
        training.then(bind(mark_done), None, [start], queue=False, api_name=False)
        training.failure(bind(mark_done), None, [start], queue=False, api_name=False)
        _wire_results(bind, start, training, good_class, validation_outputs, report_button, report_file)
        stop.click(bind(stop_training), None, [stop_reply], api_name="stop", concurrency_limit=None,
                   show_progress="hidden")

        inspect_outputs = [inspect_note, target_pick, norms_plot, spectra_plot, heatmap_plot]
        inspect_button.click(bind(inspect_deltas), [target_pick], inspect_outputs, api_name="inspect")
        target_pick.input(bind(inspect_deltas), [target_pick], inspect_outputs, api_name=False)
        # Unprocessed: the image reaches the studio's decoder as the uploaded file, not decoded by Gradio.
        predict_button.click(bind(predict_image), [image, top_k], [prediction], api_name=False, preprocess=False)
        image.upload(bind(predict_image), [image, top_k], [prediction], api_name=False, preprocess=False)
        picks.select(bind(pick_validation_image), [top_k], [image, prediction], api_name=False)
        gr.Button(visible=False).click(bind(predict_image), [image_file, top_k], [prediction], api_name="predict")
        export_button.click(bind(export_model), [formats], [downloads], api_name="export").success(
            bind(export_help), [formats], [export_note], api_name=False)

        saved = dict(zip(CONFIG_KEYS, [*controls, steps, epochs, lr, batch_size, sample, labels, top_k, formats]))

        save_config.click(with_parameters(save_app_config, CONFIG_KEYS, sessions), list(saved.values()),
                          [config_file], api_name="save_config")
        load_config.upload(user_errors(functools.partial(check_app_config, components=saved)), [load_config],
                           list(saved.values()), api_name="load_config")
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


def launch(host: str = "127.0.0.1", port: int | None = None, share: bool = False, max_training_jobs: int = 1,
           max_upload_mb: int = 200, extra_models: tuple[str, ...] = (), prevent_thread_lock: bool = False,
           quiet: bool = False, limits: StudioLimits | None = None) -> gr.Blocks:
    """Build and start the studio. Binds to 127.0.0.1 unless told otherwise; sharing is off by default.

    Uploads larger than `max_upload_mb` are refused by the server before they reach the studio. Only calls that
    belong to a session are served: `api_open=False` makes Gradio refuse `/gradio_api/run/` for every queued
    endpoint, so training always passes the queue and its limit.
    """
    app = build_app(max_training_jobs=max_training_jobs, extra_models=extra_models, limits=limits)
    app.queue(default_concurrency_limit=4, api_open=False)
    app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=prevent_thread_lock,
               max_file_size=f"{max_upload_mb}mb", quiet=quiet, show_error=True, footer_links=["api"],
               ssr_mode=False, css=CSS,
               app_kwargs={"middleware": [Middleware(HeartbeatWatch, sessions=app.sessions)]})
    return app
