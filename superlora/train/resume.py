"""What makes a run the run it is: its identity (a checkpoint of another run is refused), the config.json of its
folder, and the checks before a run folder is started or continued."""

from __future__ import annotations

import platform
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from superlora.config import SuperLoRAConfig
from superlora.data import ImageSet
from superlora.errors import CheckpointError, ConfigError
from superlora.inference import jsonable_data_config
from superlora.runs import CONFIG_FILE, RunFolder, read_json
from superlora.train.options import RESULT_OPTIONS, TrainingError, TrainOptions


def run_identity(model_label: str, config: SuperLoRAConfig, classes: list[str], train_set: ImageSet,
                 val_set: ImageSet | None, options: TrainOptions, steps_per_epoch: int) -> dict[str, Any]:
    """What a checkpoint must match to be resumed by this run: model, adapter, classes, data sizes, the options
    that change the numbers, and the steps per epoch. Saved in checkpoints under the key "fingerprint"."""
    return {
        "model": model_label,
        "adapter": config.to_dict(),
        "classes": classes,
        "train_size": len(train_set),
        "val_size": len(val_set) if val_set is not None else 0,
        "options": {k: getattr(options, k) for k in RESULT_OPTIONS},
        # differs only if a last partial batch fits one number of processes and not another
        "steps_per_epoch": steps_per_epoch,
    }


def check_same_run(identity: Mapping[str, Any], saved: Mapping[str, Any], output_dir: Any) -> None:
    """CheckpointError naming the first thing where the checkpoint's run identity `saved` differs from `identity`."""
    for key, value in identity.items():
        previous = saved.get(key)
        if key == "options":
            changed = [k for k in value if previous is None or previous.get(k) != value[k]]
            if changed:
                k = changed[0]
                raise CheckpointError(
                    f"cannot resume: the checkpoint was trained with {k}={previous.get(k) if previous else None!r} "
                    f"but {k}={value[k]!r} was given; resume with the run's own config "
                    f"(superlora train --resume {output_dir})")
        elif previous != value:
            raise CheckpointError(f"cannot resume: the run's {key} differs from the checkpoint's "
                                  f"({previous!r} there, {value!r} now); resume with the same model, data and "
                                  "adapter config")


def check_run_folder(output_dir: Any, resume: bool) -> RunFolder | None:
    """The run folder to write (None without `output_dir`), after checking it can be started or resumed."""
    if output_dir is None:
        if resume:
            raise ConfigError("resume=True needs options.output_dir: the run folder to continue")
        return None
    folder = RunFolder(output_dir)
    if resume and not folder.checkpoint_path.is_file():
        raise CheckpointError(f"cannot resume: {folder.checkpoint_path} does not exist (the run was stopped "
                              "before its first checkpoint); start it again without --resume")
    if not resume and RunFolder.holds_run(output_dir):
        raise TrainingError(f"{output_dir} already holds a run; continue it with resume=True (--resume "
                            f"{output_dir}) or choose a new output folder")
    return folder


def run_config(folder: Path, *, model_name: str | None, model_label: str, config: SuperLoRAConfig,
               options: TrainOptions, classes: list[str], train_set: ImageSet, val_set: ImageSet | None,
               data_config: Mapping[str, Any], num_processes: int, run_info: Mapping[str, Any] | None,
               resume: bool) -> dict[str, Any]:
    """The run folder's config.json: everything needed to run it again, plus `run_info` merged in.

    A resumed run keeps the "created" time of its folder's existing config.json.
    """
    record = {
        "model": model_name or model_label,
        "model_loadable": model_name is not None,  # False: a model object, `--config` cannot rebuild it
        "adapter": config.to_dict(),
        "options": options.to_dict(),
        "classes": classes,
        "data": {"train_size": len(train_set),
                 "val_size": len(val_set) if val_set is not None else 0,
                 "class_counts": {"train": train_set.class_counts(),
                                  "validation": val_set.class_counts() if val_set is not None else {}}},
        "data_config": jsonable_data_config(data_config),
        "num_processes": num_processes,
        "created": datetime.now().isoformat(timespec="seconds"),
        "versions": _versions(),
    }
    for key, value in (run_info or {}).items():
        if isinstance(value, Mapping) and isinstance(record.get(key), dict):
            record[key] = {**record[key], **value}
        else:
            record[key] = value
    if resume:
        previous = folder / CONFIG_FILE
        if previous.is_file():
            record["created"] = read_json(previous).get("created", record["created"])
    return record


def _versions() -> dict[str, str]:
    import timm

    import superlora

    return {"superlora": superlora.__version__, "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version()}
