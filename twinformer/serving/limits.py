"""What one request may ask of a loaded model: the checks every engine runs in `submit`, before
anything is queued, so that a request that can never run fails at once with a message that says
what to change (the HTTP layer turns it into a 400)."""

from __future__ import annotations

from shared.config.model_config import ModelConfig
from twinformer.serving.protocol import DecodeRequest


def max_context(config: ModelConfig) -> int:
    """Engine.max_context: the positions one request may fill (prompt + new tokens)."""
    return config.max_len


def room_for(max_len: int, decoder_only: bool, prompt_tokens: int) -> int:
    """New tokens the model's positions still hold after a prompt of `prompt_tokens`.

    Decoder-only: prompt and new tokens share max_len. Encoder-decoder: the source has its own
    max_len positions; the decoder start + the new tokens fill the decoder's (the stacks' `room`).
    """
    return max_len - prompt_tokens if decoder_only else max_len - 1


def check_request(request: DecodeRequest, config: ModelConfig, decoder_only: bool, adapters: tuple[str, ...]) -> None:
    """ValueError (one line per problem) for a request the engine can never run."""
    problems = []
    n = len(request.prompt_ids)
    if n == 0:
        problems.append("the prompt has no tokens")
    elif not decoder_only and n > config.max_len:
        problems.append(f"the source has {n} tokens; the model reads at most {config.max_len}")
    vocab = config.src_vocab_size
    if any(not 0 <= int(i) < vocab for i in request.prompt_ids):
        problems.append(f"prompt ids must lie in [0, {vocab})")
    if request.max_new_tokens < 1:
        problems.append(f"max_new_tokens must be >= 1, got {request.max_new_tokens}")
    elif n and request.max_new_tokens > room_for(config.max_len, decoder_only, n):
        problems.append(f"prompt ({n} tokens) + max_new_tokens ({request.max_new_tokens}) exceed the model's "
                        f"context of {config.max_len} positions")  # fmt: skip
    if request.adapter is not None and request.adapter not in adapters:
        loaded = ", ".join(adapters) or "none"
        problems.append(f"unknown adapter {request.adapter!r} (loaded: {loaded})")
    if not (request.temperature >= 0 and 0 < request.top_p <= 1):
        problems.append(f"temperature must be >= 0 and top_p in (0, 1], got {request.temperature}, {request.top_p}")
    if problems:
        raise ValueError("; ".join(problems))


__all__ = ["check_request", "max_context", "room_for"]
