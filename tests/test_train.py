"""Training: learning, best-adapter selection, stop requests, non-finite losses, run folders, TensorBoard, and
bit-exact resume after a real process kill. Tiny ViTs on tiny in-memory image sets keep each run to seconds."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from statistics import mean

import pytest
import torch

from superlora import SuperLoRAModel, preset
from superlora.base_models import data_config
from superlora.data import ImageClassificationDataset, build_transforms
from superlora.errors import CheckpointError, ConfigError
from superlora.inference import predict
from superlora.train import (
    EventLog,
    NonFiniteLossError,
    StopSignal,
    TrainingError,
    TrainOptions,
    train,
)
from superlora.train.checkpoint import load_checkpoint
from superlora.train.metrics import evaluate
from superlora.train.optim import WarmupCosine
from superlora.train.sampling import StepBatches, steps_per_epoch

from train_helpers import colour_split, result_summary, tiny_vit, train_stripes

TESTS = Path(__file__).resolve().parent
FAST = dict(batch_size=8, lr=1e-2, head_lr=1e-2)  # 27 training images -> 4 steps per epoch
LORA = preset("lora", rank=2)


def accuracy_of(model, image_set) -> float:
    data = ImageClassificationDataset(image_set, build_transforms(data_config(model), train=False))
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    return evaluate(model, loader, len(image_set.classes), torch.device("cpu")).accuracy


def test_loss_decreases_and_the_run_folder_holds_everything(tmp_path):
    train_set, val_set = colour_split()
    log = EventLog()
    run = tmp_path / "run"
    options = TrainOptions(epochs=4, output_dir=str(run), **FAST)
    result = train(tiny_vit(), train_set, val_set, LORA, options, callbacks=[log])

    losses = [e.metrics["loss"] for e in log.of("step")]
    assert len(losses) == 16 == result.steps
    assert mean(losses[-4:]) < 0.5 * mean(losses[:4])
    assert result.best_accuracy == max(row["val_accuracy"] for row in result.history) >= 8 / 9
    kinds = [e.kind for e in log.events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.count("eval") == kinds.count("epoch_end") == 4 and kinds.count("checkpoint") == 4
    assert all(e.eta_s is not None and e.eta_s >= 0 for e in log.of("step"))
    assert log.of("step")[-1].eta_s == 0
    evaluation = log.of("eval")[-1]
    assert set(evaluation.metrics) >= {"accuracy", "loss", "accuracy/red", "accuracy/green", "accuracy/blue"}
    assert sum(map(sum, evaluation.details["confusion"])) == len(val_set)

    # The run folder: config that reproduces the run, metrics, summary, adapter, checkpoint, TensorBoard.
    assert {p.name for p in run.iterdir()} == {"config.json", "metrics.json", "metrics.csv", "summary.md", "validation",
                                              "adapter", "checkpoint.safetensors", "tensorboard"}
    config = json.loads((run / "config.json").read_text())
    assert config["adapter"] == LORA.to_dict()
    assert TrainOptions.from_dict(config["options"]) == options
    assert config["classes"] == ["red", "green", "blue"] and config["data"]["train_size"] == 27
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "done" and record["step"] == 16
    assert record["best_accuracy"] == result.best_accuracy and record["best_step"] == result.best_step
    assert record["confusion"] == result.confusion and record["per_class_accuracy"] == result.per_class_accuracy
    assert record["parameters"]["adapter"] == 2 * 2 * 2 * (32 + 32)  # q and v of 2 blocks, r=2, 32x32
    assert record["parameters"]["head"] == 3 * 32 + 3
    csv_lines = (run / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,step,train_loss,lr,val_loss,val_accuracy") and len(csv_lines) == 5
    summary = (run / "summary.md").read_text()
    assert "**done**" in summary and f"{100 * result.best_accuracy:.1f} %" in summary and "| red |" in summary

    # The saved adapter reproduces the returned model exactly on a freshly built base model.
    reloaded = SuperLoRAModel.from_pretrained(tiny_vit(), run / "adapter").eval()
    images = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(reloaded(images), result.model.eval()(images))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "val/accuracy", "val/loss", "val/accuracy/red"} <= tags
    assert [e.step for e in events.Scalars("val/accuracy")] == [4, 8, 12, 16]
    assert len(events.Scalars("train/loss")) == 16


def test_the_best_adapter_is_kept_not_the_last(tmp_path):
    train_set, val_set = colour_split()
    model = tiny_vit()

    def wreck_head_before_last_evaluation(event):
        if event.kind == "epoch_end" and event.step == event.total_steps:
            with torch.no_grad():  # every image now looks like class 0: the last evaluation drops to 1/3
                model.head.weight.zero_()
                model.head.bias.copy_(torch.tensor([10.0, 0.0, 0.0]))

    result = train(model, train_set, val_set, LORA, TrainOptions(epochs=3, output_dir=str(tmp_path / "run"), **FAST),
                   callbacks=[wreck_head_before_last_evaluation])
    accuracies = [row["val_accuracy"] for row in result.history]
    assert accuracies[-1] == pytest.approx(1 / 3)
    assert result.best_accuracy == max(accuracies) > 0.8 and result.best_step < 12
    assert accuracy_of(result.model, val_set) == result.best_accuracy
    saved = SuperLoRAModel.from_pretrained(tiny_vit(), tmp_path / "run" / "adapter")
    assert accuracy_of(saved, val_set) == result.best_accuracy


def test_a_stop_request_ends_the_run_within_one_step_and_leaves_a_usable_adapter(tmp_path):
    train_set, val_set = colour_split()
    stop, log = StopSignal(), EventLog()

    def press_stop_after_step_3(event):
        if event.kind == "step" and event.step == 3:
            stop.request()

    run = tmp_path / "run"
    result = train(tiny_vit(), train_set, val_set, LORA, TrainOptions(epochs=5, output_dir=str(run), **FAST),
                   callbacks=[log, press_stop_after_step_3], stop=stop)
    assert result.stopped and result.steps == 3
    assert log.events[-1].kind == "stopped" and max(e.step for e in log.of("step")) == 3
    assert json.loads((run / "metrics.json").read_text())["status"] == "stopped"
    assert load_checkpoint(run / "checkpoint.safetensors").step == 3  # `--resume` continues from here
    adapted = SuperLoRAModel.from_pretrained(tiny_vit(), run / "adapter")
    top = predict(adapted, train_set.images[:2], None, train_set.classes, top_k=3)
    assert all(len(row) == 3 and math.isfinite(row[0][1]) for row in top)


def test_stop_from_another_thread_in_memory_run(tmp_path, monkeypatch):
    """The app's pattern: train() in a worker thread, Stop pressed in the UI thread; nothing written to disk."""
    monkeypatch.chdir(tmp_path)
    train_set, val_set = colour_split()
    stop, first_step, seen = StopSignal(), threading.Event(), []

    def on_event(event):
        if event.kind == "step":
            seen.append(event.step)
            first_step.set()

    results = []
    worker = threading.Thread(target=lambda: results.append(
        train(tiny_vit(), train_set, val_set, LORA, TrainOptions(epochs=20, **FAST), callbacks=[on_event], stop=stop)))
    worker.start()
    assert first_step.wait(60)
    steps_at_request = seen[-1]
    stop.request()
    worker.join(60)
    (result,) = results
    assert result.stopped and result.run_dir is None
    assert steps_at_request <= result.steps <= steps_at_request + 1
    assert list(tmp_path.iterdir()) == []


