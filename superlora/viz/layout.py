"""The layout figure: which entries of which target each group produces, before and after shuffling.

`entry_groups` derives, for every entry of the update vector δ (target order, row-major), the group that produces
it, from the same `AdapterPlan` spans and the same seeded permutation the adapter uses, so the picture is the
adapter's real assignment. Targets with more entries than fit on screen are shown in bins: a cell's colour is
the group that produces most of its entries, and the hover text gives that group's share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from torch import nn

from superlora.config import SuperLoRAConfig
from superlora.counting import count_from_plan
from superlora.functional.plan import AdapterPlan, plan_adapter
from superlora.functional.projection import inverse_permutation, shuffle_permutation
from superlora.targets import Target, resolve_targets
from superlora.viz.common import TEMPLATE, fmt_count, group_colorbar, group_colorscale, shape_text

DEFAULT_BINS = 192


def model_plan(model: nn.Module, config: SuperLoRAConfig) -> tuple[list[Target], AdapterPlan]:
    """The targets of `config` in `model` and their plan, as the adapter would build them (meta models work)."""
    targets = resolve_targets(model, config.targets)
    return targets, plan_adapter([t.shape for t in targets], config)


def entry_groups(plan: AdapterPlan, seed: int, shuffled: bool | None = None) -> np.ndarray:
    """Group id of every entry of δ = [vec(ΔW_1); …; vec(ΔW_L)], as an int32 array of length D.

    shuffled=None follows the plan; False gives the assignment before the shuffle (group g produces the span
    [start, stop) of δ). After the shuffle δ = d[P⁻¹], exactly as `SuperLoRAAdapter.delta_weights` gathers it.
    """
    sizes = [group.size for group in plan.groups]
    before = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
    if not (plan.shuffle if shuffled is None else shuffled):
        return before
    unshuffle = inverse_permutation(shuffle_permutation(plan.total, seed)).numpy()
    return before[unshuffle]


@dataclass(frozen=True)
class TargetStrip:
    """One target's entries in `bins` consecutive bins: the majority group of each bin and its share."""

    name: str
    shape: tuple[int, int]
    edges: np.ndarray  # bins + 1 entry offsets inside vec(ΔW) (row-major)
    majority: np.ndarray  # group id producing most entries of each bin (lowest id on ties)
    share: np.ndarray  # fraction of the bin's entries that the majority group produces

    @property
    def bins(self) -> int:
        return len(self.majority)

    @property
    def exact(self) -> bool:
        """One entry per bin: the strip is the assignment itself, not a summary."""
        return self.bins == int(self.edges[-1])


def target_strips(plan: AdapterPlan, names: Sequence[str], groups_of_entries: np.ndarray,
                  max_bins: int = DEFAULT_BINS, first_entries: int | None = None) -> list[TargetStrip]:
    """Cut each target's span of `groups_of_entries` (from `entry_groups`) into at most `max_bins` bins.

    first_entries=N keeps only the first N entries of each target, one per bin (a zoom that shows every entry).
    """
    num_groups = len(plan.groups)
    strips = []
    for target, (name, (rows, cols)) in enumerate(zip(names, plan.target_shapes)):
        size = rows * cols if first_entries is None else min(rows * cols, first_entries)
        ids = groups_of_entries[plan.offsets[target] : plan.offsets[target] + size].astype(np.int64)
        bins = size if first_entries is not None else min(size, max_bins)
        edges = np.linspace(0, size, bins + 1).round().astype(np.int64)
        bin_of_entry = np.repeat(np.arange(bins), np.diff(edges))
        # Counts per (bin, group) in one bincount: no loop over entries.
        counts = np.bincount(bin_of_entry * num_groups + ids, minlength=bins * num_groups).reshape(bins, num_groups)
        majority = counts.argmax(axis=1)
        share = counts[np.arange(bins), majority] / np.diff(edges)
        strips.append(TargetStrip(name, (rows, cols), edges, majority.astype(np.int32), share))
    return strips


def _strip_heatmap(strips: Sequence[TargetStrip], num_groups: int, show_scale: bool) -> go.Heatmap:
    width = max(strip.bins for strip in strips)
    z = np.full((len(strips), width), np.nan)
    text = [[""] * width for _ in strips]
    for row, strip in enumerate(strips):
        z[row, : strip.bins] = strip.majority
        for b in range(strip.bins):
            lo, hi = int(strip.edges[b]), int(strip.edges[b + 1])
            where = f"entry {lo}" if hi - lo == 1 else f"entries {lo}–{hi - 1}"
            share = "" if strip.exact else f" ({100 * strip.share[b]:.0f}% of them)"
            text[row][b] = f"{strip.name}<br>{where}<br>group {strip.majority[b]}{share}"
    return go.Heatmap(
        z=z, y=[strip.name for strip in strips], x=list(range(width)), text=text,
        hovertemplate="%{text}<extra></extra>", colorscale=group_colorscale(num_groups), zmin=-0.5,
        zmax=num_groups - 0.5, showscale=show_scale, colorbar=group_colorbar(num_groups), xgap=0, ygap=1,
    )


