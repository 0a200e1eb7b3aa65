"""One source of the default training settings: `superlora.defaults`. TrainOptions, the controls (and so the
studio's inputs), the CLI and the notebook widgets all start from its values."""

from __future__ import annotations

from superlora import defaults
from superlora.controls import CONTROLS


def test_train_options_start_from_the_defaults():
    from superlora.train import TrainOptions

    options = TrainOptions()
    assert (options.lr, options.head_lr, options.epochs, options.batch_size) == \
        (defaults.DEFAULT_LR, defaults.DEFAULT_HEAD_LR, defaults.DEFAULT_EPOCHS, defaults.DEFAULT_BATCH_SIZE)


def test_the_controls_start_from_the_defaults():
    assert CONTROLS["lr"].default == defaults.DEFAULT_LR
    assert CONTROLS["head_lr"].default == defaults.DEFAULT_HEAD_LR
    assert CONTROLS["steps"].default == defaults.DEFAULT_STEPS
    assert CONTROLS["batch_size"].default == defaults.DEFAULT_BATCH_SIZE


def test_a_cli_run_without_flags_trains_with_the_defaults_and_its_help_says_them(tmp_path):
    from superlora.cli import build_parser
    from superlora.cli.commands import _train_options

    args = build_parser().parse_args(["train", "sample:digits", "--output", str(tmp_path / "run")])
    options, _ = _train_options(args, {})
    assert (options.lr, options.head_lr, options.batch_size) == \
        (defaults.DEFAULT_LR, defaults.DEFAULT_HEAD_LR, defaults.DEFAULT_BATCH_SIZE)
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert f"({defaults.DEFAULT_LR:g})" in help_text and f"({defaults.DEFAULT_HEAD_LR:g})" in help_text
    flags = build_parser().parse_args(["train", "x", "--lr", "0.05", "--head-lr", "0.02"])
    assert (flags.lr, flags.head_lr) == (0.05, 0.02)


def test_the_studio_appends_the_head_lr_and_the_lr_pick_after_its_older_inputs():
    from superlora.studio import TRAIN_INPUT_NAMES
    from superlora.studio.settings_file import CONFIG_KEYS

    # /train's inputs keep their old positions; the head lr, then the lr pick were appended (after the good
    # class), then the scale rule, as in settings.
    assert TRAIN_INPUT_NAMES[-8:] == ("steps", "epochs", "lr", "batch_size", "good_class", "head_lr", "pick_lr",
                                      "rank_scaling")
    assert CONFIG_KEYS[-7:] == ("sample", "labels", "top_k", "formats", "head_lr", "pick_lr", "rank_scaling")


def test_the_training_panel_shows_the_default_rates_and_trains_with_what_it_shows():
    from superlora.train import TrainOptions
    from superlora.widgets import TrainingPanel

    seen = []

    def fake_train(model, train_set, val_set, config, options=None, *, callbacks=(), stop=None):
        seen.append(options)

    panel = TrainingPanel("model", "train", "val", "lora", train_fn=fake_train)
    assert (panel.lr.value, panel.head_lr.value) == (defaults.DEFAULT_LR, defaults.DEFAULT_HEAD_LR)
    panel.start()
    panel.wait(10)
    assert seen[-1] == TrainOptions()
    panel.head_lr.value = 0.02
    panel.start()
    panel.wait(10)
    assert (seen[-1].lr, seen[-1].head_lr) == (defaults.DEFAULT_LR, 0.02)
    given = TrainOptions(steps=5, lr=0.1, head_lr=0.05)
    started = TrainingPanel("model", "train", "val", "lora", given, train_fn=fake_train)
    assert (started.lr.value, started.head_lr.value) == (0.1, 0.05)
    started.start()
    started.wait(10)
    assert seen[-1] == given
