"""Generation for the causal_lm family: the sampling rule, defined once in numpy and mirrored by
torch_impl/generate.py (shared/decoding/generation.py) and jax_impl/generation.py.

One step picks the next token of each row from its last logits (B, V) and one uniform draw per
row u in [0, 1):
  * greedy: argmax (the lowest id among equal maxima);
  * else x = logits / temperature (float32); top_k > 0 keeps the tokens whose x is >= the k-th
    largest (ties kept, as HF's TopKLogitsWarper); top_p < 1 sorts by x (stable, descending) and
    keeps a token when the probability mass ranked strictly before it is < top_p (the smallest
    nucleus that reaches top_p; the top token always stays); then p = softmax(x over kept tokens)
    and the token is the first id whose cumulative p exceeds u * sum(p) (inverse CDF).
Both stacks consume the same uniforms (tests draw them from one numpy generator), so their samples
are the same tokens except where a u falls within float32 rounding of a CDF step (odds ~1e-7 a draw).

Decoding loop: prompts are left-padded (attention_mask 0 at pads), tokens are appended to a fixed
buffer (B, T0 + max_new_tokens) and the whole prefix is recomputed each step (no KV cache). A row
that emits one of `stop_ids` is finished: later positions hold pad_id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.json_config import ConfigError


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 20
    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1: no nucleus filter
    stop_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            problems.append(f"temperature must be > 0, got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            problems.append(f"top_k must be a non-negative integer, got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if problems:
            raise ConfigError("invalid SamplingConfig:\n  - " + "\n  - ".join(problems))


def check_prompts(ids: np.ndarray, mask: np.ndarray, vocab_size: int, max_len: int, max_new_tokens: int) -> None:
    """Refuse prompts the model cannot continue, listing every problem."""
    problems = []
    if ids.ndim != 2 or mask.shape != ids.shape:
        problems.append(f"prompts must be (B, T) ids with a mask of the same shape, got {ids.shape} and {mask.shape}")
    else:
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            problems.append(f"token ids must be in [0, {vocab_size}), got [{ids.min()}, {ids.max()}]")
        if (mask.sum(axis=1) == 0).any():
            problems.append("every prompt needs at least one token (a row is all padding)")
        if np.any(np.diff(mask.astype(np.int64), axis=1) < 0):
            problems.append("prompts must be left-padded: a 0 in the attention mask after a 1")
        if ids.shape[1] + max_new_tokens > max_len:
            problems.append(f"prompt length {ids.shape[1]} + max_new_tokens {max_new_tokens} exceeds max_len {max_len}")
    if problems:
        raise ValueError("cannot generate from these prompts:\n  - " + "\n  - ".join(problems))


def uniforms(seed: int, max_new_tokens: int, batch: int) -> np.ndarray:
    """(N, B) uniform draws in [0, 1) from one numpy generator: what both stacks consume."""
    return np.random.default_rng(seed).random((max_new_tokens, batch))


def choose_next(logits: np.ndarray, u: np.ndarray, config: SamplingConfig) -> np.ndarray:
    """The reference rule: logits (B, V), u (B,) -> next ids (B,) (shared.decoding.generation.choose_next, the one rule)."""
    from shared.decoding.generation import GenerationConfig, choose_next as one_rule

    gen = GenerationConfig(do_sample=not config.greedy, temperature=config.temperature, top_k=config.top_k,
                           top_p=config.top_p)
    return one_rule(logits, u, gen)


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def generate(last_logits, choose, ids: np.ndarray, mask: np.ndarray, config: SamplingConfig, pad_id: int,
             draws: np.ndarray | None) -> np.ndarray:
    """The decoding loop both stacks run: (B, T0) left-padded prompts -> (B, N) new ids (pad after a stop).

    last_logits(buffer (B, T), mask (B, T), position) -> logits (B, V) at that position;
    choose(logits, u (B,)) -> ids (B,): the stack's mirror of `choose_next`. draws (N, B): the
    uniforms (None for greedy).
    """
    B, T0 = ids.shape
    N = config.max_new_tokens
    if not config.greedy and (draws is None or draws.shape[0] < N or draws.shape[1] != B):
        raise ValueError(f"sampling needs (max_new_tokens, B) = ({N}, {B}) uniforms, got "
                         f"{None if draws is None else draws.shape}")
    buffer = np.concatenate([ids, np.full((B, N), pad_id, dtype=ids.dtype)], axis=1)  # (B, T0 + N)
    buffer_mask = np.concatenate([mask, np.zeros((B, N), dtype=mask.dtype)], axis=1)
    out = np.full((B, N), pad_id, dtype=np.int64)
    finished = np.zeros(B, dtype=bool)
    for step in range(N):
        position = T0 + step
        u = np.zeros(B) if draws is None else draws[step]
        chosen = np.asarray(choose(last_logits(buffer, buffer_mask, position - 1), u)).astype(np.int64)
        chosen = np.where(finished, pad_id, chosen)
        out[:, step] = chosen
        buffer[:, position] = chosen
        buffer_mask[:, position] = ~finished
        finished |= np.isin(chosen, config.stop_ids)
        if finished.all():
            break
    return out
