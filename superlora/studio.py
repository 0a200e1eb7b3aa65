"""The studio: a Gradio app in which someone who never read the code fine-tunes a ViT with SuperLoRA.

A thin shell over the library: every number, figure, training run, prediction and export comes from the same
functions the CLI and notebooks call (`count_parameters`, `superlora.viz`, `superlora.data`, `train`,
`predict`, `export`). This module only turns widget values into those calls and their results into widgets.

Each browser session owns a `Session` (its data, its trained model, its temporary folder); nothing is shared
between sessions except read-only caches of model skeletons for counting. Named API endpoints
(`count_parameters`, `use_sample`, `load_data`, `train`, `stop`, `predict`, `export`, ...) let `gradio_client`
drive the same functions.
"""

from __future__ import annotations

import functools
import json
import queue
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import plotly.graph_objects as go
from torch import nn

from superlora import viz
from superlora.config import PRESET_DESCRIPTIONS, PRESETS, SuperLoRAConfig, preset
from superlora.counting import ParameterCount, count_parameters
from superlora.data import SAMPLES, ImageSet, load_dataset, sample_dataset, train_val_split
from superlora.errors import SuperLoRAError
from superlora.models import DEFAULT_MODEL, create_meta_model, list_models, load_model
from superlora.targets import resolve_targets

# What the target checkboxes mean on a timm ViT (q/k/v are the row blocks of the fused qkv layer).
TARGET_CHOICES = {"q": "q", "k": "k", "v": "v", "proj": "attn.proj", "mlp": "mlp"}
FACTORING_CHOICES = {"lora": "lora", "tucker": "tucker", "hadamard": "hadamard", "full": "full",
                     "full ⊗ lora": ("full", "lora")}
FOLD_CHOICES = ("native", "stack", "auto")
PROJECTION_CHOICES = ("none", "fastfood", "gaussian")
UPLOADED = "uploaded checkpoint"
DEFAULT_NUM_CLASSES = 4
THUMBNAILS_PER_CLASS = 6
STUDIO_CONFIG_VERSION = 1


class StudioError(SuperLoRAError):
    """Something a studio user did that cannot work (e.g. training before any data is loaded)."""


# ---------------------------------------------------------------------------------------------- sessions
@dataclass
class Session:
    """Everything one browser session owns. Its folder is deleted when the session ends."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="superlora-studio-")))
    checkpoint: Path | None = None  # an uploaded base model file
    checkpoint_arch: str = ""  # its architecture (a timm name or the bundled default's)
    data: ImageSet | None = None
    data_source: str = ""
    train_set: ImageSet | None = None
    val_set: ImageSet | None = None
    result: Any = None  # TrainResult of the last run
    trained_model_source: str = ""
    events: list[Any] = field(default_factory=list)
    stop: Any = None
    training: bool = False

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def _session(value: Session | None) -> Session:
    return value if isinstance(value, Session) else Session()


def close_session(value: Session | None) -> None:
    if isinstance(value, Session):
        if value.stop is not None:
            value.stop.request()
        value.close()


# ---------------------------------------------------------------------------------------------- models
def model_choices(extra_models: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(label, value) pairs: local model folders given at start-up, the bundled default, then the timm names
    (marked when their weights are not cached), then the upload option."""
    choices = [(f"{Path(path).name} (local folder)", str(path)) for path in extra_models]
    for info in list_models():
        note = "bundled" if info.source == "bundled" else ("cached" if info.available_offline else "needs download")
        choices.append((f"{info.name} ({note})", info.name))
    return choices + [(UPLOADED, UPLOADED)]


@functools.lru_cache(maxsize=16)
def _skeleton(name: str, num_classes: int) -> nn.Module:
    """The model's architecture on the meta device: counting needs shapes only, so ViT-H costs nothing."""
    return create_meta_model(name, num_classes=num_classes)


