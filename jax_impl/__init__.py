"""JAX + Flax Linen stack: explicit params pytrees and pure functions, the twin of torch_impl."""

from jax_impl.checkpoint import load, save
from jax_impl.convert import params_from_state_dict, state_dict_from_params
from jax_impl.families.transformer import Transformer
from jax_impl.registry import build_model, init_params
from jax_impl.families.t5 import T5

__all__ = ["T5", "Transformer", "build_model", "init_params", "load", "params_from_state_dict", "save", "state_dict_from_params"]
