"""Figures that show SuperLoRA at work, as plotly Figures built from plain data.

Each function takes what the library already produces (target shapes and a config, an `AdapterPlan`, the
`delta_weights()` tensors, training metrics) and returns a `plotly.graph_objects.Figure`; the notebooks, the
widgets and the app all draw with these, so a picture means the same thing everywhere.

- budget:   `budget_figure(target_shapes, config)`: adapter parameters vs rank, presets and the current config;
            `budget_map_figure(target_shapes, families)`: the budgets many configs reach, against LoRA's minimum
- layout:   `layout_figure(plan, targets, seed)`: which group produces each update entry, before/after shuffle
- deltas:   `delta_heatmap(delta)`, `delta_norms_figure(deltas)`, `spectra_figure(deltas)`
- training: `curves_figure(run_or_runs)`, `confusion_figure(confusion, classes)`
- static:   `line_chart_svg(series, ...)`, `confusion_table_html(confusion, classes)`: script-free SVG / HTML for
            documents that must open offline (the run report); not re-exported here
"""

from superlora.viz.budget import BudgetCurve, adapter_parameters, budget_curves, budget_figure, \
    budget_map_figure, describe_config, trace_by_key
from superlora.viz.deltas import DeltaSummary, delta_heatmap, delta_norms_figure, effective_rank, norm_grid, \
    numerical_rank, spectra_figure, split_block, summarize_deltas
from superlora.viz.layout import TargetStrip, entry_groups, group_table, layout_figure, model_plan, target_strips
from superlora.viz.training import confusion_figure, curves_figure, metric_records, metric_series

__all__ = [
    "BudgetCurve",
    "DeltaSummary",
    "TargetStrip",
    "adapter_parameters",
    "budget_curves",
    "budget_figure",
    "budget_map_figure",
    "confusion_figure",
    "curves_figure",
    "delta_heatmap",
    "delta_norms_figure",
    "describe_config",
    "effective_rank",
    "entry_groups",
    "group_table",
    "layout_figure",
    "metric_records",
    "metric_series",
    "model_plan",
    "norm_grid",
    "numerical_rank",
    "spectra_figure",
    "split_block",
    "summarize_deltas",
    "target_strips",
    "trace_by_key",
]
