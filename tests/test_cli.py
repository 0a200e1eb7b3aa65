"""The `superlora` command line: errors a user can make (one line, no traceback, non-zero exit), `count` without
weights, and a whole session: train on a folder, list runs, predict, export, re-run a saved config, resume."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import pytest

from superlora.cli import main

from train_helpers import colour_images


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder of class folders of PNGs and a small local model folder (the bundled default's architecture)."""
    from superlora.base_models import build_hybrid_vit, save_model

    root = tmp_path_factory.mktemp("cli")
    image_set = colour_images(per_class=8)
    for index, (image, label) in enumerate(zip(image_set.images, image_set.labels)):
        folder = root / "data" / image_set.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:03d}.png")
    save_model(build_hybrid_vit(img_size=32, embed_dim=32, depth=1, num_heads=2, num_classes=3), root / "model")
    return root


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.slow
def test_a_missing_data_path_is_one_line_and_a_failing_exit_status(tmp_path):
    done = subprocess.run([sys.executable, "-m", "superlora", "train", str(tmp_path / "no-such-folder"),
                           "--model", "vit_base_patch16_224"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert done.returncode == 1
    assert one_error_line(done.stderr) == f"superlora: error: {tmp_path / 'no-such-folder'} does not exist"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, expected", [
    (["train", "DATA", "--model", "vit_nonexistent_model"], "superlora: error: unknown model 'vit_nonexistent_model'"),
    (["train", "DATA", "--model", "MODEL", "--rank", "0"], "superlora: error: rank=0: must be a positive integer"),
    (["train", "DATA", "--model", "MODEL", "--preset", "lorax"], "superlora: error: preset 'lorax' is unknown"),
    (["train", "DATA", "--model", "MODEL", "--lr", "-1"], "superlora: error: lr=-1.0: must be a positive number"),
    (["train", "--resume", "NOWHERE"], "superlora: error: NOWHERE/config.json not found"),
    (["count", "--model", "vit_base_patch16_224", "--preset", "lorta", "--factoring", "lora"],
     "superlora: error: factoring='lora': 'lora' builds a matrix but the fold has order 3"),
    (["predict", "NOWHERE", "x.png"], "superlora: error: NOWHERE is neither a run folder nor an adapter folder"),
])
def test_user_errors_print_one_clear_line(capsys, workspace, argv, expected):
    replace = {"DATA": workspace / "data", "MODEL": workspace / "model", "NOWHERE": workspace / "nowhere"}
    code, _, err = run_cli(capsys, *[replace.get(a, a) for a in argv])
    assert code == 1
    line = one_error_line(err)
    assert line.startswith(expected.replace("NOWHERE", str(workspace / "nowhere"))), line


def test_a_malformed_command_line_is_one_line_with_exit_status_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--epochs", "three"])
    assert exit_info.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("superlora train: error: argument --epochs: invalid int value: 'three'")


def test_count_prints_the_lora_table_for_vit_base_from_shapes_alone(capsys):
    code, out, _ = run_cli(capsys, "count", "--model", "vit_base_patch16_224", "--preset", "lora", "--rank", "1")
    assert code == 0
    lines = out.splitlines()
    adapter_line = next(line for line in lines if line.startswith("adapter parameters"))
    assert adapter_line.split()[2] == "36,864"
    assert sum(1 for line in lines if "lora 768x768 r=1" in line) == 24  # q and v of 12 blocks
    assert any(line.startswith("head (trainable)") and "769,000" in line for line in lines)
    code, out, _ = run_cli(capsys, "count", "--model", "vit_base_patch16_224", "--preset", "lorta", "--order", "3",
                           "--rank", "4", "--json")
    assert json.loads(out)["adapter"] == 2968  # the worked example of docs/method.md


def _flags(command: str) -> dict:
    from superlora.cli import build_parser

    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return subcommands.choices[command]._option_string_actions


def test_the_adapter_and_training_flags_come_from_the_controls():
    from superlora.cli.parser import TRAINING_NOTES
    from superlora.controls import ADAPTER_CONTROLS, TRAINING_CONTROLS
    from superlora.train import TrainOptions

    train_flags, count_flags = _flags("train"), _flags("count")
    for control in ADAPTER_CONTROLS:
        assert train_flags[control.flag].help.startswith(control.help), control.name
        assert count_flags[control.flag].help == train_flags[control.flag].help
    for control in TRAINING_CONTROLS:
        assert train_flags[control.flag].help.startswith(control.help), control.name
        assert control.flag not in count_flags
    for name in ("epochs", "batch_size", "lr"):  # the help states TrainOptions' defaults
        assert float(TRAINING_NOTES[name]) == getattr(TrainOptions(), name)
    assert {"--preset", "--rank", "--targets", "--shuffle", "--no-shuffle", "--uncompressed-modes",
            "--adapter-seed", "--epochs", "--steps", "--batch-size", "--lr", "--head-lr", "--good-class"} <= \
        set(train_flags)


