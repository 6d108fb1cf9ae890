"""What one request may ask of a loaded model: the checks every engine runs in `submit`, before
anything is queued, so that a request that can never run fails at once with a message that says
what to change (the HTTP layer turns it into a 400)."""

from __future__ import annotations

import numpy as np

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


def request_problems(request: DecodeRequest, config: ModelConfig, decoder_only: bool, adapters: tuple[str, ...]) -> list[str]:
    """Why `request` can never run on this model (empty: it can)."""
    problems = []
    L, N, max_len = len(request.prompt_ids), request.max_new_tokens, config.max_len
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        problems.append(f"max_new_tokens must be a positive integer, got {N!r}")
    if L == 0:
        problems.append("the prompt is empty: give at least one token")
    vocab = config.tgt_vocab_size if decoder_only else config.src_vocab_size
    if any(not isinstance(i, (int, np.integer)) or not 0 <= i < vocab for i in request.prompt_ids):
        problems.append(f"prompt ids must be integers in [0, {vocab})")
    if decoder_only and isinstance(N, int) and L + N > max_len:
        problems.append(f"prompt ({L} tokens) + max_new_tokens ({N}) exceeds the model's {max_len} positions: "
                        "shorten the prompt or ask for fewer tokens")
    if not decoder_only:
        if L > max_len:
            problems.append(f"the source has {L} tokens, more than the model's {max_len}: shorten it")
        if isinstance(N, int) and N > max_len - 1:
            problems.append(f"max_new_tokens {N} exceeds the {max_len - 1} the decoder's positions allow")
    if request.adapter is not None and request.adapter not in adapters:
        known = ", ".join(adapters) or "none loaded"
        problems.append(f"unknown adapter {request.adapter!r} (loaded: {known})")
    number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)  # noqa: E731
    if not (number(request.temperature) and request.temperature >= 0):
        problems.append(f"temperature must be a number >= 0 (0: greedy), got {request.temperature!r}")
    if not (number(request.top_p) and 0 < request.top_p <= 1):
        problems.append(f"top_p must be a number in (0, 1], got {request.top_p!r}")
    return problems


def check_request(request: DecodeRequest, config: ModelConfig, decoder_only: bool, adapters: tuple[str, ...]) -> None:
    """ValueError (every problem, "; "-joined) for a request the engine can never run."""
    problems = request_problems(request, config, decoder_only, adapters)
    if problems:
        raise ValueError("; ".join(problems))


__all__ = ["check_request", "max_context", "request_problems", "room_for"]
