"""Framework-free parts of twinformer: configs, data, the weight table, checkpoint I/O, metrics.

Nothing in this package imports torch or jax; both stacks import from it.
"""

from shared.config.model_config import ConfigError, ModelConfig

__all__ = ["ConfigError", "ModelConfig"]