def test_count_reads_alpha_and_groups_0_as_the_studio_does_and_prints_the_shared_count_panel(capsys):
    from superlora import count_parameters, preset
    from superlora.base_models import create_meta_model
    from superlora.controls import format_count

    code, out, _ = run_cli(capsys, "count", "--model", "vit_base_patch16_224", "--preset", "superlora-2d",
                           "--grouping", "layer", "--groups", "0", "--alpha", "0", "--json")
    assert code == 0
    config = json.loads(out)["config"]
    assert config["groups"] == "per-target" and config["alpha"] is None  # 0 = one group per target, alpha = r
    code, out, _ = run_cli(capsys, "count", "--model", "vit_base_patch16_224", "--preset", "lorta", "--rank", "4")
    count = count_parameters(create_meta_model("vit_base_patch16_224"), preset("lorta", rank=4))
    assert code == 0 and out.endswith(format_count(count, "text") + "\n")
    assert out.splitlines()[-1].startswith("The adapter has 12.4x fewer parameters than LoRA r=1")  # 36,864 / 2,968


def test_suggest_prints_the_library_suggestions_with_counts_and_measured_accuracy(capsys):
    from superlora import suggest

    code, out, _ = run_cli(capsys, "suggest", "--budget", "3000")
    assert code == 0
    library = suggest("superlora-default", 3000)
    lines = out.splitlines()
    assert lines[0] == ("model superlora-default | budget 3,000 adapter parameters | ranked by the mean accuracy "
                        "over digits and inspection")
    header = lines[2].split()
    assert header[:4] == ["#", "method", "budget", "parameters"]
    rows = lines[3:3 + len(library)]
    for rank, (row, s) in enumerate(zip(rows, library), start=1):
        cells = [c for c in re.split(r"\s{2,}", row.strip())]
        assert cells[:4] == [str(rank), s.method, s.budget_label, f"{s.parameters:,}"]
        assert int(cells[3].replace(",", "")) <= 3000
        assert cells[4] == f"{100 * s.measured[0].mean:.1f} ± {100 * s.measured[0].sd:.1f} (n={s.measured[0].seeds})"
    assert lines[3 + len(library)] == ""
    assert lines[-1].startswith(f"train #1: superlora train DATA --model superlora-default --preset "
                                f"{library[0].config.name}")

    code, out, _ = run_cli(capsys, "suggest", "--budget", "500", "--task", "digits", "--limit", "0", "--json")
    found = json.loads(out)["suggestions"]
    assert code == 0 and found == [s.as_dict() for s in suggest("superlora-default", 500, task="digits", limit=None)]
    assert all(s["parameters"] <= 500 and list(s["measured"]) == ["digits"] for s in found)


@pytest.mark.parametrize("argv, expected, status", [
    (["--budget", "-5"], "superlora: error: budget=-5: must be 0 or more adapter parameters, e.g. budget=1000", 1),
    (["--budget", "100", "--task", "cifar"], "superlora: error: task='cifar': the study measured digits, "
                                             "inspection; choose one, or none for all", 1),
    (["--budget", "lots"], "superlora suggest: error: argument --budget: invalid int value: 'lots' "
                           "(see superlora suggest --help)", 2),
])
def test_suggest_errors_are_one_line(capsys, argv, expected, status):
    try:
        code, _, err = run_cli(capsys, "suggest", *argv)
    except SystemExit as exited:  # argparse: a malformed command line
        code, err = exited.code, capsys.readouterr().err
    assert code == status and one_error_line(err) == expected


def test_below_the_smallest_adapter_suggest_prints_the_head_only_command(capsys):
    code, out, _ = run_cli(capsys, "suggest", "--budget", "30")
    assert code == 0
    assert "#1: the study's 0-parameter baseline (the head alone) is the only choice within 30" in out
    assert "raise the budget to at least 31" in out
    assert out.rstrip().endswith("train #1: superlora train DATA --model superlora-default --preset head-only  (the "
                                 "classifier head alone)")


def test_the_printed_train_flags_rebuild_every_study_config():
    from superlora import preset
    from superlora.cli import adapter_config, build_parser
    from superlora.cli.commands import config_flags
    from superlora.study import load_study

    for point in load_study():
        if point.config is None:  # head-only: --preset head-only, no adapter flags
            continue
        args = build_parser().parse_args(["count", *config_flags(point.config)])
        assert adapter_config(args) == point.config, point.method
    custom = preset("lorta", rank=(2, 3, 4), fold=(48, 48, 192), alpha=2.0, shuffle=True, seed=5).replace(name="x")
    args = build_parser().parse_args(["count", *config_flags(custom)])
    assert adapter_config(args) == custom
    for rule in ("none", "sqrt", "linear"):  # a rank scaling other than the default travels as --rank-scaling
        scaled = preset("lotr", rank=4, rank_scaling=rule)
        flags = config_flags(scaled)
        assert ("--rank-scaling" in flags) == (rule != preset("lotr").rank_scaling)
        assert adapter_config(build_parser().parse_args(["count", *flags])) == scaled


