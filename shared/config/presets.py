"""Every named model configuration, built: {preset name: ModelConfig}.

Each family declares its presets as fields (shared/families/<family>/presets.py: the book's two
models, the original paper's base model, a test size, T5 / FLAN-T5, GPT-2, a small Llama);
ModelConfig.from_preset reads the same table, so this module is only the built view of it.
"""

from shared.config.model_config import ModelConfig
from shared.families.registry import PRESET_FIELDS

PRESETS: dict[str, ModelConfig] = {name: ModelConfig.from_preset(name) for name in PRESET_FIELDS}
