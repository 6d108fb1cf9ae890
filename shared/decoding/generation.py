"""One generation config and one decoding contract for every family and both stacks.

`GenerationConfig` uses Hugging Face's parameter names (transformers.GenerationConfig) where they
exist. One loop per stack (torch_impl/generate.py, jax_impl/generate.py) runs greedy search,
sampling (temperature, top-k, top-p) and beam search (length penalty) for encoder-decoders and
decoder-only models alike; it reaches a model only through its family's incremental decoder.

Axis letters: B batch, L prompt (or source) length, C copies of each row (num_beams for beam
search, else 1), N max new tokens, V vocabulary, H heads, G key/value heads, K head size.

Incremental-decoder protocol (`incremental_decoder(model, use_cache)` in {torch,jax}_impl/
incremental.py returns one; the JAX methods take `params` first, their caches are pytrees of fixed
shapes so that a `lax.while_loop` or a jitted step carries them, and `t` may be traced):

  start(ids (B, L), mask (B, L) bool, N, C) -> cache for B*C rows (row b*C + c is copy c of row b)
      encoder-decoder: ids is the source, mask its real tokens; the source is encoded once and the
        cross-attention keys/values computed once; N self-attention slots are preallocated.
      decoder-only: ids is the prompt, left-padded (mask False at the pads); ids[:, :-1] is
        prefilled into slots 0 .. L-2 of a cache of L - 1 + N slots.
  first_tokens(ids (B, L), mask (B, L)) -> (B,) the tokens fed at t = 0:
      encoder-decoder: the decoder start id (config.bos_id); decoder-only: ids[:, -1].
  step(cache, tokens (B*C,), t) -> (logits (B*C, V), cache): feeds `tokens` at step t and returns
      the logits of the next token. Decoder-only: the token sits in slot L - 1 + t with position
      id = number of real tokens before it (cumsum(mask) - 1, as the uncached forward).
  reorder(cache, rows (B*C,)) -> cache in which row i continues row rows[i] (rows stay within
      their source row's copies: beam search moving hypotheses).
  banned_ids: tuple[int, ...]  never generated (encoder-decoder: pad and decoder start; decoder-
      only: none, as transformers' generate).
  stop_ids: tuple[int, ...]  a row that emits one is finished (pad after it).

use_cache=False gives the uncached reference decoder of the same protocol (the whole prefix
re-run each step); the cached one must give exactly the same tokens, and greedy decodes must equal
transformers' `generate` for the HF families.

Output of `generate`: (B, T_out) int32 new tokens (the prompt and the decoder start excluded), the
stop token included, pad after it. Greedy and sampling: T_out is the number of steps run (the loop
stops once every row has stopped, or after N). Beam search: T_out is the length of the longest
returned hypothesis (tracked by length, never by looking for pad, which a decoder-only model may
generate).

Sampling: one uniform u in [0, 1) per row and step, drawn by numpy (`uniforms`) and handed to both
stacks, picks the token by inverse CDF (`choose_next`), so both stacks sample the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from shared.json_config import ConfigError

# |length_penalty| beyond this takes L ** lp out of float32's range for long outputs (4096 ** 10 is
# 1e36) while no useful setting lies there: GNMT tuned lp in 0.6..1, HF's default is 1.
LENGTH_PENALTY_LIMIT = 10.0
MAX_BEAMS = 64  # a beam search wider than this is a typo, and its cache would not fit


@dataclass(frozen=True)
class GenerationConfig:
    """How to pick each next token (transformers.GenerationConfig's names and meanings).

    do_sample=False, num_beams=1: greedy. do_sample=True: sampling from softmax(logits /
    temperature) restricted by top_k (0 = off) and top_p (1 = off). num_beams > 1: beam search,
    finished hypotheses ranked by score / length ** length_penalty (no beam sampling).
    """

    max_new_tokens: int | None = None  # N; None = as many as the model's max_len allows
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # keep the tokens whose logit is >= the k-th largest (ties kept); 0 = off
    top_p: float = 1.0  # keep the smallest nucleus whose mass reaches top_p; 1 = off
    num_beams: int = 1
    length_penalty: float = 1.0
    use_cache: bool = True  # key/value cache (one position per step); False re-runs the prefix
    eos_token_id: tuple[int, ...] | None = None  # stop ids; None = the model's

    def __post_init__(self) -> None:
        problems = []
        n = self.max_new_tokens
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            problems.append(f"max_new_tokens must be a positive integer or None, got {n!r}")
        if not isinstance(self.do_sample, bool):
            problems.append(f"do_sample must be a bool, got {self.do_sample!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (np.isfinite(t) and t > 0):
            problems.append(f"temperature must be a finite number > 0, got {t!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            problems.append(f"top_k must be a non-negative integer (0 = off), got {self.top_k!r}")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            problems.append(f"top_p must be in (0, 1], got {p!r}")
        b = self.num_beams
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_BEAMS:
            problems.append(f"num_beams must be an integer in [1, {MAX_BEAMS}], got {b!r}")
        elif b > 1 and self.do_sample:
            problems.append("beam sampling is not supported: use do_sample with num_beams=1, or num_beams > 1 alone")
        lp = self.length_penalty
        if isinstance(lp, bool) or not isinstance(lp, (int, float)) or not (np.isfinite(lp) and abs(lp) <= LENGTH_PENALTY_LIMIT):
            limit = f"{LENGTH_PENALTY_LIMIT:g}"
            problems.append(f"length_penalty must be a finite number in [-{limit}, {limit}], got {lp!r}")
        if not isinstance(self.use_cache, bool):
            problems.append(f"use_cache must be a bool, got {self.use_cache!r}")
        eos = self.eos_token_id
        if eos is not None and not (isinstance(eos, tuple) and all(isinstance(i, int) and i >= 0 for i in eos)):
            problems.append(f"eos_token_id must be None or a tuple of token ids, got {eos!r}")
        if problems:
            raise ConfigError("invalid GenerationConfig:\n  - " + "\n  - ".join(problems))

    @property
    def strategy(self) -> str:
        """"beam", "sample" or "greedy"."""
        return "beam" if self.num_beams > 1 else "sample" if self.do_sample else "greedy"

    def replace(self, **changes) -> "GenerationConfig":
        return GenerationConfig(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})

    def steps(self, room: int) -> int:
        """N given `room`, the number of new tokens the model's positions can still hold."""
        if room < 1:
            raise ValueError("the prompt leaves no room to generate within the model's max_len")
        if self.max_new_tokens is None:
            return room
        if self.max_new_tokens > room:
            raise ValueError(f"max_new_tokens {self.max_new_tokens} exceeds the {room} positions the model has left")
        return self.max_new_tokens


def search_config(max_new_tokens: int, max_len: int, num_beams: int = 1) -> GenerationConfig:
    """The training backends' decodes (BLEU/ROUGE at evaluation): greedy for one beam, else beam
    search (default length penalty). N is capped at max_len - 1 (the decoder start takes a
    position), so a train config's max_decode_len may exceed what the model can hold."""
    return GenerationConfig(max_new_tokens=min(max_new_tokens, max_len - 1), num_beams=num_beams)


def uniforms(seed: int, steps: int, rows: int) -> np.ndarray:
    """(N, B) uniform draws in [0, 1) from one numpy generator: what both stacks' samplers consume."""
    return np.random.default_rng(seed).random((steps, rows))


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def choose_next(logits: np.ndarray, u: np.ndarray, config: GenerationConfig, banned: tuple[int, ...] = ()) -> np.ndarray:
    """The reference rule both stacks mirror op for op: logits (B, V), u (B,) -> next ids (B,).

    banned ids get -inf first. Greedy: argmax (the lowest id among equal maxima). Sampling:
    x = logits / temperature in float32; top_k keeps x >= the k-th largest (ties kept, as HF's
    TopKLogitsWarper); top_p sorts x (stable, descending) and keeps a token while the mass ranked
    strictly before it is < top_p (the top token always stays); then p = softmax(x over the kept
    tokens) and the token is the first id whose cumulative p exceeds u * sum(p) (inverse CDF).
    """
    x = logits.astype(np.float32).copy()
    if banned:
        x[:, list(banned)] = -np.inf
    if not config.do_sample:
        return np.argmax(x, axis=-1)
    x = x / np.float32(config.temperature)  # (B, V)
    if config.top_k:
        kth = np.sort(x, axis=-1)[:, -min(config.top_k, x.shape[-1])][:, None]  # (B, 1)
        x = np.where(x < kth, -np.inf, x)
    if config.top_p < 1.0:
        order = np.argsort(-x, axis=-1, kind="stable")  # (B, V), best first
        ranked = np.take_along_axis(x, order, axis=-1)
        p = softmax(ranked)
        before = np.cumsum(p, axis=-1) - p  # mass ranked strictly before each token
        drop_ranked = before >= np.float32(config.top_p)
        drop = np.zeros_like(drop_ranked)
        np.put_along_axis(drop, order, drop_ranked, axis=-1)
        x = np.where(drop, -np.inf, x)
    cdf = np.cumsum(softmax(x), axis=-1)  # (B, V)
    threshold = (u.astype(np.float32) * cdf[:, -1])[:, None]
    return np.minimum((cdf <= threshold).sum(axis=-1), x.shape[-1] - 1)


def length_normalizers(steps: int, length_penalty: float) -> np.ndarray:
    """(N + 1,) float32 table whose entry L is L ** length_penalty (entry 0 unused, set to 1).

    One table computed here and passed to both stacks: each divides a float32 score by the very
    same float32 number, where torch.pow and XLA's pow could round L ** lp differently and flip a
    near-equal ranking.
    """
    lengths = np.arange(steps + 1, dtype=np.float64)
    lengths[0] = 1.0
    return (lengths**length_penalty).astype(np.float32)


def trim_padding_columns(ids: np.ndarray, pad_id: int) -> np.ndarray:
    """(B, N) -> (B, T_out): drop the trailing columns that are pad in every row."""
    ids = np.asarray(ids)
    holds_token = np.flatnonzero((ids != pad_id).any(axis=0))
    return ids[:, : int(holds_token[-1]) + 1 if holds_token.size else 0]


__all__ = [
    "LENGTH_PENALTY_LIMIT",
    "MAX_BEAMS",
    "GenerationConfig",
    "choose_next",
    "length_normalizers",
    "search_config",
    "softmax",
    "trim_padding_columns",
    "uniforms",
]