def _base_model(model_name: str, session: Session) -> str | nn.Module:
    """What `train` gets: a registry name, or a freshly loaded uploaded checkpoint (train adapts it in place)."""
    if model_name == UPLOADED:
        if session.checkpoint is None:
            raise StudioError("upload a model file first (Model & adapter tab), or pick a model from the list")
        return load_model(str(session.checkpoint), arch=session.checkpoint_arch)
    return model_name


def _counting_model(model_name: str, session: Session, num_classes: int) -> nn.Module:
    if model_name == UPLOADED:
        if session.checkpoint is None:
            raise StudioError("upload a model file first, or pick a model from the list")
        # Counting needs shapes only: the uploaded file's architecture, built on the meta device.
        return _skeleton(session.checkpoint_arch, num_classes)
    return _skeleton(model_name, num_classes)


def _num_classes(session: Session) -> int:
    return len(session.data.classes) if session.data is not None else DEFAULT_NUM_CLASSES


# ---------------------------------------------------------------------------------------------- configs
def config_from_controls(preset_name: str, rank: int, alpha: float | None, groups: int, grouping: str, fold: str,
                         order: int, splits: int, factoring: str, projection: str, ratio: float, shuffle: bool,
                         targets: list[str], seed: int = 0) -> SuperLoRAConfig:
    """The SuperLoRAConfig the controls describe (ConfigError names the control that is wrong)."""
    patterns = tuple(TARGET_CHOICES[t] for t in (targets or []) if t in TARGET_CHOICES)
    if not patterns:
        raise StudioError("tick at least one target (q, k, v, proj or mlp)")
    return preset(
        preset_name,
        targets=patterns,
        rank=int(rank),
        alpha=float(alpha) if alpha else None,
        groups=int(groups),
        grouping=grouping,
        fold=fold,
        order=int(order),
        splits=int(splits),
        factoring=FACTORING_CHOICES.get(factoring, factoring),
        projection=projection,
        ratio=float(ratio) if projection != "none" else 1.0,
        shuffle=bool(shuffle),
        seed=int(seed),
    )


def preset_controls(preset_name: str, model_name: str, targets: list[str], session: Session | None) -> tuple:
    """Control values that reproduce a preset on the chosen model (groups = number of targets when per-target)."""
    session = _session(session)
    settings = PRESETS[preset_name]
    base = SuperLoRAConfig(**{**settings, "targets": ("q", "v")})
    try:
        count = _count(model_name, preset_name, targets, session)
        num_targets = len(count.targets)
    except SuperLoRAError:
        num_targets = 24
    groups = num_targets if settings.get("groups") == "per-target" else base.groups
    factoring = next((label for label, value in FACTORING_CHOICES.items() if value == base.factoring), "lora")
    return (gr.update(value=groups, maximum=max(num_targets, 1)), base.grouping, base.fold,
            base.fold_order, base.splits, factoring, "none", 1.0, False, PRESET_DESCRIPTIONS[preset_name])


def _count(model_name: str, preset_name: str, targets: list[str], session: Session) -> ParameterCount:
    """LoRA-style count used only to learn the number of targets for the groups slider."""
    model = _counting_model(model_name, session, _num_classes(session))
    patterns = tuple(TARGET_CHOICES[t] for t in targets if t in TARGET_CHOICES) or ("q", "v")
    return count_parameters(model, preset("lora", targets=patterns), trainable=("head",))


def format_count(count: ParameterCount) -> str:
    """The live panel: adapter, head, total, share of the model, factor vs LoRA r=1, adapter file size."""
    size = count.adapter_bytes
    size_text = f"{size / 1024:.1f} KiB" if size < 1024**2 else f"{size / 1024**2:.2f} MiB"
    factor = count.factor_vs_lora_r1
    factor_text = f"{factor:.1f}× fewer than" if factor >= 1 else f"{1 / factor:.1f}× more than"
    return "\n".join([
        "| | parameters |",
        "|---|---:|",
        f"| **adapter (trainable)** | **{count.adapter:,}** |",
        f"| classifier head (trainable) | {count.trainable_modules:,} |",
        f"| total trainable | {count.total_trainable:,} |",
        f"| share of the model | {count.percent_of_model:.3f} % |",
        f"| LoRA r=1 on the same targets | {count.lora_r1:,} ({factor_text} it) |",
        f"| adapter file (float32) | {size_text} |",
        "",
        f"{len(count.targets)} target matrices, {count.update_size:,} update entries, {len(count.groups)} group(s).",
    ])


