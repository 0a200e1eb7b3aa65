"""Static figures for documents that must open offline (the run report): inline SVG and HTML, no scripts.

The interactive plotly figures in this package need plotly.js in the page (about 4 MB inline); these draw the
same curves and confusion matrix as a few kilobytes of markup that any browser, mail client or printer shows.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

from superlora.viz.common import GROUP_PALETTE

Series = Sequence[tuple[float, float]]
MAX_MARKERS = 60  # a series with more points is drawn as a bare line: thousands of dots only add bytes


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:.4g}"


def line_chart_svg(series: Mapping[str, Series], *, title: str, x_label: str, y_label: str,
                   y_range: tuple[float, float] | None = None, width: int = 460, height: int = 280) -> str:
    """An SVG line chart, one line (with point markers) per named series of (x, y) points.

    Points whose y is not finite are left out; series of more than MAX_MARKERS points get no markers. `y_range`
    fixes the axis (e.g. (0, 1) for accuracy).
    """
    clean = {name: [(float(x), float(y)) for x, y in points if y is not None and math.isfinite(float(y))]
             for name, points in series.items()}
    clean = {name: points for name, points in clean.items() if points}
    left, right, top, bottom = 56, 12, 30, 62
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [f'<svg role="img" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
             f"<title>{html.escape(title)}</title>",
             f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13">{html.escape(title)}</text>']
    if not clean:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="#666">no values</text></svg>')
        return "".join(parts)
    xs = [x for points in clean.values() for x, _ in points]
    ys = [y for points in clean.values() for _, y in points]
    x_low, x_high = min(xs), max(xs)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    y_low, y_high = y_range if y_range is not None else (min(ys), max(ys))
    if y_high == y_low:
        y_low, y_high = y_low - (abs(y_low) or 1) * 0.1, y_high + (abs(y_high) or 1) * 0.1

    def sx(x: float) -> float:
        return left + (x - x_low) / (x_high - x_low) * plot_w

    def sy(y: float) -> float:
        return top + (1 - (y - y_low) / (y_high - y_low)) * plot_h

    for tick in _ticks(y_low, y_high):
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{sy(tick):.1f}" y2="{sy(tick):.1f}" '
                     f'stroke="#e5e5e5"/><text x="{left - 6}" y="{sy(tick) + 4:.1f}" text-anchor="end">'
                     f"{_label(tick)}</text>")
    for tick in _ticks(x_low, x_high):
        parts.append(f'<text x="{sx(tick):.1f}" y="{top + plot_h + 15}" text-anchor="middle">{_label(tick)}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 32}" text-anchor="middle">'
                 f"{html.escape(x_label)}</text>")
    parts.append(f'<text transform="translate(14 {top + plot_h / 2}) rotate(-90)" text-anchor="middle">'
                 f"{html.escape(y_label)}</text>")
    legend_x = left
    for i, (name, points) in enumerate(clean.items()):
        colour = GROUP_PALETTE[i % len(GROUP_PALETTE)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        if len(points) <= MAX_MARKERS:
            parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>' for x, y in points]
        parts.append(f'<rect x="{legend_x}" y="{height - 14}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{legend_x + 14}" y="{height - 5}">{html.escape(name)}</text>')
        legend_x += 24 + 7 * len(name)
    parts.append("</svg>")
    return "".join(parts)


def confusion_table_html(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> str:
    """The confusion matrix as an HTML table, each cell shaded by its share of its row (its true class).

    Correct predictions (the diagonal) are shaded green, mistakes red, so both where the model is right and
    where it goes wrong read at a glance; the counts stay selectable text.
    """
    header = "".join(f'<th scope="col">{html.escape(name)}</th>' for name in classes)
    rows = []
    for t, (name, row) in enumerate(zip(classes, confusion)):
        total = sum(row)
        cells = []
        for p, count in enumerate(row):
            share = count / total if total else 0.0
            colour = (40, 150, 70) if t == p else (200, 50, 50)
            style = f"background: rgba({colour[0]}, {colour[1]}, {colour[2]}, {0.08 + 0.6 * share:.2f})" \
                if count else ""
            cells.append(f'<td style="{style}">{count}</td>')
        rows.append(f'<tr><th scope="row">{html.escape(name)}</th>{"".join(cells)}<td class="total">{total}</td></tr>')
    return ('<table class="confusion"><thead><tr><th>true \\ predicted</th>' + header +
            '<th>images</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>")
