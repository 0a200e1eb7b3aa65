"""The studio: a Gradio app in which someone who never read the code fine-tunes a ViT with SuperLoRA.

A thin shell over the library: every number, figure, training run, prediction and export comes from the same
functions the CLI and notebooks call (`count_parameters`, `superlora.viz`, `superlora.data`, `train`,
`predict`, `export`). The studio only turns widget values into those calls and their results into widgets.

Modules, bottom up:

- `sessions`: `Session` (what one browser tab owns), `SessionStore` (creates, expires and cleans up sessions; the
  memory budget for images), `StudioLimits`, `HeartbeatWatch` (which sessions a page is connected to).
- `endpoints`: handlers as Gradio endpoints (`session_endpoint`, `with_parameters`) and errors as messages
  (`user_errors`).
- one module per tab's handlers: `model_tab` (model list, live count and figures, the budget box, uploaded
  weights), `data_tab`, `train_tab` (training and the kept run's validation results), `inspect_tab`, `try_tab`,
  `export_tab` (downloads and the report); `settings_file` (save or load all settings as JSON).
- `layout`: the page (`build_app`), one function per tab's components and one per tab's events.
- `server`: `launch`.

Named API endpoints (see docs/studio.md): `preset`, `count_parameters`, `suggest`, `use_suggestion`,
`use_sample`, `load_data`, `upload_checkpoint`, `train`, `validation`, `stop`, `inspect`, `predict`, `export`,
`report`, `save_config`, `load_config`. Sessions, limits and clean-up are described in `sessions` and docs/studio.md.
"""

from superlora.studio.data_tab import load_data, use_sample, validation_picks
from superlora.studio.endpoints import session_endpoint, user_errors, with_parameters
from superlora.studio.export_tab import export_help, export_model, export_report
from superlora.studio.inspect_tab import inspect_deltas
from superlora.studio.layout import build_app
from superlora.studio.model_tab import CONTROL_NAMES, count_endpoint, describe_model, model_choices, \
    preset_controls, preset_settings, show_count, show_figures, upload_checkpoint
from superlora.studio.model_tab import apply_suggestion, show_suggestions
from superlora.studio.server import launch
from superlora.studio.sessions import HeartbeatWatch, Session, SessionStore, StudioError, StudioLimits
from superlora.studio.settings_file import CONFIG_KEYS, check_app_config, save_app_config
from superlora.studio.train_tab import TRAIN_INPUT_NAMES, check_training, mark_done, mark_queued, queue_training, \
    recount_validation, show_validation, stop_training, train_model
from superlora.studio.try_tab import pick_validation_image, predict_image

__all__ = [
    "CONFIG_KEYS",
    "CONTROL_NAMES",
    "TRAIN_INPUT_NAMES",
    "apply_suggestion",
    "show_suggestions",
    "HeartbeatWatch",
    "Session",
    "SessionStore",
    "StudioError",
    "StudioLimits",
    "build_app",
    "check_app_config",
    "check_training",
    "count_endpoint",
    "describe_model",
    "export_help",
    "export_model",
    "export_report",
    "inspect_deltas",
    "launch",
    "load_data",
    "mark_done",
    "mark_queued",
    "model_choices",
    "pick_validation_image",
    "predict_image",
    "preset_controls",
    "preset_settings",
    "queue_training",
    "recount_validation",
    "save_app_config",
    "session_endpoint",
    "show_count",
    "show_figures",
    "show_validation",
    "stop_training",
    "train_model",
    "upload_checkpoint",
    "use_sample",
    "user_errors",
    "validation_picks",
    "with_parameters",
]