def count_panel(model_name: str, preset_name: str, rank: int, alpha: float | None, groups: int, grouping: str,
                fold: str, order: int, splits: int, factoring: str, projection: str, ratio: float, shuffle: bool,
                targets: list[str], session: Session | None) -> tuple[str, str, dict]:
    """(count markdown, error markdown, count as a dict). Never raises for a bad combination: it shows it."""
    session = _session(session)
    try:
        config = config_from_controls(preset_name, rank, alpha, groups, grouping, fold, order, splits, factoring,
                                      projection, ratio, shuffle, targets)
        model = _counting_model(model_name, session, _num_classes(session))
        count = count_parameters(model, config, trainable=("head",))
    except SuperLoRAError as err:
        return gr.update(), f"⚠️ {err}", {"error": str(err)}
    return format_count(count), "", {**count.as_dict(), "config": config.to_dict()}


def figures_panel(model_name: str, preset_name: str, rank: int, alpha: float | None, groups: int, grouping: str,
                  fold: str, order: int, splits: int, factoring: str, projection: str, ratio: float, shuffle: bool,
                  targets: list[str], session: Session | None) -> tuple[Any, Any]:
    """The budget and layout figures for the current controls (unchanged when the combination is invalid)."""
    session = _session(session)
    try:
        config = config_from_controls(preset_name, rank, alpha, groups, grouping, fold, order, splits, factoring,
                                      projection, ratio, shuffle, targets)
        model = _counting_model(model_name, session, _num_classes(session))
        found, layout = viz.model_layout(model, config)
    except SuperLoRAError:
        return gr.update(), gr.update()
    shapes = [t.shape for t in found]
    return viz.budget_figure(shapes, config), viz.layout_figure(layout, found, seed=config.seed)


def upload_checkpoint(file: str | None, arch: str, session: Session | None) -> tuple[Session, Any, str]:
    """Check an uploaded base model file (safetensors, or .pth/.bin read with weights_only) and select it.

    The file must hold weights of `arch`; a mismatch names the first tensor that does not fit.
    """
    session = _session(session)
    if not file:
        return session, gr.update(), ""
    source = Path(file)
    target = session.workdir / "checkpoint" / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    try:
        load_model(str(target), arch=arch)
    except SuperLoRAError as err:
        target.unlink(missing_ok=True)
        return session, gr.update(), f"⚠️ {err}"
    session.checkpoint, session.checkpoint_arch = target, arch
    return session, gr.update(value=UPLOADED), f"Using {source.name} ({arch})."


# ---------------------------------------------------------------------------------------------- data
def _data_outputs(session: Session) -> tuple:
    data = session.data
    counts = data.class_counts()
    train_counts = session.train_set.class_counts() if session.train_set else {}
    val_counts = session.val_set.class_counts() if session.val_set else {}
    table = [[name, counts.get(name, 0), train_counts.get(name, 0), val_counts.get(name, 0)] for name in data.classes]
    gallery = []
    for index, name in enumerate(data.classes):
        shown = 0
        for image, label in zip(data.images, data.labels):
            if label == index and shown < THUMBNAILS_PER_CLASS:
                gallery.append((image, name))
                shown += 1
    rejected = [[r.name, r.reason] for r in data.rejected] or [["(none)", ""]]
    notes = [f"**{len(data.images)} images in {len(data.classes)} classes** from {session.data_source}; "
             f"{sum(train_counts.values())} for training, {sum(val_counts.values())} for validation."]
    notes += [f"⚠️ {w}" for w in data.warnings]
    if data.rejected:
        notes.append(f"{len(data.rejected)} file(s) were skipped; see the list below.")
    return session, "\n\n".join(notes), table, gallery, rejected