def test_train_runs_predict_export_rerun_and_resume(capsys, workspace, tmp_path):
    run = tmp_path / "runs" / "first"
    code, out, err = run_cli(capsys, "train", workspace / "data", "--model", workspace / "model", "--preset", "lora",
                             "--rank", "2", "--epochs", "2", "--batch-size", "8", "--lr", "0.01", "--output", run)
    assert code == 0, err
    assert "validation accuracy" in err and "train: 100%" in err  # evaluation lines and the tqdm bar
    assert f"run folder: {run}" in out
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == str(workspace / "model") and config["data"]["source"] == str(workspace / "data")
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "done" and record["step"] == 2 * 3  # 18 training images, batch 8

    code, out, _ = run_cli(capsys, "runs", tmp_path / "runs")
    assert code == 0
    header, rule, row = out.splitlines()
    assert header.split()[:4] == ["run", "status", "model", "adapter"]
    assert row.startswith("first") and " done " in row and "lora r=2" in row
    assert f"{record['parameters']['adapter']:,}" in row and f"{100 * record['best_accuracy']:.1f} %" in row

    image = workspace / "data" / "red" / "000.png"
    code, out, _ = run_cli(capsys, "predict", run, image, "--top-k", "2")
    assert code == 0
    name, ranking = out.strip().split(": ")
    assert name == str(image) and len(ranking.split(", ")) == 2

    code, out, err = run_cli(capsys, "export", run, "--output", tmp_path / "exported")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "exported").iterdir()) == ["adapter", "merged", "model.onnx"]
    assert "max |ONNX - PyTorch|" in out

    # Re-run from the saved config with one flag changed: a new folder, the same adapter and data.
    second = tmp_path / "runs" / "second"
    code, _, err = run_cli(capsys, "train", "--config", run / "config.json", "--epochs", "1", "--output", second)
    assert code == 0, err
    again = json.loads((second / "config.json").read_text())
    assert again["adapter"] == config["adapter"] and again["data"] == config["data"]
    assert again["options"]["epochs"] == 1 and again["options"]["lr"] == 0.01

    # Resuming a finished run changes nothing and says so; an existing run is never overwritten.
    code, out, _ = run_cli(capsys, "train", "--resume", run)
    assert code == 0 and json.loads((run / "metrics.json").read_text())["step"] == 6
    code, _, err = run_cli(capsys, "train", workspace / "data", "--model", workspace / "model", "--output", run)
    assert code == 1 and "already holds a run" in one_error_line(err)


def test_runs_started_in_the_same_second_get_their_own_folders(capsys, workspace, tmp_path, monkeypatch):
    import threading
    from datetime import datetime

    import superlora.runs as runs

    class FrozenClock(datetime):  # every run "starts" in the same second, so the default names collide
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 12, 1, 12, 0, 0)

    monkeypatch.setattr(runs, "datetime", FrozenClock)
    argv = ["train", workspace / "data", "--model", workspace / "model", "--preset", "lora", "--steps", "1",
            "--batch-size", "8", "--runs-dir", tmp_path / "runs"]
    assert run_cli(capsys, *argv)[0] == 0 and run_cli(capsys, *argv)[0] == 0
    name = runs.default_run_name(str(workspace / "model"), {"name": "lora", "rank": 1})  # CLI default rank
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [name, f"{name}-2"]
    assert all(runs.RunFolder.holds_run(p) for p in (tmp_path / "runs").iterdir())

    # The folder is claimed atomically: eight claims at the same instant get eight folders.
    claimed, start = [], threading.Barrier(8)

    def claim():
        start.wait()
        claimed.append(runs.reserve_run_folder(tmp_path / "race", "same-name"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(claimed)) == 8 and all(p.is_dir() and not any(p.iterdir()) for p in claimed)


def test_skipped_files_are_listed_with_reasons_and_recorded_in_the_run(capsys, workspace, tmp_path):
    import csv
    import shutil

    data = tmp_path / "data"
    shutil.copytree(workspace / "data", data)
    for index in range(12):  # twelve files that are not images
        (data / "red" / f"broken-{index:02d}.png").write_bytes(b"not a picture")
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", data, "--model", workspace / "model", "--steps", "1", "--batch-size", "8",
                           "--output", run)
    assert code == 0, err
    listed = [line for line in err.splitlines() if line.startswith("  skipped ")]
    assert len(listed) == 10 and all(": " in line.split("skipped ", 1)[1] for line in listed)
    assert "... and 2 more (every one is listed in the run folder's skipped.csv)" in err
    assert "12 files skipped:" in err
    rows = list(csv.DictReader((run / "skipped.csv").open()))
    assert sorted(row["file"] for row in rows) == [f"red/broken-{i:02d}.png" for i in range(12)]
    assert all(row["reason"] for row in rows)
    assert not (workspace / "run").exists()


