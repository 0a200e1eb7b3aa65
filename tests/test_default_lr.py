"""benchmarks/default_lr.py: the configs it trains are the studio's, and the shipped pair is chosen by minimax regret."""

import importlib.util
import sys
from pathlib import Path

import pytest

from superlora.config import HEAD_ONLY, METHODS
from superlora.controls import ADAPTER_CONTROLS, VIT_TARGETS, config_from_values, preset_values
from superlora.defaults import DEFAULT_HEAD_LR, DEFAULT_LR

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "default_lr.py"


@pytest.fixture(scope="module")
def dl():
    spec = importlib.util.spec_from_file_location("default_lr_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def row(task, method, lr, head_lr, accuracy, seed=0):
    return dict(task=task, method=method, lr=lr, head_lr=head_lr, seed=seed, steps=150, adapter_params=10,
                best_accuracy=accuracy, final_accuracy=accuracy, final_val_loss=1.0, seconds=1.0)


def test_each_method_is_trained_as_the_studio_trains_it(dl):
    studio = {c.name: c.default for c in ADAPTER_CONTROLS}
    for method in METHODS:
        values = {**studio, "preset_name": method, **({} if method == HEAD_ONLY else preset_values(method))}
        studio_config = config_from_values(values, VIT_TARGETS)
        # the rank scaling is pinned ("none" unless asked), so rows keep their meaning whatever the library default
        for rule in ("none", "sqrt"):
            expected = studio_config if method == HEAD_ONLY else studio_config.replace(rank_scaling=rule)
            assert dl.method_config(method, rank_scaling=rule) == expected
        assert dl.method_config(method) == dl.method_config(method, rank_scaling="none")
    assert dl.method_config("lorta").rank == 4 and dl.method_config("lorta").targets == ("q", "v")
    assert dl.method_config(HEAD_ONLY).targets == ()
    # head-only runs once per head lr (it has no adapter lr); the others over the whole grid
    keys = dl.planned(["lora", HEAD_ONLY], ["inspection"], [0.01, 0.03], [0.003, 0.01], [0])
    assert len(keys) == 2 * 2 + 2 and sum(k[1] == HEAD_ONLY for k in keys) == 2
    # a head-only run is the same run whatever adapter lr it was given (a changed DEFAULT_LR does not re-run it)
    assert dl.run_key("t", HEAD_ONLY, 0.003, 0.01, 0) == dl.run_key("t", HEAD_ONLY, 0.03, 0.01, 0)
    assert dl.run_key("t", "lora", 0.003, 0.01, 0) != dl.run_key("t", "lora", 0.03, 0.01, 0)


def test_the_pair_with_the_smallest_worst_shortfall_is_chosen(dl):
    rows = [
        # method a is best at lr 0.1, b at lr 0.01; lr 0.03 is second best for both
        row("t", "a", 0.01, 0.01, 0.50), row("t", "a", 0.03, 0.01, 0.85), row("t", "a", 0.1, 0.01, 0.90),
        row("t", "b", 0.01, 0.01, 0.90), row("t", "b", 0.03, 0.01, 0.86), row("t", "b", 0.1, 0.01, float("nan")),
        # head-only answers for every adapter lr at its head lr, whatever lr its row recorded
        row("t", HEAD_ONLY, 0.123, 0.01, 0.60),
    ]
    chosen, regrets = dl.choose(rows)
    assert chosen == ("0.03", "0.01")
    assert regrets[chosen][("t", "a")] == pytest.approx(0.05) and regrets[chosen][("t", "b")] == pytest.approx(0.04)
    assert regrets[("0.1", "0.01")][("t", "b")] == pytest.approx(0.90)  # a diverged run counts as 0 accuracy
    assert regrets[chosen][("t", HEAD_ONLY)] == 0
    # a pair that lacks a cell is not a candidate; other seeds do not vote
    rows.append(row("t", "a", 0.3, 0.01, 0.20))
    rows.append(row("t", "b", 0.3, 0.01, 0.99, seed=1))
    assert dl.choose(rows)[0] == ("0.03", "0.01")
    text = dl.markdown(rows)
    assert "minimax-regret pair: lr 0.03, head lr 0.01" in text and "worst shortfall 5.0%" in text
    assert f"lr {DEFAULT_LR:g}, head lr {DEFAULT_HEAD_LR:g}" in text


def test_no_complete_grid_says_so(dl):
    assert "No complete grid yet" in dl.markdown([row("t", "a", 0.01, 0.01, 0.5), row("t", "b", 0.03, 0.01, 0.5)])


def test_a_run_trains_the_key_it_is_given_and_head_only_gets_a_positive_unused_lr(dl, monkeypatch):
    import superlora.train as train_module

    seen = []

    class Result:
        best_accuracy = 0.75
        history = [{"val_accuracy": 0.5, "val_loss": 1.25}]

        class model:  # noqa: N801 - stands in for the trained SuperLoRAModel
            @staticmethod
            def num_trainable_parameters(include_trainable_modules=True):
                return 0

    def fake_train(model, train_set, val_set, config, options):
        seen.append((model, len(train_set), len(val_set), config, options))
        return Result()

    monkeypatch.setattr(train_module, "train", fake_train)
    row = dl.run_one(dl.run_key("inspection", HEAD_ONLY, 123.0, 0.03, 2), steps=7)
    model, train_size, val_size, config, options = seen[0]
    assert (model, train_size, val_size) == ("superlora-default", 256, 64)  # the studio's 80/20 split of 320 images
    assert config.targets == () and config.seed == 2
    assert (options.lr, options.head_lr, options.steps, options.seed) == (DEFAULT_LR, 0.03, 7, 2)
    assert (row["best_accuracy"], row["final_accuracy"], row["final_val_loss"], row["lr"]) == (0.75, 0.5, 1.25,
                                                                                             DEFAULT_LR)
    dl.run_one(dl.run_key("inspection", "lora", 0.01, 0.003, 0), steps=3)
    assert (seen[1][4].lr, seen[1][4].head_lr, seen[1][3].name) == (0.01, 0.003, "lora")


def test_the_lr_pick_trains_the_studios_config_and_is_set_beside_the_shipped_lr(dl, monkeypatch, tmp_path):
    from types import SimpleNamespace

    import superlora.train as train_module
    from superlora.train import LrPick, LrProbe

    seen = []

    def fake_pick(model, train_set, val_set, config, options):
        seen.append((model, len(train_set), config, options))
        probes = (LrProbe(0.015, 38, 0.6, 0.9), LrProbe(0.03, 38, 0.7, 0.5), LrProbe(0.06, 38, 0.8, 0.7))
        model = SimpleNamespace(num_trainable_parameters=lambda include_trainable_modules=True: 988)
        return SimpleNamespace(best_accuracy=0.8, history=[{"val_accuracy": 0.75}], model=model), \
            LrPick(0.03, probes)

    monkeypatch.setattr(train_module, "train_at_picked_lr", fake_pick)
    got = dl.pick_one(("inspection", "lorta", 1), steps=150)
    model, train_size, config, options = seen[0]
    assert (model, train_size, config, options.steps, options.seed) == ("superlora-default", 256,
                                                                         dl.method_config("lorta", 1), 150, 1)
    assert (options.lr, options.head_lr) == (DEFAULT_LR, DEFAULT_HEAD_LR)
    assert got["picked_lr"] == 0.03 and got["probe_losses"] == "0.015:0.9000 0.03:0.5000 0.06:0.7000"
    assert (got["best_accuracy"], got["final_accuracy"], got["adapter_params"]) == (0.8, 0.75, 988)

    rows = [row("inspection", "lorta", DEFAULT_LR, DEFAULT_HEAD_LR, a, seed=s) for s, a in ((0, 0.8), (1, 0.9))]
    rows += [row("inspection", "lorta", 0.01, DEFAULT_HEAD_LR, 0.95, seed=0)]  # another lr: not the baseline
    picks = [dict(got, seed=0, best_accuracy=0.84, seconds=2.0), dict(got, seed=1, best_accuracy=0.9, seconds=3.0),
             dict(got, method="lora", seed=0, seconds=2.0)]
    lines = dl.pick_markdown(rows, picks)
    assert "| inspection | lorta | 0, 1 | 0.03, 0.03 | 87.0% | 85.0% | +2.0 | 2 / 1 |" in lines
    assert "| inspection | lora | 0 | 0.03 | 80.0% | not run on these seeds | – | 2 |" in lines
    assert dl.pick_markdown(rows, []) == []
    # head-only has no adapter lr: `pick` never plans it
    monkeypatch.setattr(dl, "run_until_done", lambda pending, *_: seen.append(pending()[1]))
    dl.pick(dl.parse_args(["pick", "--out", str(tmp_path), "--tasks", "inspection", "--methods", "lora", HEAD_ONLY]))
    assert seen[-1] == [(("inspection", "lora", 0), 150, "none")]


def test_a_rank_scalings_runs_are_set_beside_the_plain_ones_on_the_seeds_both_ran(dl):
    plain = [row("inspection", "lorta", DEFAULT_LR, DEFAULT_HEAD_LR, a, seed=s) for s, a in ((0, 0.80), (1, 0.84))]
    plain += [row("inspection", "lora", DEFAULT_LR, DEFAULT_HEAD_LR, 0.9, seed=0),
              row("inspection", "lorta", 0.01, DEFAULT_HEAD_LR, 0.99, seed=0)]  # another lr: not compared
    scaled = [row("inspection", "lorta", DEFAULT_LR, DEFAULT_HEAD_LR, a, seed=s)
              for s, a in ((0, 0.86), (1, 0.86), (2, 0.5))]  # seed 2 has no plain run: left out
    lines = dl.rule_markdown(plain, scaled, "sqrt")
    assert "| inspection | lorta | 0, 1 | 82.0% ± 2.8% | 86.0% ± 0.0% | +4.0 | 1 |" in lines
    assert not any("| lora |" in line for line in lines)  # no sqrt run for lora
    assert lines[-1] == "Over 1 (task, method) cells: mean +4.0 points, from +4.0 (inspection lorta) to +4.0 " \
                        "(inspection lorta)."
    assert dl.rule_markdown(plain, [], "sqrt")[-1] == "No runs under both rules yet."