def _set_data(session: Session, data: ImageSet, source: str) -> tuple:
    session.data, session.data_source = data, source
    session.train_set, session.val_set = train_val_split(data, val_fraction=0.2, seed=0)
    return _data_outputs(session)


def use_sample(name: str, session: Session | None) -> tuple:
    """Load one of the bundled samples."""
    session = _session(session)
    try:
        return _set_data(session, sample_dataset(name), f"the sample '{name}'")
    except SuperLoRAError as err:
        raise gr.Error(str(err)) from err


def load_data(files: list[str] | None, csv_file: str | None, labels: str, session: Session | None) -> tuple:
    """Load uploaded images: one .zip, or many images (labels from folders, filename prefixes or a CSV)."""
    session = _session(session)
    paths = [Path(f) for f in (files or [])]
    if not paths:
        raise gr.Error("Upload a .zip or some images first (or press 'Use sample data').")
    # Copy into the session's folder so the upload cache can be cleaned independently.
    upload_dir = session.workdir / f"upload-{uuid.uuid4().hex[:6]}"
    upload_dir.mkdir(parents=True)
    copies = []
    for path in paths:
        destination = upload_dir / path.name
        shutil.copyfile(path, destination)
        copies.append(destination)
    try:
        if len(copies) == 1 and copies[0].suffix.lower() == ".zip":
            data = load_dataset(copies[0], labels=labels)
        else:
            data = load_dataset([str(p) for p in copies], labels=labels, csv=csv_file or None)
    except SuperLoRAError as err:
        raise gr.Error(str(err)) from err
    names = ", ".join(p.name for p in paths[:3]) + (" …" if len(paths) > 3 else "")
    return _set_data(session, data, f"your upload ({names})")


# ---------------------------------------------------------------------------------------------- training
def _training_options(steps: int, lr: float, batch_size: int, output_dir: Path) -> Any:
    from superlora.train import TrainOptions

    return TrainOptions(epochs=None, steps=int(steps), lr=float(lr), batch_size=int(batch_size),
                        output_dir=str(output_dir), checkpoint_every=max(1, int(steps)))


def _progress_text(event: Any) -> str:
    parts = [f"step {event.step}/{event.total_steps}"]
    if "loss" in event.metrics and event.kind == "step":
        parts.append(f"loss {event.metrics['loss']:.3f}")
    if event.eta_s is not None and event.kind == "step":
        parts.append(f"about {event.eta_s:.0f} s left")
    if "best_accuracy" in event.metrics and event.metrics["best_accuracy"] is not None:
        parts.append(f"best validation accuracy {100 * event.metrics['best_accuracy']:.1f} %")
    return " · ".join(parts)


