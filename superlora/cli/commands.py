"""The `superlora` commands: one function per command, from parsed arguments to what it prints and writes.

Every mistake a user can make raises a SuperLoRAError, which `superlora.cli.main` prints as one line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from superlora.cli.parser import ADAPTER_FIELDS, OPTION_FLAGS
from superlora.config import PER_TARGET, PRESET_DESCRIPTIONS, PRESETS, SuperLoRAConfig, preset
from superlora.controls import PER_TARGET_GROUPS, format_count
from superlora.errors import ConfigError

SAMPLE_PREFIX = "sample:"
SKIPPED_SHOWN = 10  # skipped files listed on the terminal; skipped.csv in the run folder lists all


def _fail(message: str) -> NoReturn:
    raise ConfigError(message)


# ---------------------------------------------------------------------------------------------------- helpers
def adapter_config(args: argparse.Namespace, base: dict[str, Any] | None = None) -> SuperLoRAConfig:
    """The adapter config: `base` (from a config file) or the preset, with every given knob applied."""
    knobs = {name: getattr(args, name) for name in ADAPTER_FIELDS if getattr(args, name, None) is not None}
    if getattr(args, "adapter_seed", None) is not None:
        knobs["seed"] = args.adapter_seed
    # The controls' rules, as in the studio and the widgets: alpha 0 means none (the rank scaling sets the scale),
    # groups 0 one group per target.
    if knobs.get("alpha") == 0:
        knobs["alpha"] = None
    if knobs.get("groups") == PER_TARGET_GROUPS:
        knobs["groups"] = PER_TARGET
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
def _saved_run(args: argparse.Namespace) -> dict[str, Any]:
    """The config.json `train` starts from: the resumed run's, the --config file, or nothing."""
    from superlora.runs import CONFIG_FILE, read_json

    if args.resume and args.config:
        _fail("give either --resume RUN_DIR (continue a run) or --config FILE (start a new run from a config)")
    if args.resume:
        return read_json(Path(args.resume) / CONFIG_FILE)
    return read_json(Path(args.config)) if args.config else {}


def _train_options(args: argparse.Namespace, saved: dict[str, Any]) -> tuple[Any, Path | None]:
    """TrainOptions from the saved run and the flags, and the run folder (None: a new one under --runs-dir,
    claimed once the data has loaded)."""
    from superlora.runs import RunFolder
    from superlora.train import TrainOptions

    option_values = dict(saved.get("options", {}))
    option_values.update({name: getattr(args, name) for name in OPTION_FLAGS if getattr(args, name) is not None})
    if args.epochs is not None and args.steps is None:
        option_values["steps"] = None  # an explicit --epochs replaces a saved step count
    if option_values.get("grad_clip") == 0:
        option_values["grad_clip"] = None
    output = Path(args.resume) if args.resume else Path(args.output) if args.output else None
    if output is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each process would claim its own folder
        _fail("a run of several processes needs one shared folder: add --output RUN_DIR")
    options = TrainOptions.from_dict({**option_values, "output_dir": str(output or args.runs_dir)})
    if output is not None and not args.resume and RunFolder.holds_run(output):  # before loading the data
        _fail(f"{output} already holds a run; continue it with --resume {output} or choose another --output")
    return options, output


