"""PyTorch stack: object-oriented nn.Modules, the twin of jax_impl."""

from torch_impl.checkpoint import from_numpy, load, save, state_dict_numpy
from torch_impl.families.transformer import Transformer
from torch_impl.registry import build_model
from torch_impl.families.t5 import T5

__all__ = ["T5", "Transformer", "build_model", "from_numpy", "load", "save", "state_dict_numpy"]
