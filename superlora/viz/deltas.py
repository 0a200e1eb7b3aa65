"""Figures of the learned updates: one ΔW as a heatmap, ‖ΔW‖_F per block and target, singular-value spectra.

Input is the mapping `SuperLoRAModel.delta_weights()` returns (target name -> s·ΔW). Target names are split into a
block (the module path up to its first number, e.g. `blocks.3`) and a kind (the rest, e.g. `attn.qkv.q`), so a
ViT's updates form a blocks × kinds grid.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import Tensor

from superlora.viz.common import TEMPLATE, new_figure, shape_text

_BLOCK = re.compile(r"^(.*?\.\d+)\.(.+)$")
NO_BLOCK = "(no block)"  # the row label of targets outside any numbered block
DEFAULT_MAX_SIDE = 256


def split_block(name: str) -> tuple[str, str]:
    """'blocks.3.attn.qkv.q' -> ('blocks.3', 'attn.qkv.q'); a name without a numbered module -> ('', name)."""
    match = _BLOCK.match(name)
    return (match.group(1), match.group(2)) if match else ("", name)


def effective_rank(singular_values: Tensor | np.ndarray) -> float:
    """Roy & Vetterli's effective rank exp(H(p)), p = σ / Σσ: 1 for rank one, k for k equal values, 0 for ΔW = 0."""
    values = torch.as_tensor(singular_values, dtype=torch.float64)
    total = values.sum()
    if total <= 0:
        return 0.0
    p = values[values > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def numerical_rank(singular_values: Tensor | np.ndarray, shape: tuple[int, int]) -> int:
    """Singular values above σ_max · max(m, n) · eps(float32): torch.linalg.matrix_rank's default tolerance."""
    values = torch.as_tensor(singular_values, dtype=torch.float64)
    if values.numel() == 0 or values.max() <= 0:
        return 0
    tolerance = values.max() * max(shape) * torch.finfo(torch.float32).eps
    return int((values > tolerance).sum())


@dataclass(frozen=True)
class DeltaSummary:
    """Numbers of one target's update."""

    name: str
    block: str
    kind: str
    shape: tuple[int, int]
    frobenius: float
    singular_values: np.ndarray  # descending, as torch.linalg.svdvals gives them
    effective_rank: float
    numerical_rank: int


def summarize_deltas(deltas: Mapping[str, Tensor]) -> list[DeltaSummary]:
    """‖ΔW‖_F, singular values and ranks of every update, in the mapping's (target) order."""
    summaries = []
    for name, delta in deltas.items():
        matrix = delta.detach().to("cpu", torch.float32)
        values = torch.linalg.svdvals(matrix)
        block, kind = split_block(name)
        shape = (int(matrix.shape[0]), int(matrix.shape[1]))
        summaries.append(DeltaSummary(
            name, block, kind, shape, float(torch.linalg.matrix_norm(matrix)), values.numpy(),
            effective_rank(values), numerical_rank(values, shape),
        ))
    return summaries


def _pool(matrix: np.ndarray, max_side: int) -> tuple[np.ndarray, int]:
    """Mean over square blocks so that no side exceeds max_side; returns the pooled matrix and the block side."""
    factor = max(1, math.ceil(max(matrix.shape) / max_side))
    if factor == 1:
        return matrix, 1
    rows, cols = (math.ceil(side / factor) * factor for side in matrix.shape)
    padded = np.full((rows, cols), np.nan, dtype=np.float64)
    padded[: matrix.shape[0], : matrix.shape[1]] = matrix
    return np.nanmean(padded.reshape(rows // factor, factor, cols // factor, factor), axis=(1, 3)), factor


def delta_heatmap(delta: Tensor, name: str = "ΔW", max_side: int = DEFAULT_MAX_SIDE) -> go.Figure:
    """One update as a heatmap (rows = output features, columns = input features), zero white.

    A matrix with a side above max_side is shown as means over factor × factor blocks, and the title says so;
    otherwise z is the matrix itself.
    """
    matrix = delta.detach().to("cpu", torch.float32).numpy()
    shown, factor = _pool(matrix, max_side)
    limit = float(np.abs(matrix).max()) or 1.0
    note = "" if factor == 1 else f", each cell the mean of a {factor}×{factor} block"
    figure = new_figure(f"{name}: {shape_text(matrix.shape)}{note}")
    figure.add_trace(go.Heatmap(
        z=shown, x0=0, dx=factor, y0=0, dy=factor, colorscale="RdBu_r", zmid=0, zmin=-limit, zmax=limit,
        colorbar=dict(title="s·ΔW"), hovertemplate="row %{y}, column %{x}: %{z:.3g}<extra></extra>",
    ))
    figure.update_yaxes(title="output feature", autorange="reversed", scaleanchor="x", constrain="domain")
    figure.update_xaxes(title="input feature", constrain="domain")
    return figure


def norm_grid(summaries: list[DeltaSummary]) -> tuple[list[str], list[str], np.ndarray]:
    """(blocks, kinds, ‖ΔW‖_F matrix blocks × kinds) with NaN where a block has no target of that kind."""
    blocks = list(dict.fromkeys(s.block for s in summaries))
    kinds = list(dict.fromkeys(s.kind for s in summaries))
    grid = np.full((len(blocks), len(kinds)), np.nan)
    for s in summaries:
        grid[blocks.index(s.block), kinds.index(s.kind)] = s.frobenius
    return blocks, kinds, grid


def delta_norms_figure(deltas: Mapping[str, Tensor], title: str | None = None) -> go.Figure:
    """A blocks × targets heat map of ‖s·ΔW‖_F: where in the network the adapter changed the weights."""
    blocks, kinds, grid = norm_grid(summarize_deltas(deltas))
    figure = new_figure(title or "‖ΔW‖_F per block and target")
    figure.add_trace(go.Heatmap(
        z=grid, y=[b or NO_BLOCK for b in blocks], x=kinds, colorscale="Viridis",
        colorbar=dict(title="‖ΔW‖_F"), texttemplate="%{z:.3g}",
        hovertemplate="%{y} %{x}: ‖ΔW‖_F = %{z:.4g}<extra></extra>",
    ))
    figure.update_yaxes(title="block", autorange="reversed")
    figure.update_xaxes(title="target")
    return figure


def spectra_figure(deltas: Mapping[str, Tensor], max_values: int | None = None,
                   title: str | None = None) -> go.Figure:
    """Left: singular values of each ΔW (log scale), one line per target. Right: effective rank per target.

    LoRA's ΔW has at most r non-zero singular values; an update shared across layers through reshaping need not.
    """
    summaries = summarize_deltas(deltas)
    figure = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], horizontal_spacing=0.12,
                           subplot_titles=("singular values of s·ΔW", "effective rank exp(H(σ/Σσ))"))
    for s in summaries:
        values = s.singular_values if max_values is None else s.singular_values[:max_values]
        figure.add_trace(go.Scatter(
            x=list(range(1, len(values) + 1)), y=values, name=s.name, mode="lines", meta=dict(key=s.name),
            hovertemplate=f"{s.name}<br>σ_%{{x}} = %{{y:.3g}}<extra></extra>",
        ), row=1, col=1)
    figure.add_trace(go.Bar(
        x=[s.name for s in summaries], y=[s.effective_rank for s in summaries], name="effective rank",
        customdata=[[s.numerical_rank, shape_text(s.shape)] for s in summaries], showlegend=False,
        meta=dict(key="effective rank"),
        hovertemplate="%{x}<br>effective rank %{y:.2f}<br>numerical rank %{customdata[0]} of "
                      "%{customdata[1]}<extra></extra>",
    ), row=1, col=2)
    largest = max((float(s.singular_values.max()) for s in summaries if s.singular_values.size), default=0.0)
    if largest > 0:
        # Values far below σ_max are float32 round-off of an exactly low-rank matrix; keep them off the view.
        figure.update_yaxes(range=[math.log10(largest) - 7, math.log10(largest) + 0.3], row=1, col=1)
    figure.update_yaxes(type="log", title="σ", row=1, col=1)
    figure.update_xaxes(title="index", row=1, col=1)
    figure.update_yaxes(title="effective rank", row=1, col=2)
    figure.update_xaxes(tickangle=45, tickfont=dict(size=9), row=1, col=2)
    figure.update_layout(template=TEMPLATE, title=title or "Spectra of the updates", showlegend=len(summaries) <= 12,
                         height=450)
    return figure
