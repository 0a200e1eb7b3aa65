"""The few-parameter methods of PEFT beside SuperLoRA, at matched budgets, under the Pareto study's protocol.

Issue 12, item 6: VeRA, FourierFT, VB-LoRA, Uni-LoRA, TinyLoRA and RandLoRA (PEFT 0.21) run through PEFT itself,
on the study's model, data, steps, batch, head learning rate and seeds, at adapter budgets matched to the
SuperLoRA points. This file holds the groundwork: the budget-to-config matching, a runner and the plan.

Targets. PEFT adapts whole `nn.Linear` modules, so it cannot cut q and v out of timm's fused `qkv` Linear. Every
row here therefore adapts the WHOLE `qkv` Linear of every block (576 x 192 on the default model), and the
SuperLoRA comparison rows use the same targets: `targets=("qkv",)` names the whole fused Linear in
`superlora.targets` (a plain name matches modules whose name ends in `.qkv`), while `"q"`/`"k"`/`"v"` name its
row blocks. The Pareto study's own rows (q and v) are not comparable with these.

Budgets. For each method, `match(method, budget, geometry)` picks the method's size knob(s) so that the exact
number of trainable adapter parameters (the classifier head excluded) is as large as possible without exceeding
the budget; `plan` checks every choice against PEFT's own `get_nb_trainable_parameters` on the real model. Fixed
random matrices (VeRA's A/B, RandLoRA's bases, TinyLoRA's projections and SVD factors, Uni-LoRA's index maps) are
not trainable and are not counted; `plan` reports the size of the file PEFT saves as well. The head is trained in
full for every method (`modules_to_save=["head"]`), as in the study.

Training. `superlora.train.train` only takes SuperLoRA adapters (its `prepare_model` wraps the model itself), so
PEFT models go through `train_peft`, a loop built from the same parts: `TrainOptions` (its weight decay, warm-up,
clipping and label smoothing), `superlora.train.sampling` (the same images, order and augmentation per step and
seed), `WarmupCosine`, AdamW with the same parameter groups, and `superlora.train.metrics.evaluate` once after the
last step. What differs from `train()` is listed in `PROTOCOL_DIFFERENCES`. SuperLoRA whole-qkv rows go through
`train()` itself.

Results: `<out>/peft_baselines_<task>.csv`, the columns of `pareto_<task>.csv` plus a few (see `COLUMNS`), one row
per run, rewritten atomically; a restart skips every (task, method, config, seed, lr) already on file.

    python benchmarks/peft_baselines.py plan                  # matched configs and exact counts (no training)
    python benchmarks/peft_baselines.py plan --study-budgets --markdown benchmarks/results/peft_baselines_plan.md
    python benchmarks/peft_baselines.py run --seeds 0 --lrs 0.001 0.004 0.016 0.064 --workers 1
    python benchmarks/peft_baselines.py --quick               # 2 methods x 1 budget x 3 steps, tiny data
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

# The study's data split, setup fingerprint and defaults: shared with benchmarks/pareto.py so that both sets of
# rows come from the very same images and settings.
import pareto  # noqa: E402
from study.pool import run_until_done  # noqa: E402
from study.store import ResultsTable  # noqa: E402
from superlora.errors import ConfigError  # noqa: E402
from superlora.files import atomic_write  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_MODEL = pareto.DEFAULT_MODEL
TARGET = "qkv"  # the whole fused attention Linear of every block
HEAD = "head"
STANDARD_BUDGETS = (30, 100, 300, 1000, 3000)
STUDY_LIMIT = 10_000  # the issue compares at the SuperLoRA points below this many parameters
DEFAULT_LRS = (1e-3, 4e-3, 1.6e-2, 6.4e-2)

# Settings that are not the size knob: the method's own recommendations where its docs give one.
VBLORA_TOPK = 2  # the paper's and PEFT's default ("K=2 typically provides the best performance")
VBLORA_PREFERRED_RANK = 4  # PEFT's default rank; among equal counts the rank closest to it wins
VBLORA_MAX_RANK = 16
UNILORA_RANK = 4  # PEFT's default
TINYLORA_RANK = 2  # "The paper recommends r=2" (frozen SVD rank; does not change the count)
FOURIERFT_SCALING = 300.0  # PEFT's docs: 300 for ViT-base and ViT-large image classification
RANDLORA_ALPHA_PER_RANK = 20  # PEFT's docs: alpha "would typically be 20 times the rank" (default 640 at r=32)

METHODS = ("vera", "fourierft", "vblora", "unilora", "tinylora", "randlora")
METHOD_NAMES = {"vera": "VeRA", "fourierft": "FourierFT", "vblora": "VB-LoRA", "unilora": "Uni-LoRA",
                "tinylora": "TinyLoRA", "randlora": "RandLoRA"}

PROTOCOL_DIFFERENCES = (
    "PEFT rows train with benchmarks/peft_baselines.py's train_peft, not superlora.train.train (which only takes "
    "SuperLoRA adapters); it reuses TrainOptions, the sampling/augmentation, WarmupCosine, the AdamW groups and "
    "evaluate(), and leaves out only what a single-process CPU run without a run folder does not use: the "
    "Accelerator wrapper (a no-op on one CPU process), checkpoints, events and the run folder. It runs on the CPU "
    "only, the study's device.",
    "A non-finite loss ends the run with status 'nonfinite', as train() does (train() also restores the last good "
    "weights, which a benchmark row does not need).",
    "Adapter seeds: the run seed also seeds PEFT's fixed random parts (VeRA and RandLoRA projection_prng_key, "
    "FourierFT random_loc_seed, TinyLoRA projection_seed, Uni-LoRA proj_seed; VB-LoRA draws from the global RNG "
    "seeded by the run seed), as the study's seed drives SuperLoRA's own factor init and projections.",
    "As in train(), weight decay (0.01) applies to every adapter parameter, so it also pulls VeRA's lambda_b and "
    "RandLoRA's gamma (initialised at 1 and 1/576, not 0) slightly towards 0.",
)


# ---------------------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Layer:
    """One adapted Linear: its module name and weight shape (out_features, in_features)."""

    name: str
    out_features: int
    in_features: int


def target_layers(model) -> list[Layer]:
    """The whole `qkv` Linear of every block, in model order (what PEFT's `target_modules=["qkv"]` matches)."""
    from torch import nn

    layers = [Layer(name, m.out_features, m.in_features) for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and (name == TARGET or name.endswith("." + TARGET))]
    if not layers:
        raise ConfigError(f"the model has no Linear named {TARGET!r}; these baselines need a timm ViT with fused qkv")
    return layers


# ---------------------------------------------------------------------------------------------------- matching
@dataclass(frozen=True)
class Match:
    """A method's config for one budget: its knobs and the exact trainable adapter count they give."""

    method: str
    budget: int
    knobs: tuple[tuple[str, Any], ...]  # sorted (name, value) pairs: the size knobs and fixed settings
    count: int

    @property
    def name(self) -> str:
        return METHOD_NAMES[self.method]

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.knobs)

    @property
    def key(self) -> str:
        """12 hex digits naming the config (the run seed excluded)."""
        text = json.dumps([self.method, [list(k) for k in self.knobs]], sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def describe(self) -> str:
        parts = []
        for name, value in self.knobs:
            if name == "n_frequency_pattern":  # FourierFT's per-layer exceptions: n + 1 on the first few layers
                parts.append(f"{sorted(set(value.values()))[0]} on the first {len(value)} layer(s)")
            else:
                parts.append(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}")
        return ", ".join(parts)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def count(method: str, settings: dict[str, Any], layers: Sequence[Layer]) -> int:
    """Trainable adapter parameters of a method's settings on `layers` (what PEFT creates; head excluded)."""
    if method == "vera":  # per layer: lambda_b (out) and lambda_d (r); A and B are shared fixed buffers
        return sum(l.out_features + settings["r"] for l in layers)
    if method == "fourierft":  # per layer: n_frequency spectral coefficients
        pattern = settings.get("n_frequency_pattern", {})
        return sum(pattern.get(_pattern_key(l.name), settings["n_frequency"]) for l in layers)
    if method == "vblora":  # one shared bank (num_vectors x vector_length) + per-layer top-k logits
        r, n, length = settings["r"], settings["num_vectors"], settings["vector_length"]
        return n * length + sum(r * n * (l.in_features + l.out_features) // length for l in layers)
    if method == "unilora":  # one global vector theta_d; the rest are fixed index / scale buffers
        return settings["theta_d_length"]
    if method == "tinylora":  # one vector v of length u per group of tied layers
        return tinylora_groups(settings["weight_tying"], len(layers)) * settings["u"]
    if method == "randlora":  # per layer: lambda (r x bases) and gamma (bases x min(out, in))
        r = settings["r"]
        return sum(math.ceil(min(l.out_features, l.in_features) / r) * (r + min(l.out_features, l.in_features))
                   for l in layers)
    raise ConfigError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def tinylora_groups(weight_tying: float, num_layers: int) -> int:
    """How many separate v vectors PEFT's TinyLoRA creates (its `_create_and_replace`)."""
    return max(1, round(num_layers * (1.0 - weight_tying)))


def _pattern_key(name: str) -> str:
    """FourierFT's n_frequency_pattern key for one module: PEFT matches `.*\\.{key}$`, so the key is the module
    name after its first component (escaped, since PEFT reads it as a regex)."""
    import re

    return re.escape(name.split(".", 1)[1]) if "." in name else re.escape(name)


def _candidates(method: str, budget: int, layers: Sequence[Layer]) -> list[tuple[dict[str, Any], tuple]]:
    """(settings, preference) of every config worth considering; among equal counts the largest preference
    wins."""
    num = len(layers)
    smallest = min(min(l.out_features, l.in_features) for l in layers)
    found: list[tuple[dict[str, Any], tuple]] = []
    if method == "vera":
        spare = budget - sum(l.out_features for l in layers)
        if spare >= num:
            found.append(({"r": spare // num}, ()))
        else:
            found.append(({"r": 1}, ()))  # the smallest VeRA: over budget, reported as unreachable
    elif method == "fourierft":
        base, extra = divmod(budget, num)
        if base >= 1:
            settings: dict[str, Any] = {"n_frequency": base, "scaling": FOURIERFT_SCALING}
            if extra:  # the first `extra` layers take one more frequency, so the count is the budget exactly
                settings["n_frequency_pattern"] = {_pattern_key(l.name): base + 1 for l in layers[:extra]}
            found.append((settings, ()))
        else:
            found.append(({"n_frequency": 1, "scaling": FOURIERFT_SCALING}, ()))
    elif method == "vblora":
        common = _divisors(math.gcd(*[g for l in layers for g in (l.in_features, l.out_features)]))
        for r in range(1, VBLORA_MAX_RANK + 1):
            for length in common:
                per_vector = length + sum(r * (l.in_features + l.out_features) // length for l in layers)
                vectors = max(VBLORA_TOPK, budget // per_vector)
                found.append(({"r": r, "num_vectors": vectors, "vector_length": length, "topk": VBLORA_TOPK},
                              (-abs(r - VBLORA_PREFERRED_RANK), vectors, length)))
    elif method == "unilora":
        found.append(({"r": UNILORA_RANK, "theta_d_length": max(1, budget)}, ()))
    elif method == "tinylora":
        for groups in range(1, num + 1):  # more groups (less tying) preferred among equal counts
            tying = (num - groups) / num
            found.append(({"r": TINYLORA_RANK, "u": max(1, budget // groups), "weight_tying": tying}, (groups,)))
    elif method == "randlora":
        # r >= min(out, in) leaves one random basis whose r scaled directions are each a trainable parameter
        # (as VeRA's r); PEFT allows it, and it is the only way RandLoRA gets between 2,304 and 3,456 here.
        for r in range(1, max(smallest, budget // num) + 1):
            found.append(({"r": r, "randlora_alpha": RANDLORA_ALPHA_PER_RANK * r}, (-r,)))
    else:
        raise ConfigError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return found


def match(method: str, budget: int, layers: Sequence[Layer]) -> Match:
    """The method's config whose exact trainable count is the largest one <= `budget` (ties: the preference of
    `_candidates`). When no config fits, the method's smallest config (its count is then above the budget: check
    `Match.count <= budget`, or use `fits`)."""
    scored = [(count(method, s, layers), pref, s) for s, pref in _candidates(method, budget, layers)]
    within = [item for item in scored if item[0] <= budget]
    if within:
        best = max(within, key=lambda item: (item[0], item[1]))
    else:
        best = min(scored, key=lambda item: (item[0], [-x for x in item[1]]))
    settings = best[2]
    return Match(method, budget, tuple(sorted(settings.items())), best[0])


def fits(m: Match) -> bool:
    return m.count <= m.budget


def smallest_count(method: str, layers: Sequence[Layer]) -> int:
    """The fewest trainable parameters the method can have on these layers."""
    return match(method, 1, layers).count


def peft_config(m: Match, seed: int = 0):
    """The PEFT config of a match, on the whole qkv Linear of every block, head trained in full; `seed` seeds the
    method's fixed random parts."""
    import peft

    s = dict(m.settings)
    common = dict(target_modules=[TARGET], modules_to_save=[HEAD])
    if m.method == "vera":
        return peft.VeraConfig(r=s["r"], projection_prng_key=seed, **common)
    if m.method == "fourierft":
        return peft.FourierFTConfig(n_frequency=s["n_frequency"], scaling=s["scaling"],
                                    n_frequency_pattern=dict(s.get("n_frequency_pattern", {})),
                                    random_loc_seed=seed, **common)
    if m.method == "vblora":
        return peft.VBLoRAConfig(r=s["r"], num_vectors=s["num_vectors"], vector_length=s["vector_length"],
                                 topk=s["topk"], **common)
    if m.method == "unilora":
        return peft.UniLoraConfig(r=s["r"], theta_d_length=s["theta_d_length"], proj_seed=seed, **common)
    if m.method == "tinylora":
        return peft.TinyLoraConfig(r=s["r"], u=s["u"], weight_tying=s["weight_tying"], projection_seed=seed,
                                   **common)
    if m.method == "randlora":
        return peft.RandLoraConfig(r=s["r"], randlora_alpha=s["randlora_alpha"], projection_prng_key=seed, **common)
    raise ConfigError(f"unknown method {m.method!r}; choose from {', '.join(METHODS)}")


def wrap(model, m: Match, seed: int = 0):
    """`model` (changed in place) wrapped by PEFT with the match's adapter."""
    import peft

    return peft.get_peft_model(model, peft_config(m, seed))


def split_trainable(peft_model) -> tuple[list, list]:
    """(adapter parameters, head parameters) that PEFT left trainable; the head is the `modules_to_save` copy."""
    adapter, head = [], []
    for name, parameter in peft_model.named_parameters():
        if parameter.requires_grad:
            (head if ".modules_to_save." in name else adapter).append(parameter)
    return adapter, head


def peft_counts(peft_model) -> tuple[int, int]:
    """(adapter, head) trainable parameters: PEFT's own `get_nb_trainable_parameters` minus the head copy."""
    trainable, _ = peft_model.get_nb_trainable_parameters()
    head = sum(p.numel() for p in split_trainable(peft_model)[1])
    return trainable - head, head


# ---------------------------------------------------------------------------------------------------- SuperLoRA
@dataclass(frozen=True)
class SuperLoRAPoint:
    """A point of the Pareto study's grid moved to whole-qkv targets, with its exact count there."""

    family: str
    method: str
    budget: str
    config: Any  # SuperLoRAConfig with targets=("qkv",)
    count: int

    @property
    def key(self) -> str:
        return pareto.config_hash(self.config)


def superlora_points(model: str = DEFAULT_MODEL, limit: int = STUDY_LIMIT) -> tuple[list[SuperLoRAPoint], list[str]]:
    """The study's points on whole-qkv targets with fewer than `limit` adapter parameters, and the points that
    cannot be built there (with the reason)."""
    from superlora import count_parameters
    from superlora.base_models import create_meta_model

    meta = create_meta_model(model, num_classes=2)
    points, skipped = [], []
    for p in pareto.study_grid():
        config = p.config.replace(targets=(TARGET,))
        try:
            n = count_parameters(meta, config).adapter
        except ConfigError as err:
            skipped.append(f"{p.method} {p.budget}: {err}")
            continue
        if n < limit:
            points.append(SuperLoRAPoint(p.family, p.method, p.budget, config, n))
    return points, skipped


# ---------------------------------------------------------------------------------------------------- plan
@dataclass
class Planned:
    match: Match
    peft_adapter: int  # PEFT's own count minus the head
    head: int
    saved_bytes: int  # adapter_model.safetensors as PEFT saves it by default (head copy and projections included)
    fixed_values: int  # non-trainable values the adapter adds (random projections, index maps, SVD factors)


def build_base(model: str, num_classes: int, pretrained: bool = True):
    from superlora.base_models import load_model

    return load_model(model, num_classes=num_classes, pretrained=pretrained)


def check_match(base, m: Match, measure_file: bool = False) -> Planned:
    """Wrap a copy of `base` with the match and count with PEFT (and optionally save it to measure the file)."""
    pm = wrap(copy.deepcopy(base), m)
    adapter, head = peft_counts(pm)
    base_buffers = sum(b.numel() for b in base.buffers())
    fixed = sum(b.numel() for b in pm.buffers()) - base_buffers
    saved = 0
    if measure_file:
        with tempfile.TemporaryDirectory() as folder:
            pm.save_pretrained(folder)
            saved = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))
    return Planned(m, adapter, head, saved, fixed)


def plan(model: str, budgets: Sequence[int], methods: Sequence[str] = METHODS, num_classes: int = 4,
         measure_files: bool = True) -> tuple[list[Layer], list[Planned]]:
    base = build_base(model, num_classes, pretrained=True)
    layers = target_layers(base)
    planned = []
    for method in methods:
        for budget in sorted(budgets):
            m = match(method, budget, layers)
            p = check_match(base, m, measure_files)
            if p.peft_adapter != m.count:
                raise RuntimeError(f"{m.name} {m.describe()}: PEFT counts {p.peft_adapter} trainable adapter "
                                   f"parameters, the formula {m.count}")
            planned.append(p)
    return layers, planned


def plan_markdown(model: str, layers: Sequence[Layer], planned: Sequence[Planned], head: int,
                  sl_points: Sequence[SuperLoRAPoint] = (), skipped: Sequence[str] = ()) -> str:
    update = sum(l.out_features * l.in_features for l in layers)
    shapes = sorted({(l.out_features, l.in_features) for l in layers})
    lines = [
        "# PEFT few-parameter baselines: matched configs (generated by `python benchmarks/peft_baselines.py plan`)",
        "",
        f"Model `{model}`; targets: the whole `{TARGET}` Linear of every block ({len(layers)} x "
        + ", ".join(f"{o} × {i}" for o, i in shapes) + f", D = {update:,} update entries). The head ({head:,} "
        "parameters for 4 classes) is trained in full in every run and is not in the counts.",
        "",
        "Adapter params: trainable adapter parameters, the largest count the method's knobs reach without "
        "exceeding the budget; each was checked against PEFT's `get_nb_trainable_parameters` on the real model "
        "(minus the head). Over budget: the method cannot go that low; the count shown is its smallest config. "
        "Fixed values: non-trainable numbers the adapter adds (random projections, index maps, SVD factors), "
        "regenerated from a seed or saved with the adapter. Saved: `adapter_model.safetensors` as PEFT writes it "
        "by default (fixed projections and the head copy included; the head alone is about "
        f"{4 * head:,} bytes).",
        "",
    ]
    standard = [b for b in STANDARD_BUDGETS if any(p.match.budget == b for p in planned)]
    if standard:
        lines += ["Exact trainable adapter parameters at the issue's budgets (–: the method's smallest config is "
                  "larger):", "", "| method | " + " | ".join(f"≤ {b:,}" for b in standard) + " | smallest possible |",
                  "|---|" + "---|" * (len(standard) + 1)]
        for method in dict.fromkeys(p.match.method for p in planned):
            cells = []
            for b in standard:
                p = next(p for p in planned if p.match.method == method and p.match.budget == b)
                cells.append(f"{p.peft_adapter:,}" if fits(p.match) else "–")
            lines.append(f"| {METHOD_NAMES[method]} | " + " | ".join(cells) +
                         f" | {smallest_count(method, layers):,} |")
        lines += ["", "Every budget:", ""]
    lines += ["| method | budget | config | adapter params | fixed values | saved, bytes |",
              "|---|---|---|---|---|---|"]
    index = 0
    while index < len(planned):
        p, m = planned[index], planned[index].match
        if fits(m):
            lines.append(f"| {m.name} | {m.budget:,} | {m.describe()} | {p.peft_adapter:,} | {p.fixed_values:,} | "
                         f"{p.saved_bytes:,} |")
            index += 1
            continue
        # budgets below the method's smallest config: one row (plan() lists each method's budgets ascending)
        below = [q for q in planned[index:] if q.match.method == m.method and not fits(q.match)]
        shown = f"{m.budget:,}" if len(below) == 1 else \
            f"{m.budget:,} … {below[-1].match.budget:,} ({len(below)} budgets)"
        lines.append(f"| {m.name} | {shown} | smallest: {m.describe()} | over budget ({p.peft_adapter:,}) | "
                     f"{p.fixed_values:,} | {p.saved_bytes:,} |")
        index += len(below)
    configs = {(p.match.method, p.match.key) for p in planned if fits(p.match)}
    standard_configs = {(p.match.method, p.match.key) for p in planned if fits(p.match)
                        and p.match.budget in STANDARD_BUDGETS}
    lrs = len(DEFAULT_LRS)
    lines += ["", f"Distinct configs that fit: {len(configs)} ({len(standard_configs)} at the issue's budgets). "
              f"A per-point lr sweep ({lrs} lrs, seed 0) and seeds 1 and 2 at the chosen lr on both tasks is "
              f"{(lrs + 2) * 2} runs of 100 steps per config: {(lrs + 2) * 2 * len(standard_configs):,} runs at the "
              f"issue's budgets, {(lrs + 2) * 2 * len(configs):,} with every budget above."]
    if sl_points:
        lines += ["", f"SuperLoRA points of the Pareto study on the same whole-`{TARGET}` targets (below "
                  f"{STUDY_LIMIT:,} parameters; `count_parameters`): their counts are the study budgets above.", "",
                  "| family | method | budget | adapter params |", "|---|---|---|---|"]
        for s in sorted(sl_points, key=lambda s: s.count):
            lines.append(f"| {s.family} | {s.method} | {s.budget} | {s.count:,} |")
    if skipped:
        lines += ["", "Study points that cannot be built on whole-qkv targets:", ""]
        lines += [f"- {text}" for text in skipped]
    lines += ["", "How a PEFT run differs from the study's `train()`:", ""]
    lines += [f"- {text}" for text in PROTOCOL_DIFFERENCES]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- rows
EXTRA_COLUMNS = ("targets", "target_budget", "fixed_values")  # fixed values: as in the plan (PEFT rows)
COLUMNS = tuple(pareto.COLUMNS) + EXTRA_COLUMNS


def results_path(out: Path, task: str) -> Path:
    return Path(out) / f"peft_baselines_{task}.csv"


TABLE = ResultsTable(COLUMNS, ints=(), floats=())  # rows stay text, as written


def row_key(row: dict[str, Any]) -> tuple[str, str, str, int, str]:
    return (row["task"], row["method"], row["config_hash"], int(row["seed"]), pareto.lr_text(float(row["lr"])))


# ---------------------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class Job:
    """One run: a PEFT match or a SuperLoRA whole-qkv point, on one task, seed and lr."""

    task: str
    family: str
    method: str
    budget: str
    config_hash: str
    seed: int
    lr: float
    target_budget: int
    peft_match: Match | None = None
    superlora: SuperLoRAPoint | None = None

    def key(self) -> tuple[str, str, str, int, str]:
        return (self.task, self.method, self.config_hash, self.seed, pareto.lr_text(self.lr))

    def describe(self) -> str:
        return f"{self.task} {self.method} {self.budget} seed {self.seed} lr {pareto.lr_text(self.lr)}"


@dataclass
class Outcome:
    status: str = "ok"
    accuracy: float = math.nan
    val_loss: float = math.nan
    train_loss: float = math.nan
    adapter: int = 0
    head: int = 0
    step_times: list[tuple[float, float]] = field(default_factory=list)
    fixed_values: int | str = ""  # non-trainable values the adapter adds (PEFT rows)
    model: Any = None  # the trained model (train_peft only; not part of a row)


def train_peft(model: str, train_set, val_set, make_config: Callable[[int], Any], options) -> Outcome:
    """Train one PEFT adapter (`make_config(seed)`: its PEFT config) and the head with the study's protocol; see
    the module docstring and PROTOCOL_DIFFERENCES for how this follows `superlora.train.train`."""
    import peft
    import torch
    import torch.nn.functional as F
    from accelerate.utils import set_seed
    from torch.optim.lr_scheduler import LambdaLR

    from superlora.data import ImageClassificationDataset, build_transforms
    from superlora.base_models import data_config as input_config
    from superlora.train.optim import WarmupCosine
    from superlora.train.prepare import keep_frozen_norms_eval
    from superlora.train.metrics import evaluate
    from superlora.train.sampling import AugmentedImages, StepBatches, steps_per_epoch

    options.validate()
    if options.device == "cuda":
        raise ConfigError("train_peft runs on the CPU only (the study's device); use device='cpu'")
    classes = list(train_set.classes)
    set_seed(options.seed % 2**32)  # as train(): before the head and the adapter are initialised
    base = build_base(model, len(classes))
    data_config = input_config(base)
    base_buffers = sum(b.numel() for b in base.buffers())
    peft_model = peft.get_peft_model(base, make_config(options.seed))
    adapter_params, head_params = split_trainable(peft_model)
    outcome = Outcome(model=peft_model, fixed_values=sum(b.numel() for b in peft_model.buffers()) - base_buffers)
    outcome.adapter, outcome.head = peft_counts(peft_model)

    train_data = AugmentedImages(train_set, build_transforms(data_config, train=True, hflip=train_set.hflip_safe),
                                 options.seed)
    per_epoch = steps_per_epoch(len(train_set), options.batch_size)
    total = options.total_steps(per_epoch)
    groups = [
        dict(params=adapter_params, lr=options.lr, weight_decay=options.weight_decay),
        dict(params=[p for p in head_params if p.ndim >= 2], lr=options.head_lr, weight_decay=options.weight_decay),
        dict(params=[p for p in head_params if p.ndim < 2], lr=options.head_lr, weight_decay=0.0),
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]])
    scheduler = LambdaLR(optimizer, WarmupCosine(options.warmup_steps(total), total))
    sampler = StepBatches(len(train_set), options.batch_size, options.seed, total)
    loader = torch.utils.data.DataLoader(train_data, batch_sampler=sampler, num_workers=options.num_workers)
    trainable = adapter_params + head_params

    peft_model.train()
    keep_frozen_norms_eval(peft_model)
    step, epoch_loss = 0, [0.0, 0]
    for images, labels in loader:
        logits = peft_model(images)
        loss_sum = F.cross_entropy(logits.float(), labels, reduction="sum", label_smoothing=options.label_smoothing)
        batch = sampler.global_count(step)
        if not torch.isfinite(loss_sum):
            outcome.status = "nonfinite"
            return outcome
        (loss_sum / batch).backward()
        if options.grad_clip:
            torch.nn.utils.clip_grad_norm_(trainable, options.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        outcome.step_times.append((time.monotonic(), time.process_time()))
        epoch_loss = [epoch_loss[0] + float(loss_sum.detach()), epoch_loss[1] + batch]
        if step % per_epoch == 0 and step != total:
            epoch_loss = [0.0, 0]  # train()'s train_loss is the mean over the last (possibly partial) epoch
    outcome.train_loss = epoch_loss[0] / epoch_loss[1] if epoch_loss[1] else math.nan
    val_data = ImageClassificationDataset(val_set, build_transforms(data_config, train=False))
    val_loader = torch.utils.data.DataLoader(val_data, batch_size=options.batch_size, num_workers=options.num_workers)
    evaluation = evaluate(peft_model, val_loader, len(classes), torch.device("cpu"))
    outcome.accuracy, outcome.val_loss = evaluation.accuracy, evaluation.loss
    return outcome


def train_superlora(model: str, train_set, val_set, point: SuperLoRAPoint, options) -> Outcome:
    """A SuperLoRA whole-qkv point through `superlora.train.train` itself, as the Pareto study runs it."""
    from superlora.train import NonFiniteLossError, train

    outcome = Outcome()

    def on_event(event) -> None:
        if event.kind == "step":
            outcome.step_times.append((time.monotonic(), time.process_time()))

    try:
        result = train(model, train_set, val_set, point.config.replace(seed=options.seed), options,
                       callbacks=[on_event])
    except NonFiniteLossError:
        outcome.status = "nonfinite"
        outcome.adapter = point.count
        return outcome
    outcome.adapter = result.model.num_trainable_parameters(include_trainable_modules=False)
    outcome.head = result.model.num_trainable_parameters() - outcome.adapter
    outcome.accuracy, outcome.val_loss = result.best_accuracy, result.metrics["loss"]
    outcome.train_loss = result.history[-1]["train_loss"]
    return outcome


_DATA: dict[tuple[str, Any], Any] = {}


def run_job(job: Job, setup, layers: Sequence[Layer], threads: int | None = None) -> dict[str, Any]:
    """Train one job and return its CSV row."""
    import torch

    from superlora.base_models import create_meta_model
    from superlora.train import TrainOptions

    if threads:
        torch.set_num_threads(threads)
    spec = dict(setup.tasks)[job.task]
    if (job.task, spec) not in _DATA:
        _DATA[(job.task, spec)] = pareto.task_sets(job.task, spec)
    train_set, val_set = _DATA[(job.task, spec)]
    options = TrainOptions(steps=setup.steps, batch_size=setup.batch_size, lr=job.lr, head_lr=setup.head_lr,
                           seed=job.seed, eval_every_epoch=False, device="cpu")
    started = time.monotonic()
    if job.peft_match is not None:
        m = job.peft_match
        outcome = train_peft(setup.model, train_set, val_set, lambda seed: peft_config(m, seed), options)
        import peft

        expected = m.count
        config = {"peft": m.method, "peft_version": peft.__version__, "targets": [TARGET], **m.settings}
    else:
        outcome = train_superlora(setup.model, train_set, val_set, job.superlora, options)
        expected, config = job.superlora.count, job.superlora.config.to_dict()
    if outcome.status == "ok" and outcome.adapter != expected:
        raise RuntimeError(f"{job.describe()}: the trained model has {outcome.adapter} adapter parameters, the plan "
                           f"says {expected}")
    seconds = time.monotonic() - started
    # as the study: every parameter of the base model with its new head (the adapter not included)
    base_params = sum(p.numel() for p in create_meta_model(setup.model, len(train_set.classes)).parameters())
    times = outcome.step_times
    spans = [(b - a) / (len(times) - 1) for a, b in zip(times[0], times[-1])] if len(times) > 1 else [math.nan] * 2
    return dict(
        task=job.task, phase="main", family=job.family, method=job.method, budget=job.budget,
        config_hash=job.config_hash, seed=job.seed, lr=pareto.lr_text(job.lr), status=outcome.status,
        accuracy=outcome.accuracy, val_loss=outcome.val_loss, train_loss=outcome.train_loss,
        adapter_params=expected, head_params=outcome.head, base_params=base_params,
        update_size=sum(l.out_features * l.in_features for l in layers),
        lora_r1_params=sum(l.out_features + l.in_features for l in layers), steps=setup.steps,
        batch_size=setup.batch_size, head_lr=pareto.lr_text(setup.head_lr), num_classes=len(train_set.classes),
        train_size=len(train_set), val_size=len(val_set), seconds=round(seconds, 2),
        seconds_per_step=round(spans[0], 4), cpu_seconds_per_step=round(spans[1], 4),
        threads=torch.get_num_threads(), model=setup.model, setup=setup.fingerprint(job.task),
        config=json.dumps(config, separators=(",", ":"), sort_keys=True),
        finished=datetime.now().isoformat(timespec="seconds"), targets=TARGET, target_budget=job.target_budget,
        fixed_values=outcome.fixed_values,
    )


def make_jobs(tasks: Sequence[str], layers: Sequence[Layer], methods: Sequence[str], budgets: Sequence[int],
              seeds: Sequence[int], lrs: Sequence[float], sl_points: Sequence[SuperLoRAPoint] = ()) -> list[Job]:
    """Every (task, config, seed, lr) to run: configs that fit their budget, each config once (two budgets that
    lead to one config share its runs), seed by seed."""
    configs: list[tuple[str, str, str, str, int, Match | None, SuperLoRAPoint | None]] = []
    seen: set[tuple[str, str]] = set()
    for method in methods:
        for budget in budgets:
            m = match(method, budget, layers)
            if fits(m) and (method, m.key) not in seen:
                seen.add((method, m.key))
                configs.append((method, m.name, m.describe(), m.key, budget, m, None))
    for point in sl_points:
        configs.append((point.family, f"{point.method} (qkv)", point.budget, point.key, point.count, None, point))
    jobs = []
    for seed in seeds:
        for task in tasks:
            for family, method, budget, key, target, m, point in configs:
                for lr in lrs:
                    jobs.append(Job(task, family, method, budget, key, seed, lr, target, m, point))
    return jobs


def run_study(jobs: Sequence[Job], setup, out: Path, layers: Sequence[Layer], workers: int, threads: int) -> int:
    """Run every job without a row yet (`study.pool.run_until_done`); returns how many ran."""
    out.mkdir(parents=True, exist_ok=True)
    done = set()
    for task in sorted({job.task for job in jobs}):
        rows = TABLE.read(results_path(out, task))
        other = {r["setup"] for r in rows} - {setup.fingerprint(task)}
        if other:
            raise SystemExit(f"{results_path(out, task)} holds runs of another setup (model weights, steps, batch, "
                             "head lr or data differ); continue with the same options, or choose a new --out")
        done |= {row_key(r) for r in rows}
    started, finished = time.monotonic(), 0
    todo = [job for job in jobs if job.key() not in done]
    print(f"{len(done)} runs on file, {len(todo)} to run", flush=True)

    def pending() -> tuple[int, list[tuple[Any, ...]]]:
        calls = [(job, setup, layers) for job in todo if job.key() not in done]
        return len(done), calls

    def record(job: Job, row: dict[str, Any]) -> None:
        nonlocal finished
        TABLE.append(results_path(out, job.task), row)
        done.add(job.key())
        finished += 1
        shown = f"{row['accuracy']:.2%}" if row["status"] == "ok" else row["status"]
        print(f"[{finished}/{len(todo)}] {job.describe()}: {shown}, {row['adapter_params']:,} params, "
              f"{row['seconds']:.0f} s; {time.monotonic() - started:.0f} s so far", flush=True)

    run_until_done(pending, run_job, record, workers, threads)
    return finished


# ---------------------------------------------------------------------------------------------------- CLI
QUICK_METHODS = ("fourierft", "unilora")
QUICK_BUDGET = 30


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", default="run", choices=("run", "plan"))
    p.add_argument("--quick", action="store_true",
                   help=f"{' and '.join(QUICK_METHODS)} at budget {QUICK_BUDGET}, 1 seed, 1 lr, 3 steps of batch 8 "
                        "on a few images per class of the inspection task, into a temporary folder (a smoke test)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="base model: a name or a folder written by save_model")
    p.add_argument("--out", type=Path, default=None,
                   help=f"results folder (default {RESULTS.relative_to(ROOT)}; --quick: a new temporary folder)")
    p.add_argument("--tasks", nargs="+", choices=list(pareto.TASKS), default=list(pareto.TASKS))
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    p.add_argument("--budgets", nargs="+", type=int, default=list(STANDARD_BUDGETS))
    p.add_argument("--study-budgets", action="store_true",
                   help=f"add the whole-qkv counts of the Pareto study's points below {STUDY_LIMIT:,} parameters")
    p.add_argument("--superlora", action="store_true",
                   help="run: also train the study's SuperLoRA points below the limit on whole-qkv targets "
                        "(--quick: the smallest one)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--lrs", nargs="+", type=float, default=list(DEFAULT_LRS))
    p.add_argument("--steps", type=int, default=pareto.STEPS)
    p.add_argument("--batch-size", type=int, default=pareto.BATCH_SIZE)
    p.add_argument("--head-lr", type=float, default=pareto.HEAD_LR)
    p.add_argument("--workers", type=int, default=1, help="training processes (each with --threads threads)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--markdown", type=Path, default=None, help="plan: also write the table to this file")
    p.add_argument("--no-file-sizes", action="store_true", help="plan: skip saving each adapter to measure its file")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if any(b < 1 for b in args.budgets):
        raise SystemExit("--budgets must be positive numbers of parameters")
    if any(not lr > 0 for lr in args.lrs):
        raise SystemExit("--lrs must be positive learning rates, e.g. --lrs 0.004 0.016")
    sl_points, skipped = superlora_points(args.model) if (args.study_budgets or args.superlora) else ([], [])
    budgets = sorted(set(args.budgets) | ({p.count for p in sl_points} if args.study_budgets else set()))

    if args.command == "plan":
        layers, planned = plan(args.model, budgets, args.methods, measure_files=not args.no_file_sizes)
        head = planned[0].head if planned else 0
        text = plan_markdown(args.model, layers, planned, head, sl_points, skipped)
        print(text)
        if args.markdown:
            atomic_write(args.markdown, lambda tmp: Path(tmp).write_text(text))
        return 0

    if args.quick:
        out = args.out or Path(tempfile.mkdtemp(prefix="peft-baselines-quick-"))
        if out.resolve() == RESULTS.resolve():
            raise SystemExit("--quick never writes into benchmarks/results; give another --out")
        task_specs = {"inspection": pareto.QUICK_TASKS["inspection"]}
        methods, budgets, seeds, lrs, steps, batch = QUICK_METHODS, [QUICK_BUDGET], args.seeds[:1], args.lrs[:1], 3, 8
        sl_points = sorted(sl_points, key=lambda p: p.count)[:1]  # --superlora: the smallest SuperLoRA point
    else:
        out = args.out or RESULTS
        task_specs = {name: pareto.TASKS[name] for name in args.tasks}
        methods, seeds, lrs, steps, batch = args.methods, args.seeds, args.lrs, args.steps, args.batch_size
        if not args.superlora:
            sl_points = []
    if pareto.weights_digest(args.model) == "none" and (args.model == DEFAULT_MODEL or Path(args.model).exists()):
        raise SystemExit(f"no weights for {args.model}; give another --model, e.g. a save_model folder")
    from superlora.base_models import create_meta_model

    layers = target_layers(create_meta_model(args.model, num_classes=2))
    setup = pareto.Setup(args.model, pareto.weights_digest(args.model), steps, batch, args.head_lr,
                         tuple(task_specs.items()))
    jobs = make_jobs(list(task_specs), layers, methods, budgets, seeds, lrs, sl_points)
    unreachable = [f"{METHOD_NAMES[m]} {b}" for m in methods for b in budgets if not fits(match(m, b, layers))]
    if unreachable:
        print("below the method's smallest config (skipped):", ", ".join(unreachable), flush=True)
    ran = run_study(jobs, setup, out, layers, args.workers, args.threads)
    print(f"done: {ran} runs; results in {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
