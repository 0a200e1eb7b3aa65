"""SuperLoRA: parameter-efficient adaptation of many layers from a few small factored tensors."""

from superlora.errors import CheckpointError, ConfigError, DataError, SuperLoRAError

__version__ = "0.1.0"
