"""Weights and the files that hold them: the weight table, init, checkpoints, optimizer state,
LoRA adapters, and the Hugging Face / book importers."""
