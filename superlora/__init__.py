"""SuperLoRA: parameter-efficient adaptation of many layers from a few small factored tensors.

Public API: `SuperLoRAConfig`, `preset` (and `HEAD_ONLY`, the method without an adapter), `get_superlora_model`,
`SuperLoRAModel`, `count_parameters`, `suggest` (the study's configurations that fit a parameter budget), and the
error types. See README.md and docs/ for the method and the product around it.
"""

from superlora.config import HEAD_ONLY, METHODS, PRESETS, SuperLoRAConfig, preset
from superlora.counting import ParameterCount, count_parameters
from superlora.errors import CheckpointError, ConfigError, DataError, SuperLoRAError
from superlora.model import SuperLoRAModel, get_superlora_model
from superlora.suggestions import Suggestion, suggest

__version__ = "0.1.0"

__all__ = [
    "HEAD_ONLY",
    "METHODS",
    "PRESETS",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ParameterCount",
    "SuperLoRAConfig",
    "SuperLoRAError",
    "SuperLoRAModel",
    "Suggestion",
    "count_parameters",
    "get_superlora_model",
    "preset",
    "suggest",
]