def group_table(plan: AdapterPlan, targets: Sequence[Target]) -> go.Table:
    """One row per group: its span of the update vector, targets, D_g, P_g (and whether a fixed projection lifts
    P_g entries to D_g), fold shape, pieces, parameters."""
    counts = count_from_plan(plan, targets)

    def covered(names: Sequence[str]) -> str:
        return names[0] if len(names) == 1 else f"{names[0]} … {names[-1]} ({len(names)})"

    columns = {
        "group": [g.index for g in counts],
        "span of d": [f"{fmt_count(p.start)}–{fmt_count(p.stop - 1)}" for p in plan.groups],
        "targets (unshuffled)": [covered(g.targets) for g in counts],
        "D_g": [fmt_count(g.size) for g in counts],
        "P_g": [fmt_count(g.input_size) for g in counts],
        "P_g → D_g": ["fixed projection" if p.projected else "—" for p in plan.groups],
        "folded shape": [shape_text(g.shape) for g in counts],
        "pieces": [" ⊗ ".join(g.pieces) for g in counts],
        "parameters": [fmt_count(g.parameters) for g in counts],
    }
    return go.Table(
        header=dict(values=[f"<b>{name}</b>" for name in columns], align="left", font=dict(size=11)),
        cells=dict(values=list(columns.values()), align="left", font=dict(size=11), height=24),
        columnwidth=[0.5, 1.6, 2.6, 0.9, 0.9, 1.1, 1, 2, 0.9],
    )


def layout_figure(
    plan: AdapterPlan,
    targets: Sequence[Target],
    seed: int = 0,
    max_bins: int = DEFAULT_BINS,
    first_entries: int | None = None,
    title: str | None = None,
) -> go.Figure:
    """Each target as a strip of its update entries coloured by group, before and (when shuffled) after the
    shuffle, above a table of each group's span, folded shape, P_g, pieces and parameter count.

    Heatmap z holds group ids (NaN pads targets with fewer bins than the widest). Targets longer than max_bins
    are binned and a cell shows the group producing most of its entries, as the panel title says;
    first_entries=N instead shows the first N entries of every target, one cell each.
    """
    names = [t.name for t in targets]
    num_groups = len(plan.groups)
    panels = [("before shuffle" if plan.shuffle else "shuffle off", entry_groups(plan, seed, shuffled=False))]
    if plan.shuffle:
        panels.append(("after shuffle (δ = P⁻¹ d)", entry_groups(plan, seed, shuffled=True)))
    strips = [target_strips(plan, names, ids, max_bins, first_entries) for _, ids in panels]
    exact = all(strip.exact for strip in strips[0])
    per_bin = max(int(np.diff(strip.edges).max()) for strip in strips[0])
    if first_entries is not None:
        how = f"the first {fmt_count(max(s.bins for s in strips[0]))} entries of each vec(ΔW), one cell each"
    elif exact:
        how = "every entry of vec(ΔW) (row-major), one cell each"
    else:
        how = (f"vec(ΔW) (row-major) in cells of up to {fmt_count(per_bin)} consecutive entries, "
               "coloured by the group producing most of them")
    subtitles = []
    for (label, _), panel in zip(panels, strips):
        text = f"{label}: {how}"
        if not all(s.exact for s in panel):
            mean_share = float(np.mean(np.concatenate([s.share for s in panel])))
            if mean_share < 0.995:
                text += f"; that group makes {100 * mean_share:.0f}% of a cell on average"
        subtitles.append(text)
    strip_height = max(16, min(28, 480 // max(1, len(names))))
    heatmap_height = 50 + strip_height * len(names)
    table_height = 60 + 36 * min(num_groups, 16)
    heights = [heatmap_height] * len(panels) + [table_height]
    figure = make_subplots(
        rows=len(heights), cols=1, row_heights=heights, vertical_spacing=50 / sum(heights),
        specs=[[{"type": "heatmap"}]] * len(panels) + [[{"type": "table"}]],
        subplot_titles=[*subtitles, "groups: span of d, folded tensor, factors"],
    )
    for row, panel in enumerate(strips, start=1):
        figure.add_trace(_strip_heatmap(panel, num_groups, show_scale=row == 1), row=row, col=1)
        figure.update_yaxes(autorange="reversed", row=row, col=1, tickfont=dict(size=10))
        figure.update_xaxes(showgrid=False, row=row, col=1)
    figure.add_trace(group_table(plan, targets), row=len(heights), col=1)
    # The colour bar spans the first strip panel only, not the table.
    low, high = figure.layout.yaxis.domain
    figure.data[0].colorbar.update(y=(low + high) / 2, len=high - low, yanchor="middle")
    figure.update_layout(
        template=TEMPLATE, height=sum(heights) + 110,
        title=title or f"Layout: {len(names)} targets, D = {fmt_count(plan.total)} update entries, "
                       f"{num_groups} group(s), {fmt_count(plan.num_parameters)} adapter parameters",
        margin=dict(l=40, r=30, t=90, b=20),
    )
    figure.update_annotations(font=dict(size=12))
    return figure
