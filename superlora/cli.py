"""The `superlora` command line: train, count, predict, export, runs, models.

    superlora train DATA [--model NAME] [--preset lora --rank 4 ...] [--epochs 3] [--output runs/my-run]
    superlora train --config runs/my-run/config.json      re-run a saved run (flags override its values)
    superlora train --resume runs/my-run                   continue an interrupted run
    superlora count --model vit_base_patch16_224 --preset lora --rank 1
    superlora predict runs/my-run image1.png image2.png [--top-k 3]
    superlora export runs/my-run --output exported/ [--format adapter merged onnx]
    superlora runs [runs/]
    superlora report runs/my-run [--output report.html]   one-page HTML report of a run
    superlora models

DATA is a folder of class folders, a .zip, or `sample:inspection` / `sample:digits`. Every mistake a user can make
prints one line starting with "superlora: error:" and exits with status 1 (2 for a malformed command line).
Under `accelerate launch` the same `train` runs on several processes; only the main one prints and writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from superlora.config import PRESET_DESCRIPTIONS, PRESETS, SuperLoRAConfig, preset
from superlora.errors import ConfigError, SuperLoRAError

SAMPLE_PREFIX = "sample:"
SKIPPED_SHOWN = 10  # skipped files listed on the terminal; skipped.csv in the run folder lists all
DEFAULT_RUNS_DIR = "runs"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a malformed command in one line instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _fail(message: str) -> NoReturn:
    raise ConfigError(message)


# ---------------------------------------------------------------------------------------------------- arguments
ADAPTER_KNOBS = ("targets", "rank", "alpha", "groups", "grouping", "fold", "order", "splits", "factoring",
                 "uncompressed_modes", "projection", "ratio", "shuffle", "adapter_seed")
OPTION_FLAGS = ("epochs", "steps", "batch_size", "lr", "head_lr", "weight_decay", "warmup", "grad_clip",
                "label_smoothing", "seed", "checkpoint_every", "device", "precision", "num_workers", "good_class")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace("x", ",").split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 4 or 4,4,2, got {text!r}") from None


def _rank(text: str) -> int | tuple[int, ...]:
    values = _int_list(text)
    return values[0] if len(values) == 1 else values


def _groups(text: str) -> int | str:
    if text == "per-target":
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of groups or 'per-target'")
    return int(text)


def _fold(text: str) -> str | tuple[int, ...]:
    return text if text.isalpha() else _int_list(text)


def _names(text: str) -> str | tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    return parts[0] if len(parts) == 1 else parts


def _warmup(text: str) -> float | int:
    value = float(text)
    return int(value) if value >= 1 and value.is_integer() else value


def _add_adapter_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("adapter (a preset, then any field overridden)")
    group.add_argument("--preset", help=f"start from a known method: {', '.join(PRESETS)}, or 'custom' "
                                        "(the library defaults); default lora")
    group.add_argument("--targets", type=lambda t: tuple(p for p in t.split(",") if p),
                       help="comma-separated target names or patterns (default q,v)")
    group.add_argument("--rank", type=_rank, help="r, or one rank per mode like 4,4,2")
    group.add_argument("--alpha", type=float, help="scale numerator (update times alpha/r)")
    group.add_argument("--groups", type=_groups, help="G, or 'per-target'")
    group.add_argument("--grouping", help="contiguous or layer")
    group.add_argument("--fold", type=_fold, help="native, stack, auto, or sides like 64x64x64")
    group.add_argument("--order", type=int, help="M, the order of the folded tensor (fold auto)")
    group.add_argument("--splits", type=int, help="K, Kronecker pieces")
    group.add_argument("--factoring", type=_names, help="lora, tucker, full, hadamard (comma list per piece)")
    group.add_argument("--uncompressed-modes", type=_int_list, help="Tucker modes left uncompressed, e.g. 0")
    group.add_argument("--projection", help="none, fastfood or gaussian")
    group.add_argument("--ratio", type=float, help="rho in (0, 1]")
    group.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=None,
                       help="shuffle the update vector before grouping")
    group.add_argument("--adapter-seed", type=int, help="seed of shuffle, projection and factor init")


def _add_model_arg(parser: argparse.ArgumentParser, help_text: str | None = None) -> None:
    parser.add_argument("--model", help=help_text or "model name (superlora-default, a timm ViT name) or a path to "
                                                     "weights; see `superlora models`")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="superlora", description="SuperLoRA adapters for vision transformers.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    train = commands.add_parser("train", help="train an adapter on a folder of images",
                                description="Train an adapter; writes a run folder (config, metrics, adapter, "
                                            "checkpoint, TensorBoard).")
    train.add_argument("data", nargs="?", help="folder of class folders, .zip, or sample:inspection / sample:digits")
    _add_model_arg(train)
    train.add_argument("--config", help="a run's config.json to re-run (command-line flags override it)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the interrupted run in RUN_DIR")
    train.add_argument("--output", help="run folder (default: RUNS_DIR/<date>-<model>-<method>)")
    train.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, help="where new run folders go (default runs)")
    train.add_argument("--val-fraction", type=float, help="share of each class held out for validation (0.2)")
    train.add_argument("--split-seed", type=int, help="seed of the train/validation split (0)")
    train.add_argument("--labels", help="where labels come from: auto, folders, prefix, csv (auto)")
    _add_adapter_args(train)
    opts = train.add_argument_group("training")
    opts.add_argument("--epochs", type=int, help="epochs (3)")
    opts.add_argument("--steps", type=int, help="optimizer steps; overrides --epochs")
    opts.add_argument("--batch-size", type=int, help="global batch size (32)")
    opts.add_argument("--lr", type=float, help="adapter learning rate (3e-3)")
    opts.add_argument("--head-lr", type=float, help="head learning rate (1e-3)")
    opts.add_argument("--weight-decay", type=float, help="AdamW weight decay (0.01)")
    opts.add_argument("--warmup", type=_warmup, help="warm-up: fraction (<1) or steps (0.05)")
    opts.add_argument("--grad-clip", type=float, help="gradient norm clip, 0 to disable (1.0)")
    opts.add_argument("--label-smoothing", type=float, help="label smoothing (0)")
    opts.add_argument("--seed", type=int, help="training seed (0)")
    opts.add_argument("--checkpoint-every", type=int, help="checkpoint every N steps (default: every epoch)")
    opts.add_argument("--device", choices=("auto", "cpu", "cuda"), help="auto (GPU if present), cpu, cuda")
    opts.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), help="autocast precision (auto)")
    opts.add_argument("--num-workers", type=int, help="data loader worker processes (0)")
    opts.add_argument("--good-class", help="class of defect-free parts, for missed defects and false alarms "
                                           "(default: the class named ok, good, pass or normal)")

    count = commands.add_parser("count", help="trainable-parameter table for a model and adapter (no weights loaded)")
    _add_model_arg(count)
    count.add_argument("--config", help="take model and adapter from a run's config.json")
    count.add_argument("--num-classes", type=int, help="size of the classifier head (default: the model's own)")
    count.add_argument("--all-groups", action="store_true", help="list every group, not only the first 24")
    count.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_adapter_args(count)

    predict = commands.add_parser("predict", help="top-k classes for images with a trained adapter")
    predict.add_argument("adapter", help="a run folder or an adapter folder")
    predict.add_argument("images", nargs="+", help="image files")
    _add_model_arg(predict, "base model, when the adapter does not record it")
    predict.add_argument("--top-k", type=int, default=3, help="classes per image (3)")
    predict.add_argument("--json", action="store_true", help="print JSON lines")

    export = commands.add_parser("export", help="write the adapter, a merged timm checkpoint and ONNX")
    export.add_argument("adapter", help="a run folder or an adapter folder")
    export.add_argument("--output", help="output folder (default: RUN/export)")
    export.add_argument("--format", nargs="+", choices=("adapter", "merged", "onnx"),
                        default=["adapter", "merged", "onnx"], help="what to write (all three)")
    _add_model_arg(export, "base model, when the adapter does not record it")

    runs = commands.add_parser("runs", help="list past runs with config, parameters and best accuracy")
    runs.add_argument("folder", nargs="?", default=DEFAULT_RUNS_DIR, help="folder holding run folders (runs)")
    runs.add_argument("--json", action="store_true", help="print JSON")

    report = commands.add_parser("report", help="write a one-page HTML report of a run (opens offline)")
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run folder")
    report.add_argument("--output", help="the HTML file to write (default: RUN_DIR/report.html)")
    report.add_argument("--good-class", help="count missed defects and false alarms with this class as the good one")

    commands.add_parser("models", help="list the models offered by name")
    return parser


# ---------------------------------------------------------------------------------------------------- helpers
def adapter_config(args: argparse.Namespace, base: dict[str, Any] | None = None) -> SuperLoRAConfig:
    """The adapter config: `base` (from a config file) or the preset, with every given knob applied."""
    knobs = {name: getattr(args, name) for name in ADAPTER_KNOBS if getattr(args, name, None) is not None}
    if "adapter_seed" in knobs:
        knobs["seed"] = knobs.pop("adapter_seed")
    if args.preset is None and base is not None:
        return SuperLoRAConfig.from_dict({**base, **knobs})
    name = args.preset or "lora"
    if name == "custom":
        return SuperLoRAConfig(**knobs)
    return preset(name, **knobs)


def _check_model_name(name: str) -> None:
    """Unknown names fail here, before any data is loaded."""
    from superlora.base_models import create_meta_model

    if os.path.exists(name) or os.sep in name or name.lower().endswith((".safetensors", ".pth", ".pt", ".bin")):
        if not Path(name).exists():
            _fail(f"model path {name} does not exist; give a folder or weights file, or a model name "
                  "(see `superlora models`)")
        return
    create_meta_model(name)


def _load_data(source: str, val_fraction: float, split_seed: int, labels: str) -> tuple[Any, Any]:
    from superlora.data import load_dataset, sample_dataset, train_val_split

    if source.startswith(SAMPLE_PREFIX):
        image_set = sample_dataset(source[len(SAMPLE_PREFIX):])
    else:
        image_set = load_dataset(source, labels=labels)
    if _is_main_process():
        print(f"data: {len(image_set)} images in {len(image_set.classes)} classes "
              f"({', '.join(f'{k} {v}' for k, v in image_set.class_counts().items())})"
              + (f"; {len(image_set.rejected)} files skipped:" if image_set.rejected else ""), file=sys.stderr)
        print(skipped_lines(image_set.rejected), end="", file=sys.stderr)
        for warning in image_set.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    return train_val_split(image_set, val_fraction=val_fraction, seed=split_seed)


def skipped_lines(rejected: Sequence[Any], limit: int = SKIPPED_SHOWN) -> str:
    """The first `limit` skipped files with their reasons, one per line, then "and N more" (all are in skipped.csv)."""
    lines = [f"  skipped {item.name}: {item.reason}\n" for item in rejected[:limit]]
    if len(rejected) > limit:
        lines.append(f"  ... and {len(rejected) - limit} more (every one is listed in the run folder's skipped.csv)\n")
    return "".join(lines)


def _is_main_process() -> bool:
    """False in the other processes of `accelerate launch` / `torchrun`, which must not print."""
    return int(os.environ.get("RANK", "0")) == 0


# ---------------------------------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from superlora.runs import CONFIG_FILE, RunFolder, default_run_name, read_json, reserve_run_folder
    from superlora.train import StopSignal, TqdmProgress, TrainOptions, train

    saved: dict[str, Any] = {}
    if args.resume and args.config:
        _fail("give either --resume RUN_DIR (continue a run) or --config FILE (start a new run from a config)")
    if args.resume:
        saved = read_json(Path(args.resume) / CONFIG_FILE)
    elif args.config:
        saved = read_json(Path(args.config))
    data_saved = saved.get("data", {})

    source = args.data or data_saved.get("source")
    if not source:
        _fail("no data: give a folder of class folders, a .zip, or sample:inspection (or --config/--resume)")
    if args.data and args.resume and args.data != data_saved.get("source"):
        _fail(f"--resume continues the run on its own data ({data_saved.get('source')}); leave out the data path")
    model_name = args.model or saved.get("model") or _default_model()
    if saved and not saved.get("model_loadable", True) and not args.model:
        _fail("this run was trained on a model object, not a model name; pass --model NAME_OR_PATH")
    _check_model_name(model_name)
    config = adapter_config(args, saved.get("adapter"))

    option_values = dict(saved.get("options", {}))
    for name in OPTION_FLAGS:
        value = getattr(args, name)
        if value is not None:
            option_values[name] = value
    if args.epochs is not None and args.steps is None:
        option_values["steps"] = None  # an explicit --epochs replaces a saved step count
    if option_values.get("grad_clip") == 0:
        option_values["grad_clip"] = None
    if args.resume:
        output = Path(args.resume)
    elif args.output:
        output = Path(args.output)
    else:
        output = None  # a new folder under --runs-dir, claimed once the data has loaded
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each process would claim a folder of its own
            _fail("a run of several processes needs one shared folder: add --output RUN_DIR")
    option_values["output_dir"] = str(output or args.runs_dir)
    options = TrainOptions.from_dict(option_values)
    if output is not None and not args.resume and RunFolder.holds_run(output):  # before loading the data
        _fail(f"{output} already holds a run; continue it with --resume {output} or choose another --output")

    val_fraction = args.val_fraction if args.val_fraction is not None else data_saved.get("val_fraction", 0.2)
    split_seed = args.split_seed if args.split_seed is not None else data_saved.get("split_seed", 0)
    labels = args.labels or data_saved.get("labels", "auto")
    if not source.startswith(SAMPLE_PREFIX) and not args.resume and args.data:
        source = str(Path(source).resolve())
    train_set, val_set = _load_data(source, val_fraction, split_seed, labels)
    if output is None:
        output = reserve_run_folder(args.runs_dir, default_run_name(model_name, config.to_dict()))
        options = dataclasses.replace(options, output_dir=str(output))
    run_info = {"data": {"source": source, "val_fraction": val_fraction, "split_seed": split_seed, "labels": labels}}

    stop = StopSignal()

    def on_interrupt(signum: int, frame: Any) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.request()
        print("\nstopping after this step and saving (Ctrl-C again to abort)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        result = train(model_name, train_set, val_set, config, options, callbacks=[TqdmProgress()], stop=stop,
                       resume=bool(args.resume), run_info=run_info)
    finally:
        signal.signal(signal.SIGINT, previous)
    if _is_main_process():
        print(f"run folder: {result.run_dir}")
        if result.best_accuracy is not None:
            print(f"best validation accuracy: {result.best_accuracy:.2%} (step {result.best_step}); "
                  f"adapter in {result.run_dir / 'adapter'}")
        if result.validation is not None:
            from superlora.train.validation import format_validation_summary

            print(format_validation_summary(result.validation))
        print(f"next: superlora predict {result.run_dir} IMAGE...  |  superlora export {result.run_dir}  |  "
              f"superlora report {result.run_dir}")
    return 0


def _default_model() -> str:
    from superlora.base_models import DEFAULT_MODEL

    return DEFAULT_MODEL


def cmd_count(args: argparse.Namespace) -> int:
    from superlora.counting import count_parameters
    from superlora.base_models import create_meta_model

    saved: dict[str, Any] = {}
    if args.config:
        from superlora.runs import read_json

        saved = read_json(Path(args.config))
    model_name = args.model or saved.get("model") or _default_model()
    config = adapter_config(args, saved.get("adapter"))
    num_classes = args.num_classes or (len(saved["classes"]) if saved.get("classes") else None)
    model = create_meta_model(model_name, num_classes=num_classes)
    count = count_parameters(model, config)
    if args.json:
        print(json.dumps({"model": model_name, "config": config.to_dict(), **count.as_dict()}, indent=2))
        return 0
    print(format_count(model_name, config, count, all_groups=args.all_groups))
    return 0


def format_count(model_name: str, config: SuperLoRAConfig, count: Any, all_groups: bool = False) -> str:
    """The parameter table `superlora count` prints."""
    from superlora.runs import describe_adapter

    lines = [f"model {model_name} | adapter {describe_adapter(config.to_dict())}",
             f"{len(count.targets)} target matrices, D = {count.update_size:,} update entries, "
             f"{len(count.groups)} group(s)", ""]
    header = ("group", "targets", "folded shape", "pieces", "parameters")
    rows = []
    limit = len(count.groups) if all_groups else 24
    for group in count.groups[:limit]:
        names = group.targets
        targets = names[0] if len(names) == 1 else f"{len(names)} targets ({names[0]} .. {names[-1]})"
        rows.append((str(group.index), targets, "x".join(map(str, group.shape)), " (x) ".join(group.pieces),
                     f"{group.parameters:,}"))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join(v.rjust(w) if i in (0, 4) else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))))
    if len(count.groups) > limit:
        lines.append(f"... {len(count.groups) - limit} more groups (--all-groups lists them)")
    size = count.adapter_bytes
    lines += [
        "",
        f"adapter parameters          {count.adapter:>14,}   ({size / 1024:.1f} KiB as float32)",
        f"head (trainable)            {count.trainable_module_parameters:>14,}",
        f"total trainable             {count.total_trainable:>14,}   ({count.percent_of_model:.4f} % of "
        f"{count.base_model:,})",
        f"LoRA r=1 on the same targets {count.lora_r1:>13,}   ({_relative(count.factor_vs_lora_r1)})",
    ]
    return "\n".join(lines)


def _relative(factor: float) -> str:
    if abs(factor - 1.0) < 0.05:
        return "the same size as the adapter"
    if factor > 1:
        return f"the adapter is {factor:.1f}x smaller"
    return f"the adapter is {1 / factor:.1f}x larger"


def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from superlora.inference import load_trained, predict

    trained = load_trained(args.adapter, args.model)
    results = []
    batch = 32
    # A bar only when there is enough work to wait for.
    with tqdm(total=len(args.images), unit="image", disable=len(args.images) <= batch, file=sys.stderr) as bar:
        for start in range(0, len(args.images), batch):
            chunk = args.images[start:start + batch]
            results += predict(trained.model, chunk, trained.data_config, trained.classes, args.top_k)
            bar.update(len(chunk))
    for image, top in zip(args.images, results):
        if args.json:
            print(json.dumps({"image": image, "top": [{"class": c, "probability": p} for c, p in top]}))
        else:
            print(f"{image}: " + ", ".join(f"{c} {p:.3f}" for c, p in top))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from superlora.export import export, timm_load_snippet
    from superlora.inference import adapter_folder, load_trained
    from superlora.model import read_adapter_config

    trained = load_trained(args.adapter, args.model)
    source = adapter_folder(args.adapter)
    metadata = (read_adapter_config(source).get("metadata") or {})
    if args.model:
        metadata["base_model"] = args.model
    output = Path(args.output) if args.output else Path(args.adapter) / "export"
    written: dict[str, Any] = {}
    with tqdm(args.format, desc="export", unit="format", file=sys.stderr) as formats:
        for name in formats:
            formats.set_postfix_str(name)
            written.update(export(trained.model, output, [name], classes=trained.classes, metadata=metadata))
    if "adapter" in written:
        print(f"adapter: {written['adapter']}  (SuperLoRAModel.from_pretrained(base_model, folder))")
    if "merged" in written:
        config = json.loads((written["merged"] / "config.json").read_text())
        how = timm_load_snippet(written["merged"], config) if config.get("architecture") and \
            not config.get("model_args") else f"superlora.base_models.load_model({str(written['merged'])!r})"
        print(f"merged: {written['merged'] / 'model.safetensors'}  (load: {how})")
    if "onnx" in written:
        report = written["onnx"]
        check = f"max |ONNX - PyTorch| = {report.max_abs_difference:.1e}" if report.max_abs_difference is not None \
            else "not checked: install onnxruntime"
        print(f"onnx: {report.path}  ({check})")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from superlora.runs import format_runs_table, list_runs

    records = list_runs(args.folder)
    if args.json:
        print(json.dumps([{"path": str(r.path), "status": r.status, "model": r.model, "adapter": r.adapter,
                           "adapter_parameters": r.adapter_parameters, "head_parameters": r.head_parameters,
                           "best_accuracy": r.best_accuracy, "step": r.step, "total_steps": r.total_steps,
                           "created": r.created} for r in records], indent=2))
    elif not records:
        print(f"no runs in {args.folder}")
    else:
        print(format_runs_table(records))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from superlora.report import write_report

    print(f"report: {write_report(args.run_dir, args.output, good_class=args.good_class)}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from superlora.base_models import list_models

    for info in list_models():
        where = "offline" if info.available_offline else "needs download"
        print(f"{info.name:36s} {info.params / 1e6:7.1f} M  {info.input_size[-1]:>3d} px  {where:14s} "
              f"{info.description}")
    print("presets: " + "; ".join(f"{k} ({v.split(':')[0]})" for k, v in PRESET_DESCRIPTIONS.items()))
    return 0


COMMANDS = {"train": cmd_train, "count": cmd_count, "predict": cmd_predict, "export": cmd_export,
            "runs": cmd_runs, "report": cmd_report, "models": cmd_models}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `superlora` and `python -m superlora`; returns the exit status."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorBoard's optional TensorFlow import stays quiet
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SuperLoRAError as err:
        print(f"superlora: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("superlora: interrupted", file=sys.stderr)
        return 130