def test_a_multi_process_run_without_output_is_refused(capsys, workspace, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = run_cli(capsys, "train", workspace / "data", "--model", workspace / "model")
    assert code == 1 and "needs one shared folder: add --output RUN_DIR" in one_error_line(err)


def test_csv_files_never_carry_a_live_spreadsheet_formula(tmp_path):
    import csv

    from superlora.data.imageset import Rejected
    from superlora.runs import RunFolder, spreadsheet_safe

    assert [spreadsheet_safe(v) for v in ("=1+1", "+a", "-b", "@c", "ok.png", 3)] == ["'=1+1", "'+a", "'-b", "'@c",
                                                                                     "ok.png", 3]
    RunFolder(tmp_path).write_skipped([Rejected('=HYPERLINK("x").png', "not an image"), Rejected("a.png", "empty")])
    rows = list(csv.reader((tmp_path / "skipped.csv").open()))
    assert rows == [["file", "reason"], ["'=HYPERLINK(\"x\").png", "not an image"], ["a.png", "empty"]]


def test_head_only_counts_trains_lists_predicts_and_exports(capsys, workspace, tmp_path):
    code, out, _ = run_cli(capsys, "count", "--model", workspace / "model", "--preset", "head-only", "--json")
    assert code == 0
    counted = json.loads(out)
    assert counted["adapter"] == 0 and counted["trainable_modules"] == 32 * 3 + 3 and counted["groups"] == []
    code, _, err = run_cli(capsys, "count", "--model", workspace / "model", "--preset", "head-only", "--rank", "4")
    assert code == 1 and one_error_line(err).startswith("superlora: error: rank=4: the 'head-only' method has no "
                                                        "adapter")

    run = tmp_path / "runs" / "probe"
    code, out, err = run_cli(capsys, "train", workspace / "data", "--model", workspace / "model", "--preset",
                             "head-only", "--steps", "3", "--batch-size", "8", "--head-lr", "0.02", "--output", run)
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["adapter"]["name"] == "head-only" and config["adapter"]["targets"] == []
    assert config["options"]["head_lr"] == 0.02
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "done" and record["parameters"]["adapter"] == 0 and record["parameters"]["head"] == 99

    code, out, _ = run_cli(capsys, "runs", tmp_path / "runs")
    assert code == 0 and "head-only (no adapter)" in out.splitlines()[-1]
    image = workspace / "data" / "red" / "000.png"
    code, out, _ = run_cli(capsys, "predict", run, image, "--top-k", "3")
    assert code == 0 and len(out.strip().split(": ")[1].split(", ")) == 3
    code, out, err = run_cli(capsys, "export", run, "--format", "adapter", "merged", "--output", tmp_path / "out")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["adapter", "merged"]


def test_pick_lr_trains_at_the_probes_choice_and_records_the_probes(capsys, workspace, tmp_path):
    run = tmp_path / "picked"
    code, out, err = run_cli(capsys, "train", workspace / "data", "--model", workspace / "model", "--preset", "lora",
                             "--rank", "2", "--steps", "8", "--batch-size", "8", "--pick-lr", "--output", run)
    assert code == 0, err
    picked = re.search(r"^picked lr ([0-9.]+) \(probe runs of 2 steps: 0\.015: .*, 0\.03: .*, 0\.06: .*\)$", out,
                       re.MULTILINE)
    assert picked, out
    config = json.loads((run / "config.json").read_text())
    assert config["options"]["lr"] == float(picked.group(1)) == config["lr_pick"]["lr"]
    assert [p["lr"] for p in config["lr_pick"]["probes"]] == [0.015, 0.03, 0.06]
    assert {p["steps"] for p in config["lr_pick"]["probes"]} == {2}  # a quarter of 8
    assert not (tmp_path / "runs").exists()  # the probes write no run folders

    for argv, message in ((["--lr", "0.01"], "--pick-lr picks the adapter lr itself; leave out --lr"),
                          (["--preset", "head-only"], "there is no adapter lr to pick")):
        code, _, err = run_cli(capsys, "train", workspace / "data", "--model", workspace / "model", "--steps", "4",
                               "--batch-size", "8", "--pick-lr", "--output", tmp_path / "refused", *argv)
        assert code != 0 and message in one_error_line(err)
