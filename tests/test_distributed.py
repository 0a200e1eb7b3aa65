"""Scale-out: the unchanged `train` under `accelerate launch` with 2 CPU processes (DDP over gloo) completes, only
the main process prints and writes, and it reaches the single-process result for the same global batch; picking
the lr with probe runs (`train_at_picked_lr`) picks the same lr in every process as in one.

Tolerance: each process sums the gradient of its half batch and DDP adds the halves, so the two runs differ only
in float rounding (measured on this CPU: identical accuracies and best step, validation and training losses
within 4e-8, adapter entries within 9e-8). The test allows one validation image of accuracy difference, 1e-5
in validation loss and 1e-4 in every adapter entry.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import train_stripes

TESTS = Path(__file__).resolve().parent
VAL_IMAGES = 12  # stripe_images(16) split 25 %: 4 per class


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_processes(output: Path, *flags: str) -> subprocess.CompletedProcess:
    """tests/train_helpers.py under `accelerate launch` with 2 CPU processes, writing its run to `output`."""
    accelerate = Path(sys.executable).parent / "accelerate"
    # `--multi_gpu` is accelerate's switch for "several processes through torch.distributed"; without GPUs the
    # processes run on the CPU over gloo. (`--cpu --num_processes 2` would silently start a single process.)
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               str(TESTS / "train_helpers.py"), str(output), *flags]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_two_process_ddp_matches_a_single_process_run(tmp_path):
    done = launch_two_processes(tmp_path / "ddp")

    # Only the main process reports: one start, one done, one result.
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    kinds = [e["kind"] for e in events]
    assert kinds.count("start") == 1 and kinds.count("done") == 1 and kinds.count("step") == 20
    assert done.stdout.count("RESULT ") == 1
    distributed = json.loads(done.stdout.split("RESULT ", 1)[1])

    # Files are written once, by the main process, with nothing half-written left behind.
    run = tmp_path / "ddp"
    assert json.loads((run / "config.json").read_text())["num_processes"] == 2
    assert sorted(p.name for p in (run / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert not [p for p in run.rglob(".*") if p.is_file()]
    assert len(list((run / "tensorboard").iterdir())) == 1

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train_stripes(str(tmp_path / "single"))
    finally:
        torch.set_num_threads(threads)
    assert distributed["steps"] == single.steps == 20
    assert abs(distributed["best_accuracy"] - single.best_accuracy) <= 1 / VAL_IMAGES
    for ours, theirs in zip(distributed["history"], single.history):
        assert abs(ours["val_accuracy"] - theirs["val_accuracy"]) <= 1 / VAL_IMAGES
        assert ours["val_loss"] == pytest.approx(theirs["val_loss"], abs=1e-5)
        assert ours["train_loss"] == pytest.approx(theirs["train_loss"], abs=1e-5)
    ddp_adapter = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    single_adapter = load_file(str(tmp_path / "single" / "adapter" / "adapter_model.safetensors"))
    assert ddp_adapter.keys() == single_adapter.keys()
    assert max((ddp_adapter[k] - single_adapter[k]).abs().max().item() for k in ddp_adapter) < 1e-4


@pytest.mark.slow
def test_picking_the_lr_under_two_processes_agrees_with_one_process(tmp_path):
    """Every process runs the same probes (each a DDP run) and reads the same gathered validation numbers, so all
    of them pick the same lr, the one a single process picks; the run folder records it once."""
    from superlora.train import LrPick, LrProbe

    done = launch_two_processes(tmp_path / "ddp", "--pick-lr")
    picks = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("pick-*.json"))]
    assert len(picks) == 2 and picks[0] == picks[1]  # both processes picked the same lr from the same numbers
    assert done.stdout.count("RESULT ") == 1
    run_config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert run_config["lr_pick"] == picks[0] and len(picks[0]["probes"]) == 3
    assert run_config["options"]["lr"] == picks[0]["lr"] and run_config["num_processes"] == 2

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, single = train_stripes(str(tmp_path / "single"), pick_lr=True)
    finally:
        torch.set_num_threads(threads)
    distributed = LrPick(picks[0]["lr"], tuple(LrProbe(**p) for p in picks[0]["probes"]))
    assert distributed.lr == single.lr
    for ours, theirs in zip(distributed.probes, single.probes):
        assert (ours.lr, ours.steps) == (theirs.lr, theirs.steps)
        assert ours.loss == pytest.approx(theirs.loss, abs=1e-5)
        assert abs(ours.accuracy - theirs.accuracy) <= 1 / VAL_IMAGES
