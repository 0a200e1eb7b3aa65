"""SuperLoRA on a diffusers UNet through the public API (targets, counts, merge, save/load) on a tiny UNet, the
diffusion helpers (transfer data, deterministic loss, sampler, fine-tuning), and the transfer study's `--quick` run."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from superlora import ConfigError, SuperLoRAModel, count_parameters, get_superlora_model, preset
from superlora import diffusion
from superlora.layers import AdaptedLinear
from superlora.targets import resolve_targets

pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "diffusion_transfer.py"
# Two resolutions, attention in the lower down block, its up block and the middle: 4 attention blocks of 16 x 16.
TINY_UNET = {
    "sample_size": 8, "in_channels": 1, "out_channels": 1, "layers_per_block": 1, "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "norm_num_groups": 4, "attention_head_dim": 4,
}
TARGETS = diffusion.ATTENTION_TARGETS


def tiny_unet(seed: int = 0, **changes) -> nn.Module:
    torch.manual_seed(seed)
    return diffusion.build_unet({**TINY_UNET, **changes}).eval()


def unet_input(batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, 8, 8, generator=gen), torch.tensor([10, 700][:batch])


def randomize_adapter(model: SuperLoRAModel, seed: int = 3) -> None:
    """Non-zero factors (a fresh adapter is zero by design), so a wrong merge or load would show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.adapter.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)


def output(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(*unet_input()).sample


CONFIGS = [
    preset("lora", rank=2, targets=TARGETS),
    preset("lorta", order=3, rank=2, targets=TARGETS),
    preset("lorta", order=5, rank=1, projection="fastfood", ratio=0.1, targets=TARGETS),
    preset("lonkr", splits=2, rank=2, targets=TARGETS),
    preset("superlora-2d", groups=4, rank=2, projection="fastfood", ratio=0.5, shuffle=True, targets=TARGETS),
]


# ------------------------------------------------------------------------------------------------ targets, counts
def test_attention_projections_are_the_targets_in_model_order():
    model = tiny_unet()
    names = [t.name for t in resolve_targets(model, TARGETS)]
    # to_out is a ModuleList (Linear, Dropout): it stands for the Linear inside it.
    expected = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)
                and (name.endswith((".to_q", ".to_k", ".to_v")) or name.endswith(".to_out.0"))]
    assert names == expected
    assert len(names) == 16  # 4 attention blocks x 4 projections, no time-embedding Linear
    assert names[:4] == [f"down_blocks.1.attentions.0.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0")]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.name}-M{c.fold_order}-rho{c.ratio}")
def test_counts_equal_the_real_modules_trainable_parameters(config):
    with torch.device("meta"):
        skeleton = tiny_unet()
    counted = count_parameters(skeleton, config, trainable=())
    wrapped = get_superlora_model(tiny_unet(), config, trainable=())
    live = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    assert counted.adapter == live == wrapped.num_trainable_parameters() > 0
    assert counted.trainable_module_parameters == 0
    assert counted.update_size == 16 * 16 * 16


def test_the_bundled_architecture_has_d_114688():
    with torch.device("meta"):
        unet = diffusion.build_unet()
    targets = resolve_targets(unet, TARGETS)
    # By hand: attention at 16 px and 8 px down (1 block each), in the middle (1), and in the two attention up
    # blocks (layers_per_block + 1 = 2 each): 7 blocks x 4 projections of 64 x 64.
    assert len(targets) == 7 * 4 and {t.shape for t in targets} == {(64, 64)}
    count = count_parameters(unet, preset("lora", rank=8, targets=TARGETS), trainable=())
    assert count.update_size == 7 * 4 * 64 * 64 == 114_688
    assert count.adapter == 28 * 8 * (64 + 64) == 28_672
    assert count.lora_r1 == 3_584
    # LoRTA M=5, G=1, r=1 at rho=0.01: ceil(0.01 D) = 1,147 entries, side 5 (4^5 = 1,024 < 1,147): 1 + 5 * 5.
    tiny = preset("lorta", order=5, rank=1, projection="fastfood", ratio=0.01, targets=TARGETS)
    assert count_parameters(unet, tiny, trainable=()).adapter == 26


