"""The figures carry the library's real numbers: counts, group assignments, ΔW values, norms, spectra, metrics."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from superlora import count_parameters, get_superlora_model, preset
from superlora.adapter import SuperLoRAAdapter
from superlora.config import PRESETS
from superlora.viz import (
    budget_figure,
    budget_map_figure,
    confusion_figure,
    curves_figure,
    delta_heatmap,
    delta_norms_figure,
    describe_config,
    effective_rank,
    entry_groups,
    layout_figure,
    metric_records,
    model_plan,
    numerical_rank,
    spectra_figure,
    split_block,
    summarize_deltas,
    trace_by_key,
)
from tests.toy_models import TwoLayerMLP, randomize_trainable, tiny_vit


def _shapes(model, config):
    targets, _ = model_plan(model, config)
    return [t.shape for t in targets]


# ---------------------------------------------------------------------------------------------- budget
@pytest.mark.parametrize("config", [preset("superlora-2d", groups=2, rank=3), preset("lorta", order=3, rank=2),
                                    preset("lora", rank=5, targets=("q", "k", "v"))])
def test_budget_curves_are_count_parameters(config):
    model = tiny_vit()
    figure = budget_figure(_shapes(model, config), config, max_rank=6)
    for key in PRESETS:
        trace = trace_by_key(figure, key)
        assert list(trace.x) == list(range(1, 7))
        expected = [count_parameters(model, preset(key, rank=r, targets=config.targets)).adapter for r in trace.x]
        assert list(trace.y) == expected, key
    current = trace_by_key(figure, "current")
    assert list(current.y) == [count_parameters(model, config.replace(rank=r)).adapter for r in current.x]
    marker = trace_by_key(figure, "marker")
    assert list(marker.x) == [config.rank]
    assert list(marker.y) == [count_parameters(model, config).adapter]
    floor = trace_by_key(figure, "lora-r1")
    assert set(floor.y) == {count_parameters(model, config).lora_r1}
    assert figure.layout.yaxis.type == "log"


def test_budget_preset_that_does_not_fit_has_no_points_and_says_why():
    model = TwoLayerMLP()  # fc1 20x12 and fc2 16x20: LoTR's stacked fold needs equal shapes
    config = preset("superlora-2d", targets=("fc1", "fc2"))
    lotr = trace_by_key(budget_figure(_shapes(model, config), config, max_rank=3), "lotr")
    assert len(lotr.x) == 0 and "does not fit" in lotr.name
    assert "one shape" in lotr.meta["error"]


def test_budget_reproduces_the_worked_vit_b_numbers():
    from superlora.base_models import create_meta_model

    model = create_meta_model("vit_base_patch16_224")
    config = preset("superlora-2d", rank=1)
    figure = budget_figure(_shapes(model, config), config, max_rank=4)
    assert trace_by_key(figure, "lora").y[0] == 36_864  # METHOD.md: LoRA r=1 on q, v of ViT-B/16
    assert trace_by_key(figure, "superlora-2d").y[0] == 7_526
    assert trace_by_key(figure, "lorta").y[3] == 2_968  # LoRTA M=3, G=1, r=4


def test_budget_map_places_each_config_at_its_count():
    model = TwoLayerMLP()
    families = {
        "LoRA": [preset("lora", rank=r, targets=("fc1", "fc2")) for r in (1, 2)],
        "LoTR": [preset("lotr", targets=("fc1", "fc2"))],  # does not fit: two shapes
        "LoRTA": [preset("lorta", rank=r, targets=("fc1", "fc2")) for r in (1, 3)],
    }
    figure = budget_map_figure(_shapes(model, families["LoRA"][0]), families)
    for family, configs in families.items():
        trace = trace_by_key(figure, family)
        fitting = [c for c in configs if family != "LoTR"]
        assert list(trace.x) == [count_parameters(model, c).adapter for c in fitting]
        assert list(trace.customdata) == [describe_config(c) for c in fitting]
    assert trace_by_key(figure, "LoTR").meta["skipped"] == 1
    assert figure.layout.shapes[0].x0 == count_parameters(model, families["LoRA"][0]).lora_r1
    assert describe_config(preset("lorta", rank=2, ratio=0.1, projection="fastfood", shuffle=True)) == \
        "r=2 G=1 M=3 K=1 ρ=0.1 shuffle"


# ---------------------------------------------------------------------------------------------- layout
def _adapter_assignment(plan, config):
    """Group of every δ entry as the real adapter produces it: each group emits its own id."""
    adapter = SuperLoRAAdapter(plan, config)
    adapter.group_vector = lambda g: torch.full((plan.groups[g].size,), float(g))
    deltas = adapter.delta_weights(include_direct=False)
    return torch.cat([deltas[t].reshape(-1) for t in range(len(plan.target_shapes))]).numpy().astype(np.int32)


@pytest.mark.parametrize("config", [
    preset("superlora-2d", groups=3, shuffle=True, seed=5),
    preset("superlora-2d", groups=3),
    preset("lorta", groups=2, grouping="layer", shuffle=True, targets=("q", "k", "v")),
])
def test_entry_groups_match_the_adapter(config):
    _, plan = model_plan(tiny_vit(), config)
    assert np.array_equal(entry_groups(plan, config.seed), _adapter_assignment(plan, config))
    before = entry_groups(plan, config.seed, shuffled=False)
    assert np.array_equal(before, np.repeat(np.arange(len(plan.groups)), [g.size for g in plan.groups]))


def test_layout_figure_colours_each_entry_by_its_group():
    config = preset("superlora-2d", groups=3, shuffle=True, seed=1)
    targets, plan = model_plan(tiny_vit(), config)
    figure = layout_figure(plan, targets, seed=config.seed, max_bins=10_000)  # 576 entries: one cell each
    before, after = figure.data[0], figure.data[1]
    assert list(before.y) == [t.name for t in targets]
    for panel, ids in ((before, entry_groups(plan, 1, shuffled=False)), (after, entry_groups(plan, 1))):
        for row in range(len(targets)):
            start = plan.offsets[row]
            assert np.array_equal(np.asarray(panel.z[row]), ids[start : start + 576])
    table = figure.data[2]
    columns = [header.replace("<b>", "").replace("</b>", "") for header in table.header.values]
    cells = dict(zip(columns, table.cells.values))
    assert cells["parameters"] == [f"{g.num_parameters:,d}" for g in plan.groups]
    assert cells["folded shape"] == ["×".join(map(str, g.shape)) for g in plan.groups]
    assert cells["P_g"] == [f"{g.input_size:,d}" for g in plan.groups]


def test_layout_figure_bins_show_the_majority_group():
    config = preset("superlora-2d", groups=3, shuffle=True, seed=2)
    targets, plan = model_plan(tiny_vit(), config)
    figure = layout_figure(plan, targets, seed=config.seed, max_bins=7)
    assert "group producing most" in figure.layout.annotations[0].text
    ids = entry_groups(plan, config.seed)
    for row in range(len(targets)):
        entries = ids[plan.offsets[row] : plan.offsets[row] + 576]
        edges = np.linspace(0, 576, 8).round().astype(int)
        expected = [np.bincount(entries[a:b], minlength=3).argmax() for a, b in zip(edges[:-1], edges[1:])]
        assert list(figure.data[1].z[row]) == expected


def test_layout_figure_without_shuffle_has_one_panel_and_zoom_is_exact():
    config = preset("lora", rank=2)
    targets, plan = model_plan(tiny_vit(), config)
    figure = layout_figure(plan, targets, first_entries=50)
    heatmaps = [t for t in figure.data if t.type == "heatmap"]
    assert len(heatmaps) == 1  # shuffle off: before == after
    assert np.array_equal(np.asarray(heatmaps[0].z), np.repeat(np.arange(len(targets))[:, None], 50, axis=1))
    assert "first 50 entries" in figure.layout.annotations[0].text


# ---------------------------------------------------------------------------------------------- ΔW
@pytest.fixture(scope="module")
def deltas():
    wrapped = get_superlora_model(tiny_vit(), preset("lora", rank=2, targets=("q", "v")))
    randomize_trainable(wrapped)
    return wrapped.delta_weights()


def test_delta_heatmap_is_the_tensor(deltas):
    name, delta = next(iter(deltas.items()))
    figure = delta_heatmap(delta, name)
    assert np.array_equal(np.asarray(figure.data[0].z), delta.numpy())
    assert figure.data[0].zmid == 0


def test_delta_heatmap_pools_big_matrices_into_block_means():
    delta = torch.arange(30 * 20, dtype=torch.float32).reshape(30, 20)
    z = np.asarray(delta_heatmap(delta, max_side=10).data[0].z)
    assert z.shape == (10, 7)  # factor 3: 30/3 rows, ceil(20/3) columns
    assert z[0, 0] == pytest.approx(delta[:3, :3].mean().item())
    assert z[-1, -1] == pytest.approx(delta[27:, 18:].mean().item())  # the partial last block


def test_norm_grid_holds_frobenius_norms(deltas):
    trace = delta_norms_figure(deltas).data[0]
    assert list(trace.y) == ["blocks.0", "blocks.1"] and list(trace.x) == ["attn.qkv.q", "attn.qkv.v"]
    for name, delta in deltas.items():
        block, kind = split_block(name)
        value = trace.z[list(trace.y).index(block)][list(trace.x).index(kind)]
        assert value == pytest.approx(torch.linalg.matrix_norm(delta).item(), rel=1e-6)


def test_spectra_are_svdvals_and_lora_rank_is_r(deltas):
    figure = spectra_figure(deltas)
    for name, delta in deltas.items():
        line = trace_by_key(figure, name)
        np.testing.assert_allclose(line.y, torch.linalg.svdvals(delta).numpy(), rtol=1e-6)
    summaries = {s.name: s for s in summarize_deltas(deltas)}
    assert all(s.numerical_rank == 2 for s in summaries.values())  # LoRA r=2: at most 2 non-zero values
    bars = trace_by_key(figure, "effective rank")
    assert list(bars.y) == pytest.approx([summaries[n].effective_rank for n in bars.x])


def test_effective_and_numerical_rank():
    assert effective_rank(torch.tensor([3.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert effective_rank(torch.ones(5)) == pytest.approx(5.0)
    assert effective_rank(torch.zeros(4)) == 0.0
    assert numerical_rank(torch.linalg.svdvals(torch.ones(6, 4)), (6, 4)) == 1
    assert numerical_rank(torch.zeros(3), (3, 3)) == 0


def test_split_block():
    assert split_block("blocks.11.attn.qkv.q") == ("blocks.11", "attn.qkv.q")
    assert split_block("encoder.layers.3.mlp.fc1") == ("encoder.layers.3", "mlp.fc1")
    assert split_block("fc1") == ("", "fc1")


# ---------------------------------------------------------------------------------------------- training
HISTORY = [  # serialised TrainEvents: step events carry the per-step loss, eval events the validation numbers
    {"step": 1, "loss": 1.4, "lr": 1e-3},
    {"step": 2, "loss": 1.1, "lr": 1e-3},
    {"kind": "eval", "step": 2, "loss": 1.2, "accuracy": 0.5, "accuracy/ok": 0.4, "best_accuracy": 0.5},
    {"step": 3, "loss": 0.9, "lr": 1e-3},
    {"kind": "eval", "step": 3, "loss": 1.0, "accuracy": 0.75, "accuracy/ok": 0.9, "best_accuracy": 0.75},
]


def _curves(figure):
    return {trace.meta["metric"]: (list(trace.x), list(trace.y)) for trace in figure.data}


def test_curves_carry_the_metrics_given():
    curves = _curves(curves_figure(HISTORY))
    assert curves == {
        "loss": ([1, 2, 3], [1.4, 1.1, 0.9]),
        "val_loss": ([2, 3], [1.2, 1.0]),
        "val_accuracy": ([2, 3], [0.5, 0.75]),
    }
    assert {t.meta["metric"]: t.xaxis for t in curves_figure(HISTORY).data}["val_accuracy"] == "x2"


def test_curves_from_a_run_history_use_its_columns():
    history = [  # TrainResult.history / metrics.json rows
        {"epoch": 1, "step": 10, "train_loss": 1.3, "lr": 1e-3, "val_loss": 1.1, "val_accuracy": 0.5, "elapsed_s": 3},
        {"epoch": 2, "step": 20, "train_loss": 0.8, "lr": 5e-4, "val_loss": None, "val_accuracy": None,
         "elapsed_s": 6},
    ]
    assert _curves(curves_figure(history)) == {
        "train_loss": ([10, 20], [1.3, 0.8]), "val_loss": ([10], [1.1]), "val_accuracy": ([10], [0.5])}


def test_curves_from_events_and_files_agree(tmp_path):
    events = [SimpleNamespace(kind="start", step=0, epoch=0, metrics={}, total_steps=3)]
    for record in HISTORY:
        metrics = {k: v for k, v in record.items() if k not in ("kind", "step")}
        events.append(SimpleNamespace(kind=record.get("kind", "step"), step=record["step"], epoch=0, metrics=metrics))
    events.append(SimpleNamespace(kind="done", step=3, epoch=0, metrics={"best_accuracy": 0.75}))
    expected = _curves(curves_figure(HISTORY))
    assert _curves(curves_figure(events)) == expected
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text("\n".join(json.dumps({"kind": e.kind, "step": e.step, "metrics": e.metrics}) for e in events))
    assert _curves(curves_figure(str(jsonl))) == expected
    csv_file = tmp_path / "metrics.csv"
    csv_file.write_text("step,loss\n1,1.4\n2,1.1\n")
    assert _curves(curves_figure(csv_file)) == {"loss": ([1, 2], [1.4, 1.1])}
    assert len(metric_records(events)) == len(HISTORY)  # start/done carry no curve points


def test_curves_compare_runs():
    figure = curves_figure({"LoRA": HISTORY, "LoRTA": HISTORY[:2]})
    runs = [(t.meta["run"], t.meta["metric"]) for t in figure.data]
    assert ("LoRA", "val_accuracy") in runs and ("LoRTA", "loss") in runs
    assert ("LoRTA", "val_accuracy") not in runs


def test_confusion_figure():
    confusion = [[5, 1, 0], [2, 6, 0], [0, 0, 9]]
    figure = confusion_figure(confusion, ["a", "b", "c"])
    assert np.array_equal(np.asarray(figure.data[0].z), np.asarray(confusion))
    assert "87.0%" in figure.layout.title.text  # 20 of 23 on the diagonal
    normalized = np.asarray(confusion_figure(confusion, ["a", "b", "c"], normalize=True).data[0].z)
    np.testing.assert_allclose(normalized.sum(axis=1), 1.0)
    assert normalized[1, 0] == pytest.approx(2 / 8)


def test_curves_from_a_real_run_folder_match_its_history(tmp_path):
    from superlora.train import TrainOptions, train
    from tests.train_helpers import colour_split, tiny_vit as trainable_vit

    train_set, val_set = colour_split(per_class=8)
    result = train(trainable_vit(), train_set, val_set, preset("lora", rank=2),
                   TrainOptions(epochs=2, batch_size=8, device="cpu", output_dir=str(tmp_path / "run")))
    from_folder = _curves(curves_figure(tmp_path / "run"))
    assert from_folder == _curves(curves_figure(result.history))
    assert from_folder["val_accuracy"] == ([row["step"] for row in result.history],
                                           [row["val_accuracy"] for row in result.history])
    assert _curves(curves_figure(tmp_path / "run" / "metrics.csv")) == from_folder


def test_the_accuracy_panel_is_a_fixed_percent_axis_even_for_a_single_point():
    figure = curves_figure([{"epoch": 1, "step": 3, "train_loss": 1.2, "val_loss": 1.1, "val_accuracy": 0.75}])
    axis = figure.layout.yaxis2
    assert tuple(axis.range) == (0, 1.02) and axis.tickformat == ".0%"
    assert figure.layout.yaxis.range is None  # the loss axis still fits its values
