"""Framework-free parts of autoregressive decoding: settings, input checks, batching, trimming.

Both `torch_impl.decoding` and `jax_impl.decoding` follow the same contract (axis letters: B batch,
S source length, T target length, N max new tokens, V vocabulary):
  src_ids (B, S) int -> generated ids (B, T_out) numpy int32, without the leading BOS.
Generation starts from BOS; a row is finished once it emits EOS and then emits PAD; the batch stops
when every row is finished or after N tokens, so T_out = min(N, last row's EOS step + 1). A row
whose source is all PAD is a padding row (it fills a fixed-size batch): finished from the start.
PAD and BOS are never generated: the loss never trains the PAD logit and BOS only starts the
decoder input, so emitting either would be meaningless (and a PAD mid-sentence would be read as
padding by the next step's mask).

Beam search (strategy "beam", K = num_beams, lp = length_penalty); both stacks run exactly this:
  * A hypothesis's score is the sum of the float32 log-softmax of its tokens, taken over the
    tokens that may be generated (PAD and BOS at -inf before the softmax). A finished hypothesis
    (ended by EOS, EOS counted in its length L) ranks by  score / L ** lp  (the GNMT/HF "simple"
    normalisation: lp > 0 favours longer outputs, lp < 0 shorter ones, 0 ranks by raw score).
  * Each row keeps K alive beams (BOS + t tokens, none EOS) and a pool of at most K finished
    hypotheses. It starts from one alive beam, BOS with score 0; the other K - 1 start at -inf so
    the first step does not expand K copies of BOS (an -inf beam never beats a finite one).
  * Step t ranks the K * V extensions of the alive beams by score, best first, equal scores by the
    lower flat index beam * V + token, and walks the first 2K (each beam has a single EOS
    extension, so at least K of them are not EOS). An EOS extension among the first K ranks with a
    finite score is offered to the pool, which keeps the K best by normalised score (equal ones:
    the earlier found, i.e. pool before offers, offers by rank); EOS extensions ranked below the
    first K are dropped (HF's rule: with K = 1 this makes beam search exactly greedy). The first K
    non-EOS extensions, in rank order, become the next alive beams.
  * Stopping rule (HF's early_stopping=False): after step t a row is done when its pool holds K
    hypotheses and its best alive beam, normalised at its current length t + 1, is no better than
    the pool's worst: best_alive / (t + 1) ** lp <= worst_finished. Extending a beam only lowers
    its score, so for lp <= 0 nothing alive could enter the pool any more; for lp > 0 a longer
    continuation might, and the search gives it up (as HF does), which keeps K = 1 exactly greedy.
    Done rows offer nothing more. The batch stops when every row is done or after N steps.
  * After N steps, a row not done offers its alive beams (unfinished, length N) to the pool; the
    pool's best is the row's output: its tokens, EOS, then PAD. Padding rows return all PAD.
  * T_out is trimmed as for greedy: the last column where some row still holds a token.
Incremental decoding. The algorithms reach a model only through its family's incremental decoder,
an object with the same three operations in both stacks (torch_impl/incremental.py and
jax_impl/incremental.py; C copies of each source row, C = K for beam search, else 1):
  start(src (B, S), N, C)          -> cache for B*C rows, row b*C + c being copy c of source row b
                                      (the source is encoded once, then repeated)
  step(cache, tokens (B*C,), t)    -> (logits (B*C, V) for position t + 1, cache): feeds the token at
                                      position t (BOS at t = 0)
  reorder(cache, rows (B*C,))      -> cache in which row i continues row rows[i]; rows stay within
                                      their source row's copies (beam search moving hypotheses)
(jax_impl's operations also take the params first, and its cache is a pytree of fixed shapes.)
A key/value cache ("self_k"/"self_v" slots per decoder layer, the memory's "cross_k"/"cross_v"
computed once) makes each step one position of work; the reference decoder without a cache
keeps the tokens and re-runs the decoder over the whole prefix. Both give the same tokens
(DecodeConfig.use_cache picks; parity_tests/test_kv_cache.py). A new model family (a decoder-only
model, T5) plugs into greedy, top-k and beam search by providing these three operations.

Float32 scores are never -0.0 (log-softmax of finite logits gives +0.0 at most, and sums start at
+0.0), so the tie rule above does not depend on how a framework orders -0.0 against 0.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shared.config.model_config import ModelConfig
from shared.data.special_tokens import BOS_ID, EOS_ID

STRATEGIES = ("greedy", "top_k", "beam")
# |length_penalty| beyond this takes L ** lp out of float32's range for long outputs (4096 ** 10 is
# 1e36) while no useful setting lies there: GNMT tuned lp in 0.6..1, HF's default is 1.
LENGTH_PENALTY_LIMIT = 10.0


@dataclass(frozen=True)
class DecodeConfig:
    """How to pick each next token: greedy argmax, top-k sampling with a temperature, or beam search."""

    max_new_tokens: int | None = None  # N; None = model max_len - 1 (BOS + N fill the positions)
    strategy: str = "greedy"
    k: int = 10  # top_k: sample among the k most probable tokens (clamped to the vocabulary)
    temperature: float = 1.0  # top_k: p ∝ exp(logit / temperature) over the kept tokens
    num_beams: int = 4  # beam: K hypotheses kept per row (K = 1 gives greedy's tokens)
    length_penalty: float = 1.0  # beam: finished hypotheses rank by score / length ** length_penalty
    use_cache: bool = True  # key/value cache (one position per step); False re-runs the whole prefix

    def __post_init__(self) -> None:
        problems = []
        n = self.max_new_tokens
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            problems.append(f"max_new_tokens must be a positive integer or None, got {n!r}")
        if self.strategy not in STRATEGIES:
            problems.append(f"unknown strategy {self.strategy!r}; expected one of {', '.join(STRATEGIES)}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            problems.append(f"k must be a positive integer, got {self.k!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (np.isfinite(t) and t > 0):
            problems.append(f"temperature must be a finite number > 0, got {t!r}")
        if isinstance(self.num_beams, bool) or not isinstance(self.num_beams, int) or self.num_beams < 1:
            problems.append(f"num_beams must be a positive integer, got {self.num_beams!r}")
        lp = self.length_penalty
        if isinstance(lp, bool) or not isinstance(lp, (int, float)) or not (
            np.isfinite(lp) and abs(lp) <= LENGTH_PENALTY_LIMIT
        ):
            limit = f"{LENGTH_PENALTY_LIMIT:g}"
            problems.append(f"length_penalty must be a finite number in [-{limit}, {limit}], got {lp!r}")
        if not isinstance(self.use_cache, bool):
            problems.append(f"use_cache must be a bool, got {self.use_cache!r}")
        if problems:
            raise ValueError("invalid DecodeConfig:\n  - " + "\n  - ".join(problems))

    def steps(self, model: ModelConfig) -> int:
        """N for this model: at most max_len - 1, so that BOS + N tokens fit the positional table."""
        limit = model.max_len - 1
        if limit < 1:
            raise ValueError(f"max_len {model.max_len} leaves no room to generate after BOS")
        if self.max_new_tokens is None:
            return limit
        if self.max_new_tokens > limit:
            raise ValueError(
                f"max_new_tokens {self.max_new_tokens} exceeds the model's max_len - 1 = {limit}"
            )
        return self.max_new_tokens

    def top_k(self, vocab_size: int) -> int:
        """k clamped to V: asking for more tokens than exist keeps them all (as HF generate does)."""
        return min(self.k, vocab_size)


def generation_config(decode: DecodeConfig):
    """This DecodeConfig as shared.decoding.generation.GenerationConfig (what torch_impl.generate takes).

    top_k sampling -> do_sample with top_k (its k-th largest logit kept with ties, as the old rule's
    torch.topk up to ties) and temperature; beam -> num_beams and length_penalty.
    """
    from shared.decoding.generation import GenerationConfig

    sampling, beam = decode.strategy == "top_k", decode.strategy == "beam"
    return GenerationConfig(max_new_tokens=decode.max_new_tokens, do_sample=sampling, temperature=decode.temperature,
                            top_k=decode.k if sampling else 0, num_beams=decode.num_beams if beam else 1,
                            length_penalty=decode.length_penalty, use_cache=decode.use_cache)


def search_config(max_new_tokens: int, model: ModelConfig, num_beams: int = 1) -> DecodeConfig:
    """The training backends' decode settings: greedy for one beam, else beam search (default lp).

    N is capped at max_len - 1, so a config's max_decode_len may exceed what the model can hold.
    """
    steps = min(max_new_tokens, model.max_len - 1)
    if num_beams == 1:
        return DecodeConfig(max_new_tokens=steps)
    return DecodeConfig(max_new_tokens=steps, strategy="beam", num_beams=num_beams)


def normalized_score(score: float, length: int, length_penalty: float) -> float:
    """The rank of a finished hypothesis: score / length ** length_penalty (module docstring)."""
    return score / length**length_penalty


def length_normalizers(steps: int, length_penalty: float) -> np.ndarray:
    """(N + 1,) float32 table whose entry L is L ** length_penalty (entry 0 unused, set to 1).

    One table computed here, passed to both stacks: each then divides a float32 score by the very
    same float32 number (IEEE division rounds identically everywhere), where torch.pow and XLA's
    pow could round L ** lp differently and flip a near-equal ranking.
    """
    lengths = np.arange(steps + 1, dtype=np.float64)
    lengths[0] = 1.0
    return (lengths**length_penalty).astype(np.float32)


def trim_padding_columns(ids: np.ndarray, pad_id: int) -> np.ndarray:
    """(B, N) -> (B, T_out): drop the trailing columns that are PAD in every row.

    PAD is never generated, so a row's last non-PAD token is its EOS (or token N of a row cut by
    max_new_tokens): T_out is the longest row's EOS step + 1, or N, as the greedy loop's exit gives.
    """
    ids = np.asarray(ids)
    holds_token = np.flatnonzero((ids != pad_id).any(axis=0))
    return ids[:, : int(holds_token[-1]) + 1 if holds_token.size else 0]


def banned_ids(model: ModelConfig) -> tuple[int, ...]:
    """Ids whose logits are set to -inf before choosing: PAD and BOS (see the module docstring).

    BOS is the model's decoder start id (`bos_id`; T5 starts from its pad id, so one id is banned).
    """
    return tuple(sorted({model.pad_id, model.bos_id}))


def check_source_ids(src_ids: np.ndarray, model: ModelConfig) -> np.ndarray:
    """src_ids as a (B, S) int array, or ValueError listing every problem."""
    array = np.asarray(src_ids)
    problems = []
    if array.ndim != 2:
        problems.append(f"src_ids must be 2-D (B, S), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        problems.append(f"src_ids must hold integers, got dtype {array.dtype}")
    elif array.size:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= model.src_vocab_size:
            problems.append(
                f"src_ids must lie in [0, {model.src_vocab_size}), found values in [{low}, {high}]"
            )
    if array.ndim == 2 and array.shape[1] > model.max_len:
        problems.append(f"source length {array.shape[1]} exceeds max_len {model.max_len}")
    if array.ndim == 2 and array.shape[1] == 0:
        problems.append("source length is 0: every row needs at least one position")
    if problems:
        raise ValueError("bad src_ids:\n  - " + "\n  - ".join(problems))
    return array


def padding_rows(src_ids: np.ndarray, pad_id: int) -> np.ndarray:
    """(B,) True for rows that are all PAD: batch filler, finished before the first step."""
    return np.all(np.asarray(src_ids) == pad_id, axis=1)


def trim_at_eos(ids: Sequence[int], eos_id: int = EOS_ID) -> list[int]:
    """One row of generated ids up to (not including) its first EOS (the model's own eos_id where it has one)."""
    ids = [int(i) for i in ids]
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (sorted by length, then cut every batch_size).

    Similar lengths waste little padding; the caller restores the input order from the indices.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_sources(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    length_multiple: int = 8,
    max_len: int | None = None,
    rows: int | None = None,
) -> np.ndarray:
    """Sequences -> (rows or len, S) int32, S rounded up to a multiple (capped at max_len).

    Fixed bucket shapes bound the number of distinct (B, S) shapes, so a jitted decoder compiles
    once per bucket instead of once per batch. Extra rows are all PAD: padding rows, see above.
    """
    longest = max((len(s) for s in sequences), default=1)
    if max_len is not None and longest > max_len:
        raise ValueError(f"a source of {longest} tokens exceeds max_len {max_len}")
    width = -(-max(longest, 1) // length_multiple) * length_multiple
    if max_len is not None:
        width = min(width, max_len)
    count = len(sequences) if rows is None else rows
    if count < len(sequences):
        raise ValueError(f"rows={rows} is fewer than the {len(sequences)} sequences")
    out = np.full((count, width), pad_id, dtype=np.int32)  # (B, S)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = seq
    return out


__all__ = [
    "BOS_ID",
    "EOS_ID",
    "LENGTH_PENALTY_LIMIT",
    "STRATEGIES",
    "DecodeConfig",
    "banned_ids",
    "check_source_ids",
    "length_buckets",
    "length_normalizers",
    "normalized_score",
    "pad_sources",
    "padding_rows",
    "search_config",
    "trim_at_eos",
    "trim_padding_columns",
]