def test_a_unet_has_no_head_so_only_the_adapter_trains_by_default():
    with pytest.raises(ConfigError, match=r"trainable: 'head' matches no module.*trainable=\(\)"):
        get_superlora_model(tiny_unet(), preset("lora", targets=TARGETS), trainable=("head",))
    wrapped = get_superlora_model(tiny_unet(), preset("lora", targets=TARGETS))  # no classifier: nothing extra
    assert wrapped.trainable_modules == []
    assert wrapped.num_trainable_parameters() == sum(p.numel() for p in wrapped.adapter.parameters())
    assert all(not p.requires_grad for p in wrapped.base_model.parameters() if p.dtype.is_floating_point
               and not any(p is q for q in wrapped.adapter.parameters()))


# ------------------------------------------------------------------------------------------------ merge, save, load
@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[1], CONFIGS[4]], ids=lambda c: c.name)
def test_merge_equals_the_unmerged_output_and_unload_gives_a_plain_unet(config):
    base = output(tiny_unet())
    wrapped = get_superlora_model(tiny_unet(), config, trainable=())
    assert torch.allclose(output(wrapped), base, atol=1e-6)  # zero update at initialisation
    randomize_adapter(wrapped)
    adapted = output(wrapped)
    assert (adapted - base).abs().max() > 1e-3
    wrapped.merge()
    assert torch.allclose(output(wrapped), adapted, atol=1e-5)
    wrapped.unmerge()
    assert torch.allclose(output(wrapped), adapted, atol=1e-5)
    plain = wrapped.merge_and_unload()
    assert not any(isinstance(m, AdaptedLinear) for m in plain.modules())
    assert type(plain).__name__ == "UNet2DModel"
    assert torch.allclose(output(plain), adapted, atol=1e-5)


def test_save_and_load_round_trip(tmp_path):
    config = preset("lorta", order=3, rank=2, projection="fastfood", ratio=0.5, shuffle=True, targets=TARGETS)
    wrapped = get_superlora_model(tiny_unet(), config, trainable=())
    randomize_adapter(wrapped)
    expected = output(wrapped)
    wrapped.save_pretrained(tmp_path / "adapter")
    loaded = SuperLoRAModel.from_pretrained(tiny_unet(), tmp_path / "adapter")
    assert torch.allclose(output(loaded), expected, atol=1e-6)
    assert loaded.num_trainable_parameters() == wrapped.num_trainable_parameters()
    with pytest.raises(Exception, match="target 0"):  # another UNet: the first target's shape differs
        SuperLoRAModel.from_pretrained(tiny_unet(block_out_channels=[8, 24]), tmp_path / "adapter")


def test_save_unet_and_load_unet_round_trip(tmp_path):
    unet = tiny_unet(seed=5)
    diffusion.save_unet(unet, tmp_path / "unet", {"training": {"steps": 0}})
    again = diffusion.load_unet(tmp_path / "unet")
    assert torch.equal(output(again), output(unet))
    with pytest.raises(diffusion.CheckpointError, match="holds no diffusion model"):
        diffusion.load_unet(tmp_path)


def test_save_unet_writes_the_non_default_settings_in_the_bundled_order(tmp_path):
    import json

    diffusion.save_unet(diffusion.build_unet(), tmp_path / "bundled", {"parameters": 1})
    config = json.loads((tmp_path / "bundled" / "config.json").read_text())
    bundled = json.loads((diffusion.DIFFUSION_ASSET / "config.json").read_text())
    assert list(config) == ["unet", "scheduler", "parameters"]
    # Same keys, same order: re-exporting the bundled UNet (scripts/pretrain_diffusion.py) rewrites its file as is.
    assert list(config["unet"].items()) == list(bundled["unet"].items()) == list(diffusion.UNET_CONFIG.items())
    diffusion.save_unet(tiny_unet(dropout=0.1), tmp_path / "tiny")
    tiny = json.loads((tmp_path / "tiny" / "config.json").read_text())["unet"]
    assert tiny == {**TINY_UNET, "dropout": 0.1} and list(tiny)[-1] == "dropout"  # beyond UNET_CONFIG's: at the end
    assert torch.equal(output(diffusion.load_unet(tmp_path / "tiny")), output(tiny_unet(dropout=0.1)))


