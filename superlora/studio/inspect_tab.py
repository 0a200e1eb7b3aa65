"""The Inspect ΔW tab's handler: what the trained adapter changed, layer by layer (figures from `superlora.viz`)."""

from __future__ import annotations

import gradio as gr

from superlora import viz
from superlora.studio.sessions import SessionStore
from superlora.studio.train_tab import trained


def inspect_deltas(target: str | None, sessions: SessionStore, request: gr.Request | None) -> tuple:
    """Per-layer ΔW figures of the trained adapter: ‖ΔW‖ per block and target, spectra, and one heatmap."""
    result = trained(sessions.get(request))
    deltas = result.model.delta_weights()
    names = list(deltas)
    chosen = target if target in deltas else names[0]
    norms = {name: float(delta.norm()) for name, delta in deltas.items()}
    largest = max(norms, key=norms.get)
    note = (f"{len(names)} weights were updated; the largest change is in **{largest}** "
            f"(‖ΔW‖_F = {norms[largest]:.3g}). Pick a target below to see its ΔW entry by entry.")
    return (note, gr.update(choices=names, value=chosen), viz.delta_norms_figure(deltas), viz.spectra_figure(deltas),
            viz.delta_heatmap(deltas[chosen], chosen))
