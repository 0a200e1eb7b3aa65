"""Shared pieces of the figures: colours for group ids, number formatting, figure defaults."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.colors import qualitative

# Enough distinct colours for most layouts; beyond this many groups the ids cycle through a continuous scale.
GROUP_PALETTE: tuple[str, ...] = tuple(qualitative.Dark24)
TEMPLATE = "plotly_white"


def group_colorscale(num_groups: int) -> list[list[float | str]]:
    """A stepped colour scale for a heatmap whose z holds group ids 0..num_groups-1 (zmin=-0.5, zmax=G-0.5)."""
    if num_groups > len(GROUP_PALETTE):
        # Too many groups to tell apart by hue; a continuous scale still orders them.
        from plotly.colors import sequential

        return [[i / (len(sequential.Turbo) - 1), c] for i, c in enumerate(sequential.Turbo)]
    scale: list[list[float | str]] = []
    for g in range(num_groups):
        colour = GROUP_PALETTE[g]
        scale.append([g / num_groups, colour])
        scale.append([(g + 1) / num_groups, colour])
    return scale


def group_colorbar(num_groups: int) -> dict:
    """A colour bar that labels each group id (or only the ends when there are many)."""
    if num_groups <= 24:
        ticks = list(range(num_groups))
    else:
        ticks = [0, num_groups - 1]
    return dict(title="group", tickvals=ticks, ticktext=[str(t) for t in ticks], len=0.9)


def fmt_count(value: int) -> str:
    """1234567 -> '1,234,567'."""
    return f"{value:,d}"


def shape_text(shape: tuple[int, ...]) -> str:
    """(64, 64, 64) -> '64×64×64'."""
    return "×".join(str(side) for side in shape)


def new_figure(title: str | None = None) -> go.Figure:
    figure = go.Figure()
    figure.update_layout(template=TEMPLATE, title=title, margin=dict(l=60, r=30, t=60 if title else 30, b=50))
    return figure
