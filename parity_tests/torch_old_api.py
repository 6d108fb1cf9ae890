"""The old torch decoding call `generate(model, src, DecodeConfig, generator)` on torch_impl.generate,
for the cross-stack tests that still compare against jax_impl.decoding's DecodeConfig API (the
merger ports them to GenerationConfig once jax_impl.generate lands).

Sampling draws its uniforms from shared.decoding.generation.uniforms seeded by the generator's seed (the
old torch path drew from the torch generator itself): same seed, same tokens; a distribution test
sees uniform draws either way.
"""

from __future__ import annotations

import numpy as np
import torch

from shared.decoding.search import DecodeConfig, generation_config
from shared.decoding.generation import uniforms
from torch_impl.generate import generate


def torch_generate(model: torch.nn.Module, src, config: DecodeConfig | None = None,
                   generator: torch.Generator | None = None) -> np.ndarray:
    config = config or DecodeConfig()
    draws = None
    if config.strategy == "top_k":
        seed = generator.initial_seed() if generator is not None else 0
        draws = uniforms(seed, config.steps(model.config), np.asarray(src.cpu() if isinstance(src, torch.Tensor) else src).shape[0])
    return generate(model, src, None, generation_config(config), draws)


def as_generation_config(sampler) -> "GenerationConfig":
    """shared.decoding.sampling.SamplingConfig -> GenerationConfig (stop_ids -> eos_token_id)."""
    from shared.decoding.generation import GenerationConfig

    return GenerationConfig(max_new_tokens=sampler.max_new_tokens, do_sample=not sampler.greedy,
                            temperature=sampler.temperature, top_k=sampler.top_k, top_p=sampler.top_p,
                            eos_token_id=tuple(sampler.stop_ids))


def choose_next(logits: torch.Tensor, u: torch.Tensor, sampler) -> torch.Tensor:
    """The old torch_impl.generation.choose_next(logits, u, SamplingConfig) on torch_impl.generate's rule."""
    from torch_impl.generate import choose_next as new_choose_next

    return new_choose_next(logits, u, as_generation_config(sampler))


def causal_generate(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray, sampler, draws=None) -> np.ndarray:
    """The old torch_impl.generation.generate: (B, max_new_tokens) always, pad after every row's stop."""
    config = as_generation_config(sampler)
    if draws is None and config.do_sample:
        draws = uniforms(0, sampler.max_new_tokens, ids.shape[0])
    out = generate(model, ids, mask, config, draws)
    full = np.full((ids.shape[0], sampler.max_new_tokens), model.config.pad_id, dtype=out.dtype)
    full[:, : out.shape[1]] = out
    return full