def train_model(model_name: str, preset_name: str, rank: int, alpha: float | None, groups: int, grouping: str,
                fold: str, order: int, splits: int, factoring: str, projection: str, ratio: float,
                shuffle: bool, targets: list[str], steps: int, lr: float, batch_size: int,
                session: Session | None, progress: gr.Progress = gr.Progress()):
    """Train in a worker thread and stream progress: (session, status, curves, metrics, confusion)."""
    from superlora.train import StopSignal, train

    session = _session(session)
    if session.train_set is None:
        raise gr.Error("Load data first: upload images or press 'Use sample data' on the Data tab.")
    if session.training:
        raise gr.Error("This session is already training; press Stop or wait for it to finish.")
    try:
        config = config_from_controls(preset_name, rank, alpha, groups, grouping, fold, order, splits, factoring,
                                      projection, ratio, shuffle, targets)
        source = _base_model(model_name, session)
        run_dir = session.workdir / f"run-{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:4]}"
        options = _training_options(steps, lr, batch_size, run_dir)
    except SuperLoRAError as err:
        raise gr.Error(str(err)) from err

    events: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}
    session.stop, session.events, session.training = StopSignal(), [], True

    def work() -> None:
        try:
            outcome["result"] = train(source, session.train_set, session.val_set, config, options,
                                      callbacks=[events.put], stop=session.stop)
        except SuperLoRAError as err:
            outcome["error"] = str(err)
        except Exception as err:  # noqa: BLE001 - shown to the user instead of a dead progress bar
            outcome["error"] = f"training failed unexpectedly: {type(err).__name__}: {err}"
        finally:
            events.put(None)

    worker = threading.Thread(target=work, name=f"train-{session.id}", daemon=True)
    worker.start()
    status, last_yield = "Starting…", 0.0
    progress(0.0, desc="starting")
    while True:
        event = events.get()
        if event is None:
            break
        session.events.append(event)
        if event.total_steps:
            progress((event.step, event.total_steps), desc="training", unit="steps")
        status = _progress_text(event)
        # Redraw the curves at most twice a second: the page stays responsive and the socket quiet.
        if time.monotonic() - last_yield > 0.5 or event.kind in ("eval", "done", "stopped"):
            last_yield = time.monotonic()
            yield session, status, viz.curves_figure(session.events), gr.update(), gr.update()
    worker.join()
    session.training = False
    if "error" in outcome:
        raise gr.Error(outcome["error"])
    result = outcome["result"]
    session.result = result
    session.trained_model_source = model_name if model_name != UPLOADED else str(session.checkpoint)
    accuracy = "n/a" if result.best_accuracy is None else f"{100 * result.best_accuracy:.1f} %"
    ending = "Stopped early" if result.stopped else "Done"
    status = f"**{ending}** after {result.steps} steps · best validation accuracy {accuracy}"
    per_class = [[name, "n/a" if acc is None else f"{100 * acc:.1f} %"] for name, acc in result.per_class_accuracy.items()]
    yield (session, status, viz.curves_figure(session.events), per_class,
           viz.confusion_figure(result.confusion, result.classes))


def stop_training(session: Session | None) -> str:
    if isinstance(session, Session) and session.stop is not None and session.training:
        session.stop.request()
        return "Stopping after the current step…"
    return "Nothing is training."


# ---------------------------------------------------------------------------------------------- inspect / try
def _trained(session: Session | None) -> Any:
    if not isinstance(session, Session) or session.result is None:
        raise gr.Error("Train a model first (Train tab).")
    return session.result


def inspect_deltas(target: str | None, session: Session | None) -> tuple:
    """Per-layer ΔW figures of the trained adapter: ‖ΔW‖ per block and target, spectra, and one heatmap."""
    result = _trained(session)
    deltas = result.model.delta_weights()
    names = list(deltas)
    chosen = target if target in deltas else names[0]
    return (gr.update(choices=names, value=chosen), viz.delta_norms_figure(deltas), viz.spectra_figure(deltas),
            viz.delta_heatmap(deltas[chosen], chosen))


def predict_image(image: Any, top_k: int, session: Session | None) -> dict[str, float]:
    """Top-k classes with probabilities for one uploaded image (a file path or PIL image)."""
    from superlora.inference import input_config, predict

    result = _trained(session)
    if image is None:
        raise gr.Error("Upload an image to classify.")
    try:
        (ranked,) = predict(result.model, [image], input_config(result.model), result.classes, top_k=int(top_k))
    except SuperLoRAError as err:
        raise gr.Error(str(err)) from err
    return dict(ranked)