def test_a_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    train_set, val_set = colour_split()
    model, log = tiny_vit(), EventLog()

    def poison_after_step_5(event):
        if event.kind == "step" and event.step == 5:
            with torch.no_grad():
                model.head.weight[0, 0] = float("nan")

    run = tmp_path / "run"
    options = TrainOptions(epochs=3, checkpoint_every=2, output_dir=str(run), **FAST)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 6") as failure:
        train(model, train_set, val_set, LORA, options, callbacks=[log, poison_after_step_5])
    assert f"last good checkpoint (step 4) is kept in {run / 'checkpoint.safetensors'}" in str(failure.value)
    assert "Lower the learning rate" in str(failure.value)
    state = load_checkpoint(run / "checkpoint.safetensors")
    assert state.step == 4 and all(torch.isfinite(t).all() for t in state.trainable.values())
    assert log.events[-1].kind == "error" and log.events[-1].message == str(failure.value)
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "failed" and "loss became nan" in record["message"]
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the best weights were put back

    # A learning rate that really diverges ends the same way.
    with pytest.raises(NonFiniteLossError, match="loss became nan"):
        train(tiny_vit(), train_set, val_set, LORA, TrainOptions(epochs=3, batch_size=8, lr=1e6, head_lr=1e6))


@pytest.mark.slow
def test_resume_after_a_real_kill_mid_epoch_is_bit_exact(tmp_path):
    """Kill a training process right after its step-6 checkpoint (mid-epoch 2 of 4), resume it in a new process,
    and compare with an uninterrupted run: history, best accuracy and every adapter bit must match."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    script = [sys.executable, str(TESTS / "train_helpers.py"), str(tmp_path / "killed")]
    process = subprocess.Popen([*script, "--pause-at", "6"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        for line in process.stdout:
            event = json.loads(line)
            if event["kind"] == "checkpoint" and event["step"] == 6:
                process.send_signal(signal.SIGKILL)
                break
    finally:
        process.kill()
        process.wait(30)
    assert process.returncode == -signal.SIGKILL
    assert json.loads((tmp_path / "killed" / "metrics.json").read_text())["status"] == "running"
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.safetensors").step == 6

    resumed = subprocess.run([*script, "--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    events = [json.loads(line) for line in resumed.stdout.splitlines() if line.startswith("{")]
    assert events[0] == {"kind": "start", "step": 6, "metrics": events[0]["metrics"]}
    resumed_summary = json.loads(resumed.stdout.split("RESULT ", 1)[1])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocesses
    try:
        uninterrupted = result_summary(train_stripes(str(tmp_path / "straight")))
    finally:
        torch.set_num_threads(threads)
    assert resumed_summary == json.loads(json.dumps(uninterrupted))
    assert resumed_summary["steps"] == 20 and len(resumed_summary["history"]) == 4

    # TensorBoard shows every step once: what the killed process logged after its checkpoint is purged.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "killed" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 21))


def test_resume_checks_the_run_and_new_runs_never_overwrite_old_ones(tmp_path):
    train_set, val_set = colour_split()
    run = str(tmp_path / "run")
    with pytest.raises(CheckpointError, match="does not exist"):
        train(tiny_vit(), train_set, val_set, LORA, TrainOptions(epochs=1, output_dir=run, **FAST), resume=True)
    train(tiny_vit(), train_set, val_set, LORA, TrainOptions(epochs=1, output_dir=run, **FAST))
    config_before = (tmp_path / "run" / "config.json").read_text()
    with pytest.raises(TrainingError, match="already holds a run"):
        train(tiny_vit(), train_set, val_set, LORA, TrainOptions(epochs=1, output_dir=run, **FAST))
    changed = TrainOptions(epochs=1, output_dir=run, **{**FAST, "lr": 0.5})
    with pytest.raises(CheckpointError, match="lr=0.01 but lr=0.5"):
        train(tiny_vit(), train_set, val_set, LORA, changed, resume=True)
    with pytest.raises(CheckpointError, match="adapter differs"):
        train(tiny_vit(), train_set, val_set, preset("lora", rank=3), TrainOptions(epochs=1, output_dir=run, **FAST),
              resume=True)
    assert (tmp_path / "run" / "config.json").read_text() == config_before


@pytest.mark.parametrize("field, value", [
    ("lr", -1.0), ("epochs", 0), ("steps", 2.5), ("batch_size", 0), ("warmup", -0.1), ("label_smoothing", 1.0),
    ("device", "tpu"), ("precision", "fp8"), ("checkpoint_every", 0), ("grad_clip", -1.0),
])
def test_invalid_options_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"^{field}="):
        TrainOptions(**{field: value})


def test_fp16_needs_a_gpu_and_head_size_follows_the_classes():
    train_set, val_set = colour_split()
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="fp16"):
            train(tiny_vit(), train_set, val_set, LORA, TrainOptions(steps=1, precision="fp16", **FAST))
    result = train(tiny_vit(num_classes=7), train_set, val_set, LORA, TrainOptions(steps=2, **FAST))
    assert result.model.base_model.head.out_features == 3 and result.steps == 2


def test_warmup_then_cosine_decay():
    schedule = WarmupCosine(warmup=4, total=20)
    factors = [schedule(step) for step in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and all(a > b for a, b in zip(factors[4:], factors[5:]))
    assert 0 < factors[-1] < 0.01
    assert TrainOptions(warmup=0.1).warmup_steps(200) == 20 and TrainOptions(warmup=7).warmup_steps(200) == 7


def test_batches_are_seeded_and_split_across_processes_without_overlap():
    size, batch, world = 27, 8, 2
    single = list(StepBatches(size, batch, seed=3, total_steps=8))
    assert len(single) == 8 == 2 * steps_per_epoch(size, batch)
    assert single == list(StepBatches(size, batch, seed=3, total_steps=8))
    assert single != list(StepBatches(size, batch, seed=4, total_steps=8))
    # Epoch 0 visits every image once; resuming at step 5 yields exactly the remaining batches.
    assert sorted(i for b in single[:4] for _, i in b) == list(range(size))
    assert list(StepBatches(size, batch, seed=3, total_steps=8, start_step=5)) == single[5:]
    # Two processes take disjoint halves whose union is the single-process batch.
    shares = [list(StepBatches(size, batch, seed=3, total_steps=8, rank=r, world_size=world)) for r in range(world)]
    for step, whole in enumerate(single):
        assert shares[0][step] + shares[1][step] == whole
    assert steps_per_epoch(25, 8, world_size=2) == 3  # a last batch of 1 image cannot feed 2 processes
    with pytest.raises(ConfigError, match="smaller than the 2 processes"):
        steps_per_epoch(25, 1, world_size=2)


def test_predict_returns_sorted_top_k_probabilities():
    train_set, _ = colour_split()
    model = tiny_vit()
    rows = predict(model, train_set.images[:5], None, train_set.classes, top_k=2)
    assert len(rows) == 5
    for row in rows:
        assert len(row) == 2 and row[0][1] >= row[1][1] and {c for c, _ in row} <= set(train_set.classes)
    full = predict(model, train_set.images[:1], None, train_set.classes, top_k=10)[0]
    assert len(full) == 3 and sum(p for _, p in full) == pytest.approx(1.0, abs=1e-5)


def test_frozen_batch_norm_statistics_do_not_move_during_training():
    """The bundled default's architecture has BatchNorm in its convolutional stem; adapter training must leave
    the frozen base model's running statistics alone, also after evaluations switch modes back and forth."""
    from superlora.base_models import build_hybrid_vit

    torch.manual_seed(0)
    model = build_hybrid_vit(img_size=32, embed_dim=32, depth=1, num_heads=2, num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    assert before
    train_set, val_set = colour_split(per_class=4)
    result = train(model, train_set, val_set, LORA, TrainOptions(epochs=2, **FAST))
    assert result.steps == 4
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_head_only_trains_the_head_alone_and_its_run_loads_predicts_and_exports(tmp_path):
    from superlora.export import export

    train_set, val_set = colour_split(per_class=4)
    model = tiny_vit()
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not name.startswith("head.")}
    head = {name: p.detach().clone() for name, p in model.head.named_parameters()}
    log = EventLog()
    run = tmp_path / "run"
    result = train(model, train_set, val_set, "head-only", TrainOptions(steps=3, output_dir=str(run), **FAST),
                   callbacks=[log])

    assert result.steps == 3 and result.model.config.head_only
    record = json.loads((run / "metrics.json").read_text())
    assert record["parameters"]["adapter"] == 0 and record["parameters"]["head"] == 3 * 32 + 3
    base = result.model.base_model
    assert all(torch.equal(p, frozen[name]) for name, p in base.named_parameters() if not name.startswith("head."))
    assert all(not torch.equal(p, head[name]) for name, p in base.head.named_parameters())
    # There is no adapter rate to report; the head's own rate is the one that ran.
    assert [e.metrics["lr"] for e in log.of("step")] == [0.0] * 3
    assert all(e.metrics["head_lr"] > 0 for e in log.of("step"))

    reloaded = SuperLoRAModel.from_pretrained(tiny_vit(), run / "adapter").eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(reloaded(images), result.model.eval()(images))
    written = export(reloaded, tmp_path / "exported", ["adapter", "merged"], classes=train_set.classes)
    assert sorted(p.name for p in written["adapter"].iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert (written["merged"] / "model.safetensors").is_file()


def test_head_only_on_a_model_without_a_head_is_refused():
    from torch import nn

    from superlora.train.optim import build_optimizer

    class NoHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 4)

        def forward(self, x):
            return self.body(x)

    wrapped = SuperLoRAModel(NoHead(), preset("head-only"))
    with pytest.raises(ConfigError, match="nothing to train: the config has no adapter"):
        build_optimizer(wrapped, TrainOptions(steps=1), 1)
