"""PyTorch stack: object-oriented nn.Modules, the twin of jax_impl."""

from torch_impl.checkpoint import from_numpy, load, save, state_dict_numpy
from torch_impl.model import Transformer

__all__ = ["Transformer", "from_numpy", "load", "save", "state_dict_numpy"]
