"""The model configuration: ModelConfig (model_config.py) and the named presets."""
