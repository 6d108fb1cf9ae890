"""twinformer: one Transformer in PyTorch and in JAX/Flax, kept in step by property tests."""

__version__ = "0.1.0"