# ------------------------------------------------------------------------------------------------ helpers
def test_the_bundled_unet_matches_its_config_and_model_card():
    import json
    import re

    folder = diffusion.DIFFUSION_ASSET
    assert (folder / "model.safetensors").stat().st_size <= 5_000_000  # the size budget of the bundled weights
    config = json.loads((folder / "config.json").read_text())
    unet = diffusion.load_unet()
    assert config["unet"] == diffusion.UNET_CONFIG and config["scheduler"] == diffusion.SCHEDULER_CONFIG
    assert sum(p.numel() for p in unet.parameters()) == config["parameters"] == 1_163_105
    card = (folder / "MODEL_CARD.md").read_text()
    training = config["training"]
    assert f"**{training['held_out_loss']}**" in card and f"{training['steps']:,} steps" in card
    assert re.search(rf"{round(training['minutes'])} minutes of step time", card)
    for figure in ("loss_curve.png", "samples.png"):
        assert figure in card and (folder / figure).stat().st_size > 10_000


def test_bold_strokes_dilate_by_one_pixel_each_side():
    image = torch.zeros(1, 1, 7, 7)
    image[0, 0, 3, 3] = 0.8
    bold = diffusion.bold_strokes(image)
    assert torch.equal(bold[0, 0, 2:5, 2:5], torch.full((3, 3), 0.8))
    assert bold.sum().item() == pytest.approx(9 * 0.8)


def test_transfer_split_is_fixed_and_disjoint_from_pretraining():
    train, evaluation = diffusion.transfer_split()
    pretraining, held_out = diffusion.digit_split()
    assert train.shape == (744, 1, 32, 32) and evaluation.shape == (256, 1, 32, 32)
    assert len(pretraining) == 4000
    assert torch.equal(evaluation, diffusion.bold_strokes(held_out[-256:]))
    assert torch.equal(train, diffusion.bold_strokes(held_out[:744]))
    # Bold digits carry more ink than the plain ones they come from.
    assert evaluation.mean() > 1.5 * held_out[-256:].mean()


def test_evaluation_loss_is_deterministic_and_sees_the_adapter():
    images = torch.rand(4, 1, 8, 8)
    scheduler = diffusion.noise_scheduler()
    wrapped = get_superlora_model(tiny_unet(), preset("lora", targets=TARGETS), trainable=())
    first = diffusion.evaluation_loss(wrapped, images, scheduler, timesteps=3, draws=2, batch_size=3)
    assert first == diffusion.evaluation_loss(wrapped, images, scheduler, timesteps=3, draws=2, batch_size=3)
    randomize_adapter(wrapped)
    assert diffusion.evaluation_loss(wrapped, images, scheduler, timesteps=3, draws=2) != pytest.approx(first)


def test_sample_runs_on_a_wrapped_unet_and_is_seeded():
    wrapped = get_superlora_model(tiny_unet(), preset("lora", targets=TARGETS), trainable=())
    images = diffusion.sample(wrapped, 2, seed=4, steps=2)
    assert images.shape == (2, 1, 8, 8) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, diffusion.sample(wrapped, 2, seed=4, steps=2))
    grid = diffusion.image_grid(images, columns=2, pad=1)
    assert grid.shape == (1 + 9, 1 + 2 * 9) and grid.dtype.name == "uint8"


def test_fine_tune_trains_only_the_adapter_and_is_reproducible():
    images = torch.rand(16, 1, 8, 8)

    def run():
        unet = tiny_unet()
        before = [p.detach().clone() for p in unet.parameters()]
        wrapped = get_superlora_model(unet, preset("lora", rank=2, targets=TARGETS), trainable=())
        losses = diffusion.fine_tune(wrapped, images, steps=3, lr=1e-2, batch_size=4, seed=1)
        update = sum(float(d.abs().sum()) for d in wrapped.delta_weights().values())
        assert all(torch.equal(a, b) for a, b in zip(before, wrapped.unload().parameters()))
        return losses, update

    losses, update = run()
    assert len(losses) == 3 and all(loss > 0 for loss in losses)
    assert update > 0  # the adapter moved, the UNet did not
    assert run() == (losses, update)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        diffusion.fine_tune(tiny_unet().requires_grad_(False), images, steps=1, lr=1e-2)


