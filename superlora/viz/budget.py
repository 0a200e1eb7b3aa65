"""The budget figure: trainable adapter parameters against rank, for a config and every preset.

Every number is `plan_adapter(target_shapes, config).num_parameters`, the plan `count_parameters` and the real
adapter module read, so the curves are exact for the targets given (not a formula fitted to them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import plotly.graph_objects as go

from superlora.config import PRESET_DESCRIPTIONS, PRESETS, SuperLoRAConfig, preset
from superlora.errors import ConfigError
from superlora.functional.plan import plan_adapter
from superlora.viz.common import GROUP_PALETTE, fmt_count, new_figure

CURRENT = "current"
MARKER = "marker"
LORA_FLOOR = "lora-r1"

TargetShapes = Sequence[tuple[int, int]]


@dataclass(frozen=True)
class BudgetCurve:
    """Adapter parameters of one config family at each rank; None where that rank does not fit the targets."""

    name: str  # a preset key, or "current"
    label: str
    ranks: tuple[int, ...]
    parameters: tuple[int | None, ...]
    error: str | None = None  # the first ConfigError met, when some rank did not fit


def adapter_parameters(target_shapes: TargetShapes, config: SuperLoRAConfig) -> int:
    """Exact adapter parameter count of `config` on targets of these shapes (what count_parameters reports)."""
    return plan_adapter(target_shapes, config).num_parameters


def _curve(name: str, label: str, target_shapes: TargetShapes, configs: Sequence[tuple[int, SuperLoRAConfig | str]]
           ) -> BudgetCurve:
    ranks, counts, error = [], [], None
    for rank, config in configs:
        ranks.append(rank)
        try:
            if isinstance(config, str):
                raise ConfigError(config)
            counts.append(adapter_parameters(target_shapes, config))
        except ConfigError as err:
            counts.append(None)
            error = error or str(err)
    return BudgetCurve(name, label, tuple(ranks), tuple(counts), error)


def _preset_at(name: str, rank: int, config: SuperLoRAConfig) -> SuperLoRAConfig | str:
    try:
        return preset(name, rank=rank, targets=config.targets, seed=config.seed)
    except ConfigError as err:
        return str(err)


def budget_curves(
    target_shapes: TargetShapes,
    config: SuperLoRAConfig,
    presets: Sequence[str] = tuple(PRESETS),
    max_rank: int | None = None,
) -> list[BudgetCurve]:
    """The current config's curve (its other fields fixed, rank varied) and one curve per preset at defaults.

    Ranks run 1..max_rank (default: 16, or the config's rank if larger). A config with one rank per mode has no
    single-rank curve; it is shown by its marker only (see `budget_figure`).
    """
    top = max_rank or max(16, config.reference_rank)
    ranks = range(1, top + 1)
    curves = []
    if isinstance(config.rank, int):
        label = f"current ({config.name})"
        curves.append(_curve(CURRENT, label, target_shapes, [(r, config.replace(rank=r)) for r in ranks]))
    for name in presets:
        label = PRESET_DESCRIPTIONS.get(name, name).split(":")[0]
        curves.append(_curve(name, label, target_shapes, [(r, _preset_at(name, r, config)) for r in ranks]))
    return curves


def budget_figure(
    target_shapes: TargetShapes,
    config: SuperLoRAConfig,
    presets: Sequence[str] = tuple(PRESETS),
    max_rank: int | None = None,
    title: str | None = None,
) -> go.Figure:
    """Adapter parameters (log scale) against rank: one line per preset, the current config highlighted.

    Each trace carries `meta["key"]`: a preset key, "current" (the config with its rank varied), "marker" (the
    config at its own rank), or "lora-r1" (LoRA at rank 1, the smallest budget any per-layer LoRA reaches on
    these targets; everything below that line is out of its reach). A preset that does not fit the targets
    (e.g. LoTR on targets of different shapes) has no points, "(does not fit)" in its legend entry and the
    reason in `meta["error"]`.
    """
    curves = budget_curves(target_shapes, config, presets, max_rank)
    ranks = list(range(1, (max_rank or max(16, config.reference_rank)) + 1))
    total = sum(m * n for m, n in target_shapes)
    figure = new_figure(title or f"Trainable adapter parameters vs rank "
                                  f"({len(target_shapes)} targets, D = {fmt_count(total)} update entries)")
    figure.update_layout(title_subtitle_text="dashed: LoRA at rank 1, its smallest budget; below it, only sharing "
                                            "across weights reaches", margin_t=80)
    for index, curve in enumerate(curves):
        is_current = curve.name == CURRENT
        fits = any(count is not None for count in curve.parameters)
        colour = "black" if is_current else GROUP_PALETTE[index % len(GROUP_PALETTE)]
        figure.add_trace(go.Scatter(
            x=list(curve.ranks) if fits else [], y=list(curve.parameters) if fits else [],
            name=curve.label if fits else f"{curve.label} (does not fit)", mode="lines+markers",
            line=dict(color=colour, width=4 if is_current else 1.5, dash="solid" if is_current else "dot"),
            marker=dict(size=5), meta=dict(key=curve.name, error=curve.error),
            hovertemplate=curve.label + "<br>rank %{x}: %{y:,} parameters<extra></extra>",
            legendrank=1 if is_current else 100 + index,
        ))
    figure.add_trace(go.Scatter(
        x=[config.reference_rank], y=[adapter_parameters(target_shapes, config)], name="current config",
        mode="markers", marker=dict(symbol="star", size=18, color="crimson", line=dict(color="black", width=1)),
        meta=dict(key=MARKER, error=None), legendrank=0,
        hovertemplate=f"current config ({config.name})<br>rank %{{x}}: %{{y:,}} parameters<extra></extra>",
    ))
    lora_floor = sum(m + n for m, n in target_shapes)
    figure.add_trace(go.Scatter(
        x=[ranks[0], ranks[-1]], y=[lora_floor, lora_floor], name="LoRA minimum (r = 1)", mode="lines",
        line=dict(color="grey", dash="dash", width=1), meta=dict(key=LORA_FLOOR, error=None),
        hovertemplate="LoRA at rank 1: %{y:,} parameters, its smallest budget<extra></extra>", legendrank=2,
    ))
    figure.update_xaxes(title="rank r", dtick=1 if len(ranks) <= 16 else None)
    figure.update_yaxes(title="adapter parameters (log scale)", type="log")
    figure.update_layout(legend=dict(title="method"))
    return figure


def trace_by_key(figure: go.Figure, key: str) -> go.BaseTraceType:
    """The trace of a figure whose `meta["key"]` is `key` (e.g. "lora", "current", "marker")."""
    for trace in figure.data:
        if isinstance(trace.meta, dict) and trace.meta.get("key") == key:
            return trace
    raise KeyError(f"no trace with key {key!r}; keys: {[getattr(t, 'meta', {}).get('key') for t in figure.data]}")


def describe_config(config: SuperLoRAConfig) -> str:
    """A short one-line summary of the knobs that set the budget, e.g. 'r=4 G=2 M=3 K=1 ρ=0.1 shuffle'."""
    parts = [f"r={config.rank}", f"G={config.groups}", f"M={config.fold_order}", f"K={config.splits}"]
    if config.ratio < 1:
        parts.append(f"ρ={config.ratio:g}")
    if config.shuffle:
        parts.append("shuffle")
    return " ".join(parts)


def budget_map_figure(
    target_shapes: TargetShapes,
    families: Mapping[str, Sequence[SuperLoRAConfig]],
    title: str | None = None,
) -> go.Figure:
    """Every config of every family as a point on a log axis of adapter parameters, one row per family, with
    LoRA's rank-1 budget as a vertical line: points left of it are budgets no per-layer LoRA reaches.

    Trace meta: {"key": family}, with `customdata` holding each point's config summary. Configs that do not
    fit the targets are left out (their count is in meta["skipped"]).
    """
    figure = new_figure(title or "Which budgets each method reaches on these targets")
    for index, (family, configs) in enumerate(families.items()):
        counts, labels, skipped = [], [], 0
        for config in configs:
            try:
                counts.append(adapter_parameters(target_shapes, config))
            except ConfigError:
                skipped += 1
                continue
            labels.append(describe_config(config))
        figure.add_trace(go.Scatter(
            x=counts, y=[family] * len(counts), mode="markers", name=family, customdata=labels,
            marker=dict(size=9, color=GROUP_PALETTE[index % len(GROUP_PALETTE)], opacity=0.7,
                        line=dict(color="white", width=0.5)),
            meta=dict(key=family, skipped=skipped),
            hovertemplate=f"{family}<br>%{{customdata}}<br>%{{x:,}} parameters<extra></extra>",
        ))
    lora_floor = sum(m + n for m, n in target_shapes)
    figure.add_vline(x=lora_floor, line=dict(color="grey", dash="dash"),
                     annotation=dict(text=f"LoRA r = 1: {fmt_count(lora_floor)}", font=dict(color="grey")))
    figure.update_xaxes(type="log", title="adapter parameters (log scale)")
    figure.update_yaxes(autorange="reversed")
    figure.update_layout(showlegend=False, height=120 + 45 * len(families))
    return figure
