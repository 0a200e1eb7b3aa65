"""Exception types a user can trigger (bad config, bad data, wrong checkpoint).

Every error the project raises on purpose derives from `SuperLoRAError`, so the CLI and the app can catch one
type and show its message instead of a traceback. Messages say what was wrong and what to do instead.
"""

from __future__ import annotations


class SuperLoRAError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(SuperLoRAError, ValueError):
    """An impossible or inconsistent adapter configuration, or targets that do not fit the model."""


class CheckpointError(SuperLoRAError):
    """A saved adapter or model file that is missing, corrupt, or made for another model."""


class DataError(SuperLoRAError):
    """A dataset that cannot be used: no usable images, too few classes, unsafe or oversized archives."""
