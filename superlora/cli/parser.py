"""The `superlora` command line's parser: the commands and their flags.

The adapter and training flags are built from `superlora.controls` (the one description of the controls that the
studio and the widgets share): each takes its flag name and help text from its control; this module adds how the
value is written on a command line. Flags the other faces lack (training schedule, device, ...) are listed here.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn

from superlora.config import FACTORINGS, FOLDS, GROUPINGS, PER_TARGET, PRESETS, PROJECTIONS, RANK_SCALINGS
from superlora.controls import ADAPTER_CONTROLS, TRAINING_CONTROLS
from superlora.defaults import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_HEAD_LR, DEFAULT_LR, DEFAULT_RANK_SCALING

DEFAULT_RUNS_DIR = "runs"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a malformed command in one line instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------------------------------- arguments
# The config fields the adapter flags set (the controls', then the one only the CLI offers; --adapter-seed is seed).
ADAPTER_FIELDS = (*(control.field for control in ADAPTER_CONTROLS if control.field), "uncompressed_modes")
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
    if text == PER_TARGET:
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of groups or 'per-target'")
    return int(text)


def _fold(text: str) -> str | tuple[int, ...]:
    return text if text.isalpha() else _int_list(text)


def _names(text: str) -> str | tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    return parts[0] if len(parts) == 1 else parts


def _patterns(text: str) -> tuple[str, ...]:
    return tuple(p for p in text.split(",") if p)


def _warmup(text: str) -> float | int:
    value = float(text)
    return int(value) if value >= 1 and value.is_integer() else value


def _either(choices: Sequence[str]) -> str:
    return f"{', '.join(choices[:-1])} or {choices[-1]}"


# How each control of superlora.controls is written on the command line: (parser, metavar, a note on the value).
ADAPTER_SYNTAX: dict[str, tuple[Any, str | None, str]] = {
    "preset_name": (str, "NAME", f"one of {', '.join(PRESETS)}, or custom (the library defaults); default lora"),
    "rank": (_rank, "R[,R...]", "one number, or one per mode like 4,4,2"),
    "alpha": (float, "ALPHA", ""),
    "groups": (_groups, "G", "or per-target"),
    "grouping": (str, "|".join(GROUPINGS), ""),
    "fold": (_fold, "|".join((*FOLDS, "AxBxC")), "or the sides of an explicit fold like 64x64x64"),
    "order": (int, "M", ""),
    "splits": (int, "K", ""),
    "factoring": (_names, "NAME[,NAME...]", f"{_either(FACTORINGS)}: one for every piece, or one per piece, e.g. "
                                             "full,lora for LoKr"),
    "projection": (str, "|".join(PROJECTIONS), ""),
    "ratio": (float, "RHO", ""),
    "shuffle": (None, None, ""),
    "targets": (_patterns, "NAME[,NAME...]", "names or patterns, comma-separated; default q,v"),
    "rank_scaling": (str, "|".join(RANK_SCALINGS), f"default {DEFAULT_RANK_SCALING}"),
}
# TrainOptions' defaults, from superlora.defaults (which, unlike the training stack, imports nothing).
TRAINING_NOTES = {"epochs": f"{DEFAULT_EPOCHS}", "steps": "overrides --epochs", "batch_size": f"{DEFAULT_BATCH_SIZE}",
                  "lr": f"{DEFAULT_LR:g}", "head_lr": f"{DEFAULT_HEAD_LR:g}",
                  "good_class": "default: the class named ok, good, pass or normal",
                  "pick_lr": "instead of --lr; not with --resume or head-only"}


def _add_adapter_args(parser: argparse.ArgumentParser) -> None:
    """The adapter flags: one per control of superlora.controls, then the config fields only the CLI sets."""
    group = parser.add_argument_group("adapter (a preset, then any field overridden)")
    for control in ADAPTER_CONTROLS:
        parse, metavar, note = ADAPTER_SYNTAX[control.name]
        text = f"{control.help}; {note}" if note else control.help
        if control.kind == "bool":
            group.add_argument(control.flag, dest=control.field, action=argparse.BooleanOptionalAction, default=None,
                               help=text)
        else:
            group.add_argument(control.flag, dest=control.field or "preset", type=parse, metavar=metavar, help=text)
    group.add_argument("--uncompressed-modes", type=_int_list, help="Tucker modes left uncompressed, e.g. 0")
    group.add_argument("--adapter-seed", type=int, help="seed of shuffle, projection and factor init")


def _add_training_args(parser: argparse.ArgumentParser) -> None:
    """The training flags: the controls of superlora.controls, then the ones only the CLI offers."""
    opts = parser.add_argument_group("training")
    for control in TRAINING_CONTROLS:
        text = f"{control.help} ({TRAINING_NOTES[control.name]})"
        if control.kind == "bool":
            opts.add_argument(control.flag, action="store_true", help=text)
        else:
            opts.add_argument(control.flag, type={"int": int, "float": float}.get(control.kind, str), help=text)
    opts.add_argument("--weight-decay", type=float, help="AdamW weight decay (0.01)")
    opts.add_argument("--warmup", type=_warmup, help="warm-up: fraction (<1) or steps (0.05)")
    opts.add_argument("--grad-clip", type=float, help="gradient norm clip, 0 to disable (1.0)")
    opts.add_argument("--label-smoothing", type=float, help="label smoothing (0)")
    opts.add_argument("--seed", type=int, help="training seed (0)")
    opts.add_argument("--checkpoint-every", type=int, help="checkpoint every N steps (default: every epoch)")
    opts.add_argument("--device", choices=("auto", "cpu", "cuda"), help="auto (GPU if present), cpu, cuda")
    opts.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), help="autocast precision (auto)")
    opts.add_argument("--num-workers", type=int, help="data loader worker processes (0)")


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
    _add_training_args(train)

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
    _add_suggest_parser(commands)
    return parser


def _add_suggest_parser(commands: Any) -> None:
    suggest = commands.add_parser("suggest", help="the study's adapters that fit a parameter budget, best measured "
                                                  "first (no weights loaded)",
                                  description="Count every configuration of the Pareto study (docs/benchmarks.md) "
                                              "exactly on the model; list those within the budget, ranked by the "
                                              "accuracy the study measured.")
    suggest.add_argument("--budget", type=int, required=True, help="most adapter parameters on this model")
    _add_model_arg(suggest)
    suggest.add_argument("--task", help="rank by one study task, digits or inspection (default: the mean of both)")
    suggest.add_argument("--targets", type=_patterns, metavar="NAME[,NAME...]",
                         help="adapt these targets instead of the study's q,v (counts change, accuracies do not)")
    suggest.add_argument("--limit", type=int, default=5, help="how many to list (5; 0 lists every one that fits)")
    suggest.add_argument("--json", action="store_true", help="print JSON instead of a table")


