"""One LoRA dropout mask for both stacks, so train-mode LoRA forwards and gradients compare exactly.

PEFT drops the adapter branch's input with nn.Dropout (x * keep / (1 - p)); jax_impl/lora.py with
jax.random.bernoulli(rng, 1 - p, shape) and its own inverted scaling. The two random streams differ,
so `shared_lora_masks` draws one keep mask per adapted module (numpy, seeded by the module's path,
so the order of the calls does not matter) and hands it to both stacks:
  - torch: each LoRA layer's lora_dropout module is replaced by one that applies the mask, in train
    mode only, at the rate PEFT was configured with (nn.Identity when PEFT got rate 0): a torch
    stack that drops the dropout, or gets another rate, computes something else;
  - jax: the draw is intercepted at jax.random.bernoulli while an adapted Dense runs (its path from an
    outer flax interceptor); jax_impl's own scaling and its on/off rule (rngs, deterministic) stay
    under test.
"""

from __future__ import annotations

import contextlib
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import linen as nn
from peft.tuners.lora import LoraLayer

from shared.checkpoints.weight_table import torch_module_to_flax_path

ADAPTER = "default"  # PEFT's adapter name
PEFT_PREFIX = "base_model.model."


class MaskBank:
    """Uniforms per module path (seeded by the path), thresholded at each stack's own rate."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.uniforms: dict[tuple[str, ...], np.ndarray] = {}

    def keep(self, path: tuple[str, ...], shape: tuple[int, ...], rate: float) -> np.ndarray:
        shape = tuple(int(n) for n in shape)
        if path not in self.uniforms:
            rng = np.random.default_rng([self.seed, zlib.crc32("/".join(path).encode())])
            self.uniforms[path] = rng.random(shape)
        u = self.uniforms[path]
        assert u.shape == shape, f"{'/'.join(path)}: dropout input {shape} here, {u.shape} in the other stack"
        return u >= rate  # P(keep) = 1 - rate, as torch's dropout and jax's bernoulli(1 - rate)


class SharedMaskDropout(torch.nn.Module):
    """PEFT's lora_dropout with the bank's mask: x * keep / (1 - p) in train mode, x in eval mode."""

    def __init__(self, original: torch.nn.Module, bank: MaskBank, path: tuple[str, ...]) -> None:
        super().__init__()
        self.p = float(original.p) if isinstance(original, torch.nn.Dropout) else 0.0  # nn.Identity: rate 0
        self.bank, self.path = bank, path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.from_numpy(self.bank.keep(self.path, tuple(x.shape), self.p)).to(x.dtype)
        return x * keep * (1.0 / (1.0 - self.p))


def share_with_torch(peft_model: torch.nn.Module, bank: MaskBank) -> int:
    """Replace every LoRA layer's dropout in `peft_model` (in place); returns how many."""
    count = 0
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_dropout:
            path = torch_module_to_flax_path(name.removeprefix(PEFT_PREFIX))
            module.lora_dropout[ADAPTER] = SharedMaskDropout(module.lora_dropout[ADAPTER], bank, path)
            count += 1
    return count


@contextlib.contextmanager
def shared_with_jax(bank: MaskBank):
    """While inside, jax.random.bernoulli called during a flax module's method returns the bank's mask
    for that module (jax_impl/lora.py draws LoRA dropout there); elsewhere the real one."""
    paths: list[tuple[str, ...]] = []
    real = jax.random.bernoulli

    def note_path(next_fun, args, kwargs, context):
        paths.append(tuple(context.module.path))
        try:
            return next_fun(*args, **kwargs)
        finally:
            paths.pop()

    def bernoulli(key, p=0.5, shape=None, *rest, **kwargs):
        if not paths:
            return real(key, p, shape, *rest, **kwargs)
        return jnp.asarray(bank.keep(paths[-1], shape, 1.0 - float(p)))

    jax.random.bernoulli = bernoulli
    try:
        # installed before lora_apply's own interceptor, so it is the outer one: the path is noted while the
        # LoRA branch of that Dense runs
        with nn.intercept_methods(note_path):
            yield bank
    finally:
        jax.random.bernoulli = real


__all__ = ["MaskBank", "SharedMaskDropout", "share_with_torch", "shared_with_jax"]
