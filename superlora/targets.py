"""Resolve a config's `targets` to the weight matrices of a model, in model order.

A target is one matrix ΔW is added to: a whole `nn.Linear` weight, or one row block (q, k or v) of a fused
`*qkv` Linear. Patterns:
- `q`, `k`, `v`: the matching row block of every Linear whose name ends in `qkv` (timm ViTs), and any Linear
  named exactly `q`/`k`/`v`;
- a pattern with `*`, `?` or `[`: a glob over full module names;
- any other string: a module whose full name is the string or ends with `.string` (as in PEFT).
A matched module that is not a Linear (e.g. `mlp`, `blocks.3`) stands for every Linear inside it.
Only the shapes of weights are read, so this works on `meta`-device models.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn

from superlora.errors import ConfigError

FUSED_BLOCKS = ("q", "k", "v")
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Target:
    """One adapted matrix: `rows` is the row range inside the module's weight (the whole weight for Linear)."""

    name: str
    module_name: str
    rows: tuple[int, int]
    shape: tuple[int, int]


def _is_fused_qkv(name: str, module: nn.Linear) -> bool:
    return name.rsplit(".", 1)[-1].lower().endswith("qkv") and module.out_features % 3 == 0


def _adaptable(module: nn.Module) -> bool:
    # nn.MultiheadAttention reads out_proj.weight directly instead of calling the layer, so a wrapper would be
    # bypassed silently; refuse it rather than train nothing.
    return isinstance(module, nn.Linear) and type(module).__name__ != "NonDynamicallyQuantizableLinear"


def _name_matches(pattern: str, name: str) -> bool:
    if _GLOB_CHARS & set(pattern):
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern or name.endswith("." + pattern)


def _linears_under(prefix: str, modules: dict[str, nn.Module]) -> list[str]:
    start = prefix + "." if prefix else ""
    return [name for name, module in modules.items() if name.startswith(start) and _adaptable(module)]


def _candidate_names(model: nn.Module) -> list[str]:
    fused, names = False, []
    for name, module in model.named_modules():
        if _adaptable(module):
            fused = fused or _is_fused_qkv(name, module)
            suffix = name.rsplit(".", 1)[-1]
            if suffix not in names and suffix not in FUSED_BLOCKS:
                names.append(suffix)
    return (list(FUSED_BLOCKS) if fused else []) + names


def target_names(model: nn.Module, exclude: Sequence[str] = ()) -> list[str]:
    """The target names a user may pick for `model`: q, k, v when it has fused qkv layers, then each adaptable
    Linear's last name (qkv, proj, fc1, ...) in model order, minus names that would reach into the modules of
    `exclude` (kept trainable, e.g. the classifier head). Each name is a pattern `resolve_targets` accepts; the
    studio, the widgets and the error messages all offer this list."""
    excluded = set(resolve_trainable(model, exclude)) if exclude else set()
    names = []
    for pattern in _candidate_names(model):
        found = resolve_targets(model, [pattern]) if excluded else []
        if not any(t.module_name == e or t.module_name.startswith(e + ".") for t in found for e in excluded):
            names.append(pattern)
    return names


def _hint(model: nn.Module) -> str:
    names = _candidate_names(model)
    return f"this model's Linear layers can be targeted as: {', '.join(names[:15])}" if names else (
        "this model has no nn.Linear layers to adapt"
    )


def resolve_targets(model: nn.Module, patterns: Sequence[str]) -> list[Target]:
    """The targets of `patterns` in `model`, in model order (q before k before v inside a fused layer)."""
    modules = dict(model.named_modules())
    if any(type(m).__name__ == "AdaptedLinear" for m in modules.values()):
        raise ConfigError("this model already carries a SuperLoRA adapter; call unload() or merge_and_unload() first")
    chosen: dict[str, set[str | None]] = {}  # module name -> {None (whole) or "q"/"k"/"v"}
    for pattern in patterns:
        matched = False
        if pattern in FUSED_BLOCKS:
            for name, module in modules.items():
                if _adaptable(module) and _is_fused_qkv(name, module):
                    chosen.setdefault(name, set()).add(pattern)
                    matched = True
        for name, module in modules.items():
            if not name or not _name_matches(pattern, name):
                continue
            for linear in [name] if _adaptable(module) else _linears_under(name, modules):
                chosen.setdefault(linear, set()).add(None)
                matched = True
        if not matched:
            raise ConfigError(f"targets: {pattern!r} matches no nn.Linear layer; {_hint(model)}")
    order = {name: i for i, name in enumerate(modules)}
    targets = []
    for name in sorted(chosen, key=order.__getitem__):
        parts = chosen[name]
        weight = modules[name].weight
        out_features, in_features = int(weight.shape[0]), int(weight.shape[1])
        if None in parts:
            if len(parts) > 1:
                blocks = ", ".join(sorted(p for p in parts if p))
                raise ConfigError(
                    f"targets: {name} is selected whole and by its row block(s) {blocks}; keep one of the two"
                )
            targets.append(Target(name, name, (0, out_features), (out_features, in_features)))
            continue
        block = out_features // 3
        for index, part in enumerate(FUSED_BLOCKS):
            if part in parts:
                rows = (index * block, (index + 1) * block)
                targets.append(Target(f"{name}.{part}", name, rows, (block, in_features)))
    return targets


def resolve_trainable(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Names of the modules kept trainable (e.g. the classifier head); each pattern must match something."""
    modules = dict(model.named_modules())
    names: list[str] = []
    for pattern in patterns:
        found = [name for name in modules if name and _name_matches(pattern, name)]
        # Keep only the outermost matches so a module's parameters are not listed twice.
        found = [n for n in found if not any(n.startswith(o + ".") for o in found if o != n)]
        if not found:
            top = ", ".join(name for name in modules if name and "." not in name)
            raise ConfigError(f"trainable: {pattern!r} matches no module; top-level modules are: {top} (a model "
                              "without a classifier head, e.g. a diffusion UNet, takes trainable=())")
        names.extend(n for n in found if n not in names)
    return names