def export_model(formats: list[str], session: Session | None) -> list[str]:
    """Write the chosen formats and return downloadable files (folders are zipped)."""
    from superlora.export import export

    result = _trained(session)
    if not formats:
        raise gr.Error("Tick at least one format to export.")
    folder = session.workdir / f"export-{uuid.uuid4().hex[:6]}"
    try:
        written = export(result.model, folder, formats, classes=result.classes,
                         metadata={"base_model": session.trained_model_source})
    except SuperLoRAError as err:
        raise gr.Error(str(err)) from err
    files = []
    for name, item in written.items():
        path = Path(getattr(item, "path", item))
        if path.is_dir():
            archive = folder / f"superlora-{name}.zip"
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
                for member in sorted(path.rglob("*")):
                    zf.write(member, member.relative_to(path))
            files.append(str(archive))
        else:
            files.append(str(path))
    return files


# ---------------------------------------------------------------------------------------------- app config
CONTROL_NAMES = ("model", "preset", "rank", "alpha", "groups", "grouping", "fold", "order", "splits", "factoring",
                 "projection", "ratio", "shuffle", "targets", "steps", "lr", "batch_size")


def save_app_config(*values: Any) -> str:
    """Write every control's value to a JSON file for download."""
    *controls, session = values
    session = _session(session)
    data = {"studio_config_version": STUDIO_CONFIG_VERSION, **dict(zip(CONTROL_NAMES, controls))}
    path = session.workdir / "superlora-studio-config.json"
    path.write_text(json.dumps(data, indent=2))
    return str(path)


