"""Matching PEFT's few-parameter methods to a budget on whole-`qkv` targets: the adapted layers, each method's
exact trainable count (`count`), the config that comes closest to a budget without exceeding it (`match`), its
PEFT config, and the Pareto study's SuperLoRA points moved to the same targets (`superlora_points`).

PEFT adapts whole `nn.Linear` modules, so it cannot cut q and v out of timm's fused `qkv` Linear: every row of
this study adapts the WHOLE `qkv` Linear of every block, SuperLoRA's included (`targets=("qkv",)`)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.study.pareto.grid import DEFAULT_MODEL, study_grid
from benchmarks.study.sweep import HEAD_ONLY_FAMILY, config_hash
from superlora.errors import ConfigError

TARGET = "qkv"  # the whole fused attention Linear of every block
HEAD = "head"
STANDARD_BUDGETS = (30, 100, 300, 1000, 3000)
STUDY_LIMIT = 10_000  # the issue compares at the SuperLoRA points below this many parameters

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
        return config_hash(self.config)


def superlora_points(model: str = DEFAULT_MODEL, limit: int = STUDY_LIMIT) -> tuple[list[SuperLoRAPoint], list[str]]:
    """The study's adapter points on whole-qkv targets with fewer than `limit` adapter parameters, and the points
    that cannot be built there (with the reason); its head-only baseline has no targets and is left out."""
    from superlora import count_parameters
    from superlora.base_models import create_meta_model

    meta = create_meta_model(model, num_classes=2)
    points, skipped = [], []
    for p in study_grid():
        if p.family == HEAD_ONLY_FAMILY:  # no adapter, no targets: nothing to move to whole qkv
            continue
        config = p.config.replace(targets=(TARGET,))
        try:
            n = count_parameters(meta, config).adapter
        except ConfigError as err:
            skipped.append(f"{p.method} {p.budget}: {err}")
            continue
        if n < limit:
            points.append(SuperLoRAPoint(p.family, p.method, p.budget, config, n))
    return points, skipped