@contextlib.contextmanager
def _stop_on_interrupt() -> Iterator[Any]:
    """A StopSignal that the first Ctrl-C requests (the run stops after its step and saves); a second aborts."""
    from superlora.train import StopSignal

    stop = StopSignal()

    def on_interrupt(signum: int, frame: Any) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.request()
        print("\nstopping after this step and saving (Ctrl-C again to abort)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _print_result(result: Any) -> None:
    print(f"run folder: {result.run_dir}")
    if result.best_accuracy is not None:
        print(f"best validation accuracy: {result.best_accuracy:.2%} (step {result.best_step}); "
              f"adapter in {result.run_dir / 'adapter'}")
    if result.validation is not None:
        from superlora.train.validation import format_validation_summary

        print(format_validation_summary(result.validation))
    print(f"next: superlora predict {result.run_dir} IMAGE...  |  superlora export {result.run_dir}  |  "
          f"superlora report {result.run_dir}")


def cmd_train(args: argparse.Namespace) -> int:
    from superlora.runs import default_run_name, reserve_run_folder
    from superlora.train import TqdmProgress, train

    saved = _saved_run(args)
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
    if getattr(args, "pick_lr", False):  # before the data loads
        _check_pick_lr(args, config)
    options, output = _train_options(args, saved)

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
    with _stop_on_interrupt() as stop:
        if getattr(args, "pick_lr", False):
            result = _train_at_picked_lr(model_name, train_set, val_set, config, options, stop, run_info)
            if result is None:
                return 1
        else:
            result = train(model_name, train_set, val_set, config, options, callbacks=[TqdmProgress()], stop=stop,
                           resume=bool(args.resume), run_info=run_info)
    if _is_main_process():
        _print_result(result)
    return 0


def _check_pick_lr(args: argparse.Namespace, config: Any) -> None:
    if args.resume:
        _fail("--resume continues the run at its own lr; leave out --pick-lr")
    if args.lr is not None:
        _fail("--pick-lr picks the adapter lr itself; leave out --lr")
    if config.head_only:
        _fail("the head-only method trains no adapter, so there is no adapter lr to pick; set --head-lr instead")


def _train_at_picked_lr(model_name: str, train_set: Any, val_set: Any, config: Any, options: Any, stop: Any,
                        run_info: dict[str, Any]) -> Any:
    """--pick-lr: probe runs, then the run at the lr they chose (recorded in config.json); None when stopped
    while probing."""
    from superlora.train import TqdmProgress, train_at_picked_lr

    def say(pick: Any) -> None:
        if _is_main_process():
            print(("stopped while picking: " if pick.stopped else "picked ") + pick.describe(), flush=True)

    return train_at_picked_lr(model_name, train_set, val_set, config, options, callbacks=[TqdmProgress()], stop=stop,
                              run_info=run_info, on_pick=say)[0]


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
    print(count_table(model_name, config, count, all_groups=args.all_groups))
    return 0


def count_table(model_name: str, config: SuperLoRAConfig, count: Any, all_groups: bool = False) -> str:
    """What `superlora count` prints: the adapter, its groups, then the count panel every face shows."""
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
    return "\n".join([*lines, "", format_count(count, "text")])


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


def _flag_value(value: Any, field: str) -> str:
    if isinstance(value, tuple):
        return ("x" if field == "fold" else ",").join(map(str, value))
    return str(value)


def config_flags(config: SuperLoRAConfig) -> list[str]:
    """The adapter flags that rebuild `config`: its preset, then every field that differs from the preset's."""
    name = config.name if config.name in PRESETS else "custom"
    base = SuperLoRAConfig() if name == "custom" else preset(name)
    flags = ["--preset", name]
    for field in (*ADAPTER_FIELDS, "seed"):
        value = getattr(config, field)
        if value == getattr(base, field):
            continue
        if field == "shuffle":
            flags.append("--shuffle" if value else "--no-shuffle")
        else:
            flag = "--adapter-seed" if field == "seed" else "--" + field.replace("_", "-")
            flags += [flag, "0" if field == "alpha" and value is None else _flag_value(value, field)]
    return flags


def suggestions_table(model_name: str, budget: int, found: Sequence[Any]) -> str:
    """What `superlora suggest` prints: one row per suggestion with its exact count and the study's accuracy."""
    tasks = [m.task for m in found[0].measured]
    header = ("#", "method", "budget", "parameters", *(f"{t}, %" for t in tasks), "lr")
    rows = [(str(i), s.method, s.budget_label, f"{s.parameters:,}",
             *(f"{100 * m.mean:.1f} ± {100 * m.sd:.1f} (n={m.seeds})" for m in s.measured),
             s.lrs)
            for i, s in enumerate(found, start=1)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    numeric = {0, 3}
    lines = [f"model {model_name} | budget {budget:,} adapter parameters | ranked by "
             + (f"the mean accuracy over {' and '.join(tasks)}" if len(tasks) > 1 else f"accuracy on {tasks[0]}"),
             ""]
    lines += ["  ".join(v.rjust(w) if i in numeric else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths)))
              .rstrip() for row in [header, *rows]]
    best = found[0]
    how = f"superlora train DATA --model {shlex.quote(model_name)} --preset head-only  (the classifier head alone)"
    if best.config is not None:
        lrs = {m.lr for m in best.measured}
        flags = [*config_flags(best.config), *(["--lr", f"{lrs.pop():g}"] if len(lrs) == 1 else [])]
        how = f"superlora train DATA --model {shlex.quote(model_name)} {' '.join(map(shlex.quote, flags))}"
    return "\n".join([*lines, "",
                      "parameters: exact adapter count on this model; accuracy: the Pareto study's validation "
                      "accuracy (mean ± sd over n seeds, at the lr it chose) on its own model and tasks "
                      "(docs/benchmarks.md)",
                      f"#1: {best.why}", f"train #1: {how}"])


def cmd_suggest(args: argparse.Namespace) -> int:
    from superlora.suggestions import suggest

    model_name = args.model or _default_model()
    if args.limit < 0:
        _fail(f"--limit {args.limit}: give how many to list, or 0 for every configuration that fits")
    found = suggest(model_name, budget=args.budget, task=args.task, targets=args.targets, limit=args.limit or None)
    if args.json:
        print(json.dumps({"model": model_name, "budget": args.budget, "suggestions": [s.as_dict() for s in found]},
                         indent=2, ensure_ascii=False))
        return 0
    print(suggestions_table(model_name, args.budget, found))
    return 0


COMMANDS = {"train": cmd_train, "count": cmd_count, "predict": cmd_predict, "export": cmd_export,
            "runs": cmd_runs, "report": cmd_report, "models": cmd_models, "suggest": cmd_suggest}