# ------------------------------------------------------------------------------------------------ the study script
def _load_script():
    spec = importlib.util.spec_from_file_location("diffusion_transfer_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


study = _load_script()


def summary(method, budget, params, losses, family="lorta"):
    return study.Summary(family, method, budget, method + budget, params, 0.004, tuple(losses), 0)


def test_lora_is_interpolated_in_log_parameters_and_the_headline_uses_its_r8_loss():
    lora = [summary("LoRA", f"r={r}", 100 * r, [loss], "lora") for r, loss in ((1, 0.30), (2, 0.20), (8, 0.10))]
    front = study.lora_front(lora)
    assert study.lora_params_at(0.25, front) == pytest.approx(100 * 2 ** 0.5)  # halfway between r=1 and r=2 in log
    assert study.lora_params_at(0.15, front) == pytest.approx(400)  # halfway between r=2 and r=8 in log
    assert study.lora_params_at(0.35, front) is None and study.lora_params_at(0.05, front) is None
    tensor = [summary("LoRTA", "r=4", 80, [0.1004, 0.1004]), summary("LoRTA", "r=2", 20, [0.12])]
    found = study.headline(lora + tensor)
    assert found["point"].params == 80 and found["factor"] == pytest.approx(10.0)  # 0.4 % above: within 0.5 %
    base = summary("pretrained", "–", 0, [0.5])
    assert study.improvement_share(tensor[1], base, study.reference(lora)) == pytest.approx(0.95)


def test_points_worse_than_the_untouched_model_are_named_as_unstable_at_their_familys_lr():
    base = summary("pretrained", "–", 0, [0.0258])
    fine = summary("LoRTA M=3 G=1", "r=4", 652, [0.0232, 0.0233])
    noisy = summary("LoRTA M=3 G=28 (per weight)", "r=5", 10220, [0.0232, 0.1103])
    assert study.unstable_lines([fine], base) == [] and study.unstable_lines([noisy], None) == []
    (line,) = study.unstable_lines([fine, noisy], base)
    assert line.startswith("- **Unstable at their family's lr**: 1 point(s) ended above the untouched model's loss")
    assert "LoRTA M=3 G=28 (per weight) r=5 (0.02320, 0.11030)" in line and "G=1" not in line


def test_the_loss_axis_keeps_unstable_points_off_scale_and_the_best_factor_is_stated():
    base = summary("pretrained", "–", 0, [0.026])
    lora = [summary("LoRA", f"r={r}", 100 * r, [loss], "lora") for r, loss in ((1, 0.030 - 0.007), (4, 0.0225))]
    stable = summary("LoRTA", "r=4", 50, [0.0225])
    assert study.loss_limits(base, lora + [stable]) is None  # everything below the untouched model: no clipping
    wild = summary("LoRTA", "r=16", 900, [0.10])
    low, high = study.loss_limits(base, lora + [stable, wild])
    assert low == pytest.approx(0.0225 - 0.15 * 0.0035) and high == pytest.approx(0.026 + 0.35 * 0.0035)
    (line,) = study.best_factor_lines(lora + [stable, wild], study.lora_front(lora))
    # LoRTA r=4 reaches LoRA r=4's loss with 50 parameters: 400 / 50 = 8x; the wild point has no factor
    assert line.startswith("- Largest equal-loss factor at any loss LoRA's ranks span: 8.0× (LoRTA r=4, 50 ")
    assert line.endswith("1 point(s) beat LoRA at their own loss.")


def test_the_lr_rule_picks_the_lowest_loss_and_extends_past_an_edge():
    lora_r1, lora_r8 = study.quick_grid()[:2]
    points = [lora_r1, lora_r8]

    def row(point, lr, loss, phase="sweep", seed=0):
        return {"phase": phase, "family": point.family, "method": point.method, "config_hash": point.key,
                "seed": seed, "lr": lr, "eval_loss": loss}

    baseline = {"phase": "baseline", "family": "pretrained", "method": study.BASELINE, "config_hash": "none",
                "seed": 0, "lr": 0.0, "eval_loss": 0.5}
    rows = [baseline] + [row(lora_r1, lr, loss) for lr, loss in ((1e-3, 0.10), (4e-3, 0.20), (1.6e-2, 0.30))]
    jobs = study.pending_jobs(rows, points, seeds=[0, 1])
    assert [(j.phase, j.lr) for j in jobs] == [("sweep", pytest.approx(2.5e-4))]  # lowest loss at the lowest lr
    rows.append(row(lora_r1, 2.5e-4, 0.15))  # the extension loses: 1e-3 is chosen
    jobs = study.pending_jobs(rows, points, seeds=[0, 1])
    assert [(j.phase, j.point.budget, j.seed, j.lr) for j in jobs] == [
        ("main", "r=8", 0, 1e-3), ("main", "r=1", 1, 1e-3), ("main", "r=8", 1, 1e-3)]


def test_plan_counts_the_grid_on_the_bundled_architecture_and_estimates_the_time(tmp_path):
    text = study.plan_markdown(study.study_grid(), tmp_path / "no-export", [0, 1, 2], study.FULL, workers=2,
                               timing=(1.0, 0.01))
    assert "D = 114,688 update entries, LoRA r=1 = 3,584" in text
    for row in ("| lora | LoRA | r=8 | 28,672 |", "| lorta | LoRTA M=3 G=7 (per block) | r=8 | 7,952 |",
                "| fastfood | LoRTA M=5 ρ=0.01 | r=1 | 26 |", "| lonkr | LoNKr K=2 | r=4 | 304 | yes |"):
        assert row in text
    # 21 points x 3 seeds + 5 families x 2 extra sweep lrs = 73 adapter runs, and the pretrained model.
    assert "= 74 runs of 150 steps" in text
    # (73 x 150 x 1.0 s + 74 x 256 x 8 x 0.01 s + 32 seed-0 runs x 8 x 25 x 0.01 s) / 3600 / 2 workers = 1.74 h
    assert "about 1.7 h on 2 worker(s)" in text


def test_the_diffusion_block_survives_the_pareto_writer():
    from benchmarks.study.pareto import markdown as pareto  # importable once the script has put the root on sys.path

    text = f"# page\n{pareto.BEGIN}\nold\n{pareto.END}\n## diffusion\n{study.BEGIN}\nkept\n{study.END}\n"
    after = pareto.replace_between_markers(text, "new pareto tables")
    assert "new pareto tables" in after and f"{study.BEGIN}\nkept\n{study.END}" in after
    docs = (ROOT / "docs" / "benchmarks.md").read_text()
    assert docs.index(pareto.END) < docs.index(study.BEGIN) < docs.index(study.END)


@pytest.mark.slow
def test_quick_study_writes_rows_figures_and_the_statement(tmp_path, capsys):
    unet = tiny_unet(seed=2, sample_size=32)
    diffusion.save_unet(unet, tmp_path / "unet")
    out = tmp_path / "out"
    command = ["--quick", "--model", str(tmp_path / "unet"), "--out", str(out)]
    threads = torch.get_num_threads()
    try:
        assert study.main(command) == 0  # in this process: diffusers and the digits are loaded once
        first = capsys.readouterr().out
        with open(out / study.CSV_NAME, newline="") as handle:
            rows = list(csv.DictReader(handle))
        # The pretrained model, 2 lrs for each of the 2 families' sweep points, then LoRA r=8 at LoRA's lr.
        assert [r["phase"] for r in rows].count("baseline") == 1
        assert sum(r["phase"] == "sweep" for r in rows) == 4 and sum(r["phase"] == "main" for r in rows) == 1
        assert all(r["status"] == "ok" and float(r["eval_loss"]) > 0 for r in rows)
        counts = {r["budget"]: int(r["adapter_params"]) for r in rows if r["method"] == "LoRA"}
        assert counts == {"r=1": 16 * 32, "r=8": 16 * 8 * 32}  # 16 targets of 16 x 16
        assert "6 runs" in first
        assert (out / study.FIGURE_NAME).stat().st_size > 10_000 and (out / study.SAMPLES_NAME).is_file()
        assert len(list((out / study.SAMPLES_DIR).glob("*.png"))) == 6  # every run here is a seed-0 run
        text = (out / "benchmarks.md").read_text()
        assert "#### What reproduced and what did not" in text and "LoRA r=8 (4,096 parameters)" in text
        # Resumable: a second run finds nothing left to do and leaves the rows alone.
        assert study.main(command) == 0
        assert "to run now" not in capsys.readouterr().out
        with open(out / study.CSV_NAME, newline="") as handle:
            assert len(list(csv.DictReader(handle))) == len(rows)
    finally:
        torch.set_num_threads(threads)
