"""The `superlora` command line: train, count, suggest, predict, export, runs, report, models.

    superlora train DATA [--model NAME] [--preset lora --rank 4 ...] [--epochs 3] [--output runs/my-run]
    superlora train --config runs/my-run/config.json      re-run a saved run (flags override its values)
    superlora train --resume runs/my-run                   continue an interrupted run
    superlora count --model vit_base_patch16_224 --preset lora --rank 1
    superlora suggest --budget 1000 [--model NAME] [--task digits] [--json]   the study's best within a budget
    superlora predict runs/my-run image1.png image2.png [--top-k 3]
    superlora export runs/my-run --output exported/ [--format adapter merged onnx]
    superlora runs [runs/]
    superlora report runs/my-run [--output report.html]   one-page HTML report of a run
    superlora models

DATA is a folder of class folders, a .zip, or `sample:inspection` / `sample:digits`. Every mistake a user can make
prints one line starting with "superlora: error:" and exits with status 1 (2 for a malformed command line).
Under `accelerate launch` the same `train` runs on several processes; only the main one prints and writes.

Modules: `parser` builds the command line (its adapter and training flags from `superlora.controls`, the one
description of the controls the studio and the widgets share); `commands` holds one function per command.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from superlora.cli.commands import COMMANDS, adapter_config, count_table, skipped_lines
from superlora.cli.parser import build_parser
from superlora.errors import SuperLoRAError

__all__ = ["COMMANDS", "adapter_config", "build_parser", "count_table", "main", "skipped_lines"]


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
