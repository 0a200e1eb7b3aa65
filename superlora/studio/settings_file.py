"""Save or load all settings: every control's value as one JSON file (the Model & adapter tab's accordion).

A loaded file is checked against each control (range, choices, type) before any value is set, so a hand-edited
file cannot put a control into a state the page could not reach.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr

from superlora.controls import ADDED_LATER as ADAPTER_ADDED_LATER
from superlora.controls import TRAINING_NAMES
from superlora.files import atomic_write
from superlora.studio.model_tab import CONTROL_NAMES
from superlora.studio.sessions import SessionStore, StudioError

STUDIO_CONFIG_VERSION = 1


# The controls a settings file holds, by API name: all but the good class, whose choices follow each session's data.
# Controls added later come last, so the positions of the older inputs of /save_config and /load_config stay.
ADDED_LATER = ("head_lr", "pick_lr", *ADAPTER_ADDED_LATER)
CONFIG_KEYS = (*(name for name in CONTROL_NAMES if name not in ADDED_LATER),
               *(name for name in TRAINING_NAMES if name not in ("good_class", *ADDED_LATER)),
               "sample", "labels", "top_k", "formats", *ADDED_LATER)


def save_app_config(values: dict[str, Any], sessions: SessionStore, request: gr.Request | None) -> str:
    """Write every control's value to a JSON file for download."""
    session = sessions.get(request)
    data = {"studio_config_version": STUDIO_CONFIG_VERSION, **values}
    path = session.workdir / "superlora-studio-config.json"
    atomic_write(path, lambda temporary: Path(temporary).write_text(json.dumps(data, indent=2) + "\n"))
    return str(path)


def check_app_config(file: str | None, components: dict[str, Any]) -> list[Any]:
    """The control values of a JSON file written by save_app_config, checked against each control."""
    if not file:
        return [gr.update() for _ in components]
    try:
        data = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StudioError(f"That file is not a studio settings file (JSON): {err}") from err
    if not isinstance(data, dict) or data.get("studio_config_version") != STUDIO_CONFIG_VERSION:
        raise StudioError("That file is not a settings file saved by this studio "
                          f"(no \"studio_config_version\": {STUDIO_CONFIG_VERSION}).")
    unknown = sorted(set(data) - set(components) - {"studio_config_version"})
    if unknown:
        raise StudioError(f"Unknown settings in the file: {', '.join(unknown)}; known ones are "
                          f"{', '.join(components)}")
    values = []
    for name, component in components.items():
        if name not in data:
            values.append(gr.update())
            continue
        values.append(_checked_value(name, data[name], component))
    return values


def _checked_value(name: str, value: Any, component: Any) -> Any:
    problem = None
    if isinstance(component, gr.Slider):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or \
                not component.minimum <= value <= component.maximum:
            problem = f"must be a number from {component.minimum} to {component.maximum}"
    elif isinstance(component, (gr.Dropdown, gr.Radio, gr.CheckboxGroup)):
        allowed = [choice[1] if isinstance(choice, tuple) else choice for choice in component.choices]
        items = value if isinstance(component, gr.CheckboxGroup) and isinstance(value, list) else [value]
        if isinstance(component, gr.CheckboxGroup) and not isinstance(value, list):
            problem = "must be a list"
        elif any(item not in allowed for item in items):
            problem = f"must be one of {', '.join(map(str, allowed))}"
    elif isinstance(component, gr.Checkbox):
        if not isinstance(value, bool):
            problem = "must be true or false"
    elif isinstance(component, gr.Number):
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            problem = "must be a number"
    if problem:
        raise StudioError(f"Settings file: {name}={value!r} {problem}.")
    return value