def load_app_config(file: str | None) -> list[Any]:
    """Read a JSON file written by save_app_config and set the controls (unknown keys are an error)."""
    if not file:
        return [gr.update() for _ in CONTROL_NAMES]
    try:
        data = json.loads(Path(file).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise gr.Error(f"That file is not a studio config (JSON): {err}") from err
    if not isinstance(data, dict) or data.get("studio_config_version") != STUDIO_CONFIG_VERSION:
        raise gr.Error("That file is not a studio config saved by this app.")
    unknown = sorted(set(data) - set(CONTROL_NAMES) - {"studio_config_version"})
    if unknown:
        raise gr.Error(f"Unknown settings in the file: {', '.join(unknown)}")
    return [data[name] if name in data else gr.update() for name in CONTROL_NAMES]


# ---------------------------------------------------------------------------------------------- layout
INTRO = """# SuperLoRA studio
Fine-tune a vision transformer on your own images with a handful of trainable parameters.
**1** pick a model and an adapter · **2** load images · **3** train · **4** look at what changed ·
**5** try it on new images · **6** download the result."""


def build_app(max_training_jobs: int = 1, extra_models: tuple[str, ...] = ()) -> gr.Blocks:
    """The studio's Blocks. `max_training_jobs` bounds concurrent training runs across all sessions;
    `extra_models` are local model folders (written by `superlora.models.save_model`) to offer first."""
    for path in extra_models:
        load_model(path)  # fail at start-up, with the loader's message, rather than on first use
    models = model_choices(tuple(str(p) for p in extra_models))
    default_model = next((v for _, v in models if v == DEFAULT_MODEL), models[0][1])
    if extra_models:
        default_model = str(extra_models[0])
    with gr.Blocks(title="SuperLoRA studio") as app:
        session = gr.State(None, delete_callback=close_session)
        gr.Markdown(INTRO)
        with gr.Tab("1 · Model & adapter"):
            with gr.Row():
                with gr.Column(scale=2):
                    model = gr.Dropdown(models, value=default_model, label="Base model")
                    with gr.Accordion("…or upload your own model file", open=False):
                        checkpoint_arch = gr.Dropdown([v for _, v in models if v != UPLOADED],
                                                      value=default_model, label="Architecture of the file")
                        checkpoint = gr.File(label="Model weights (.safetensors, or .pth/.bin state dict)",
                                             file_types=[".safetensors", ".pth", ".bin", ".pt"], type="filepath")
                    checkpoint_note = gr.Markdown()
                    preset_name = gr.Dropdown([(f"{k} — {PRESET_DESCRIPTIONS[k]}", k) for k in PRESETS],
                                              value="lorta", label="Method (preset)")
                    preset_note = gr.Markdown(PRESET_DESCRIPTIONS["lorta"])
                    targets = gr.CheckboxGroup(list(TARGET_CHOICES), value=["q", "v"], label="Adapt these weights")
                    rank = gr.Slider(1, 64, value=4, step=1, label="Rank r")
                    groups = gr.Slider(1, 24, value=1, step=1, label="Groups G")
                    grouping = gr.Radio(["contiguous", "layer"], value="contiguous", label="Grouping")
                    with gr.Row():
                        fold = gr.Dropdown(list(FOLD_CHOICES), value="auto", label="Fold")
                        order = gr.Slider(2, 6, value=3, step=1, label="Tensor order M")
                        splits = gr.Slider(1, 4, value=1, step=1, label="Kronecker splits K")
                    factoring = gr.Dropdown(list(FACTORING_CHOICES), value="tucker", label="Factoring")
                    with gr.Row():
                        projection = gr.Dropdown(list(PROJECTION_CHOICES), value="none", label="Projection")
                        ratio = gr.Slider(0.001, 1.0, value=1.0, step=0.001, label="Projection ratio ρ")
                    shuffle = gr.Checkbox(False, label="Shuffle entries across layers")
                    alpha = gr.Number(None, label="α (scale numerator; empty = rank)", precision=None)
                with gr.Column(scale=3):
                    count_md = gr.Markdown(elem_id="count-panel")
                    config_error = gr.Markdown(elem_id="config-error")
                    count_json = gr.JSON(visible=False)
                    budget_plot = gr.Plot(label="Budget: trainable parameters against rank")
                    layout_plot = gr.Plot(label="Layout: which group produces each update entry")
            with gr.Row():
                save_config = gr.Button("Save settings (JSON)")
                config_file = gr.File(label="Settings file", type="filepath")
                load_config = gr.UploadButton("Load settings (JSON)", file_types=[".json"], type="filepath")

        with gr.Tab("2 · Data"):
            with gr.Row():
                with gr.Column():
                    uploads = gr.File(label="A .zip of class folders, or many images", file_count="multiple",
                                      type="filepath")
                    csv_file = gr.File(label="Optional CSV (path,label)", file_types=[".csv"], type="filepath")
                    labels = gr.Radio(["auto", "folders", "prefix", "csv"], value="auto",
                                      label="Labels from")
                    load_button = gr.Button("Load my images", variant="primary")
                with gr.Column():
                    sample = gr.Dropdown([(f"{k}: {v}", k) for k, v in SAMPLES.items()], value="inspection",
                                         label="Sample data")
                    sample_button = gr.Button("Use sample data")
            data_summary = gr.Markdown()
            class_table = gr.Dataframe(headers=["class", "images", "train", "validation"], label="Classes")
            gallery = gr.Gallery(label="Examples per class", columns=8, height=260)
            rejected = gr.Dataframe(headers=["file", "why it was skipped"], label="Skipped files")

        with gr.Tab("3 · Train"):
            with gr.Row():
                steps = gr.Slider(10, 2000, value=150, step=10, label="Steps")
                lr = gr.Number(3e-3, label="Learning rate (adapter)")
                batch_size = gr.Slider(4, 128, value=32, step=4, label="Batch size")
            with gr.Row():
                start = gr.Button("Start training", variant="primary")
                stop = gr.Button("Stop", variant="stop")
            train_status = gr.Markdown(elem_id="train-status")
            curves = gr.Plot(label="Loss and accuracy")
            with gr.Row():
                per_class = gr.Dataframe(headers=["class", "validation accuracy"], label="Per class")
                confusion = gr.Plot(label="Confusion matrix")

        with gr.Tab("4 · Inspect ΔW"):
            inspect_button = gr.Button("Show the update of every layer")
            norms_plot = gr.Plot(label="‖ΔW‖ per block and target")
            spectra_plot = gr.Plot(label="Singular values per target")
            target_pick = gr.Dropdown([], label="Target", allow_custom_value=False)
            heatmap_plot = gr.Plot(label="ΔW of one target")

        with gr.Tab("5 · Try it"):
            with gr.Row():
                image = gr.Image(type="pil", label="An image to classify")
                with gr.Column():
                    top_k = gr.Slider(1, 10, value=3, step=1, label="Top k")
                    predict_button = gr.Button("Classify", variant="primary")
                    prediction = gr.Label(label="Prediction")

        with gr.Tab("6 · Export"):
            formats = gr.CheckboxGroup(["adapter", "merged", "onnx"], value=["adapter"],
                                       label="Formats (adapter: small, needs superlora; merged: plain timm "
                                             "checkpoint; onnx: for deployment)")
            export_button = gr.Button("Export", variant="primary")
            downloads = gr.File(label="Downloads", file_count="multiple")

        controls = [model, preset_name, rank, alpha, groups, grouping, fold, order, splits, factoring, projection,
                    ratio, shuffle, targets]
        count_outputs = [count_md, config_error, count_json]
        for control in controls:
            # Counts first (fast, from shapes), then the figures.
            control.change(count_panel, [*controls, session], count_outputs, api_name=False,
                           show_progress="hidden").then(
                figures_panel, [*controls, session], [budget_plot, layout_plot], api_name=False,
                show_progress="hidden")
        preset_name.change(preset_controls, [preset_name, model, targets, session],
                           [groups, grouping, fold, order, splits, factoring, projection, ratio, shuffle,
                            preset_note], api_name=False)
        app.load(count_panel, [*controls, session], count_outputs, api_name=False).then(
            figures_panel, [*controls, session], [budget_plot, layout_plot], api_name=False)
        gr.Button(visible=False).click(count_panel, [*controls, session], count_outputs,
                                       api_name="count_parameters")
        checkpoint.upload(upload_checkpoint, [checkpoint, checkpoint_arch, session], [session, model, checkpoint_note],
                          api_name="upload_checkpoint")

        data_outputs = [session, data_summary, class_table, gallery, rejected]
        sample_button.click(use_sample, [sample, session], data_outputs, api_name="use_sample")
        load_button.click(load_data, [uploads, csv_file, labels, session], data_outputs, api_name="load_data")

        start.click(train_model, [*controls, steps, lr, batch_size, session],
                    [session, train_status, curves, per_class, confusion], api_name="train",
                    concurrency_limit=max_training_jobs, concurrency_id="training")
        stop.click(stop_training, [session], [train_status], api_name="stop", queue=False)

        inspect_button.click(inspect_deltas, [target_pick, session],
                             [target_pick, norms_plot, spectra_plot, heatmap_plot], api_name="inspect")
        target_pick.input(inspect_deltas, [target_pick, session],
                          [target_pick, norms_plot, spectra_plot, heatmap_plot], api_name=False)
        predict_button.click(predict_image, [image, top_k, session], [prediction], api_name="predict")
        export_button.click(export_model, [formats, session], [downloads], api_name="export")

        all_controls = [*controls, steps, lr, batch_size]
        save_config.click(save_app_config, [*all_controls, session], [config_file], api_name="save_config")
        load_config.upload(load_app_config, [load_config], all_controls, api_name="load_config")
    return app


def launch(host: str = "127.0.0.1", port: int | None = None, share: bool = False, max_training_jobs: int = 1,
           max_upload_mb: int = 200, extra_models: tuple[str, ...] = (), prevent_thread_lock: bool = False,
           quiet: bool = False) -> gr.Blocks:
    """Build and start the studio. Binds to 127.0.0.1 unless told otherwise; sharing is off by default."""
    app = build_app(max_training_jobs=max_training_jobs, extra_models=extra_models)
    app.queue(default_concurrency_limit=4)
    app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=prevent_thread_lock,
               max_file_size=f"{max_upload_mb}mb", quiet=quiet, show_error=True, footer_links=["api"])
    return app
