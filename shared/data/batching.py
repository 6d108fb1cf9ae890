"""Length-bucketed, padded numpy batches from encoded pairs, in a seeded order that can be resumed.

Axis glossary (see shared/axes.py): B batch, S source length, T target length.

Input: (source ids, target ids) pairs as made by `Tokenizer.encode_source` / `encode_target`:
source = subwords + EOS, target = BOS + subwords + EOS. A batch holds
  src     (B, S)  source ids, PAD_ID after the end
  tgt_in  (B, T)  target[:-1]: BOS + subwords, what the decoder reads
  tgt_out (B, T)  target[1:]: subwords + EOS, what the decoder must predict
The ids that start, end and pad sequences are the translation tokenizer's (shared/data/special_tokens.py)
unless a `SequenceIds` says otherwise: T5 starts the decoder with its pad id and ends with </s> (1).
The order of an epoch depends only on (seed, epoch), so a sampler restored from `state_dict()`
yields exactly the batches the original would have yielded next.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.data.special_tokens import BOS_ID, EOS_ID, PAD_ID

Pair = tuple[Sequence[int], Sequence[int]]


@dataclass(frozen=True)
class SequenceIds:
    """Which ids begin a decoder input (start), end every sequence (end) and fill the padding (pad)."""

    start: int = BOS_ID
    end: int = EOS_ID
    pad: int = PAD_ID


TRANSLATION_IDS = SequenceIds()


@dataclass(frozen=True)
class Batch:
    """One padded batch; all arrays int32, padded with PAD_ID."""

    src: np.ndarray  # (B, S)
    tgt_in: np.ndarray  # (B, T)
    tgt_out: np.ndarray  # (B, T)
    indices: np.ndarray  # (B,) position of each row's pair in the input list (to restore order)
    num_tokens: int  # non-pad tokens in tgt_out: the loss normaliser


def _round_up(length: int, multiple: int, cap: int | None) -> int:
    """Length rounded up to a multiple (fewer shapes, fewer jit recompiles), at most cap."""
    padded = -(-length // multiple) * multiple
    return min(padded, cap) if cap is not None else padded


def truncate(pair: Pair, max_len: int | None, end_id: int = EOS_ID) -> tuple[list[int], list[int]]:
    """Cut a pair so S <= max_len and T <= max_len, keeping the final EOS on both sides.

    Keeping EOS keeps every sequence well formed: the encoder still sees an end marker and the
    target still ends in EOS. The target holds T + 1 ids (BOS ... EOS) before the shift.
    """
    src, tgt = list(pair[0]), list(pair[1])
    if max_len is None:
        return src, tgt
    if len(src) > max_len:
        src = src[: max_len - 1] + [end_id]
    if len(tgt) > max_len + 1:
        tgt = tgt[:max_len] + [end_id]
    return src, tgt


def make_batch(
    pairs: Sequence[Pair],
    indices: Sequence[int] | np.ndarray | None = None,
    pad_to_multiple: int = 1,
    max_len: int | None = None,
    pad_id: int = PAD_ID,
) -> Batch:
    """Pad truncated pairs into one Batch; lengths round up to pad_to_multiple, cap max_len."""
    if not pairs:
        raise ValueError("cannot make a batch from zero pairs")
    s_len = _round_up(max(len(s) for s, _ in pairs), pad_to_multiple, max_len)
    t_len = _round_up(max(len(t) - 1 for _, t in pairs), pad_to_multiple, max_len)
    src = np.full((len(pairs), s_len), pad_id, dtype=np.int32)  # (B, S)
    tgt_in = np.full((len(pairs), t_len), pad_id, dtype=np.int32)  # (B, T)
    tgt_out = np.full((len(pairs), t_len), pad_id, dtype=np.int32)  # (B, T)
    for row, (s, t) in enumerate(pairs):
        src[row, : len(s)] = s
        tgt_in[row, : len(t) - 1] = t[:-1]
        tgt_out[row, : len(t) - 1] = t[1:]
    idx = np.arange(len(pairs)) if indices is None else np.asarray(indices)
    return Batch(
        src=src,
        tgt_in=tgt_in,
        tgt_out=tgt_out,
        indices=idx.astype(np.int32),
        num_tokens=int(np.count_nonzero(tgt_out != pad_id)),
    )


class BatchSampler:
    """Seeded, resumable stream of length-bucketed batches over a list of encoded pairs.

    One epoch: shuffle all pairs, cut them into chunks of `chunk_size`, sort each chunk by length
    (so neighbours pad little), pack consecutive pairs greedily into batches under `max_tokens`
    (B × max(S, T), padding included) and/or `batch_size` (B), then shuffle the batch order (so
    training does not see lengths rising through each chunk). Iterating yields the rest of the
    current epoch; the next iteration starts the next epoch.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        *,
        max_tokens: int | None = None,
        batch_size: int | None = None,
        max_len: int | None = None,
        pad_to_multiple: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        chunk_size: int = 8192,
        ids: SequenceIds = TRANSLATION_IDS,
    ) -> None:
        """Check the settings and truncate every pair to max_len; see the class docstring."""
        if max_tokens is None and batch_size is None:
            raise ValueError(
                "give max_tokens (tokens per batch, padding included) and/or batch_size (pairs)"
            )
        for name, value in (
            ("max_tokens", max_tokens),
            ("batch_size", batch_size),
            ("max_len", max_len),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        if pad_to_multiple < 1 or chunk_size < 1:
            raise ValueError(
                f"pad_to_multiple and chunk_size must be positive, "
                f"got {pad_to_multiple}, {chunk_size}"
            )
        if max_len is not None and max_len < 2:
            raise ValueError(f"max_len must leave room for a token and EOS, got {max_len}")
        if not pairs:
            raise ValueError("cannot batch an empty list of pairs")
        self.pairs = [truncate(p, max_len, ids.end) for p in pairs]
        for i, (s, t) in enumerate(self.pairs):
            if not s or s[-1] != ids.end or len(t) < 2 or t[0] != ids.start or t[-1] != ids.end:
                raise ValueError(
                    f"pair {i} is not encoded as expected (source ... end {ids.end}, target start {ids.start} "
                    f"... end {ids.end}); encode with Tokenizer.encode_source / encode_target (or T5Tokenizer's)"
                )
        self.ids = ids
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.max_len = max_len
        self.pad_to_multiple = pad_to_multiple
        self.shuffle = shuffle
        self.chunk_size = chunk_size
        # Cost key of each pair: its padded max(S, T), i.e. the width it forces on its batch.
        longest = [max(len(s), len(t) - 1) for s, t in self.pairs]
        self._width = np.array(
            [_round_up(n, pad_to_multiple, max_len) for n in longest], dtype=np.int64
        )
        self._shorter = np.array([min(len(s), len(t) - 1) for s, t in self.pairs], dtype=np.int64)
        if max_tokens is not None and int(self._width.max()) > max_tokens:
            raise ValueError(
                f"the longest pair alone needs {int(self._width.max())} tokens (padding included) "
                f"but max_tokens is {max_tokens}; raise max_tokens or lower max_len"
            )
        self.seed = seed
        self.epoch = 0
        self.index = 0  # batches of the current epoch already handed out
        self._plan_cache: tuple[int, int, list[np.ndarray]] | None = None

    # ------------------------------------------------------------------------------------------
    def plan(self, epoch: int) -> list[np.ndarray]:
        """Pair indices of each batch of an epoch, in yield order; depends on (seed, epoch) only."""
        if self._plan_cache is not None and self._plan_cache[:2] == (self.seed, epoch):
            return self._plan_cache[2]
        # A generator seeded by (seed, epoch) alone: any epoch can be rebuilt without replaying
        # the ones before it, which is what makes resuming exact and cheap.
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.pairs)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        batches: list[np.ndarray] = []
        for start in range(0, n, self.chunk_size):
            chunk = order[start : start + self.chunk_size]
            # lexsort is stable: ties keep the shuffled order, so the result is still seed-driven.
            chunk = chunk[np.lexsort((self._shorter[chunk], self._width[chunk]))]
            batches.extend(self._pack(chunk))
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        self._plan_cache = (self.seed, epoch, batches)
        return batches

    def _pack(self, sorted_chunk: np.ndarray) -> list[np.ndarray]:
        """Greedily cut length-sorted indices into batches within max_tokens and batch_size."""
        batches, start = [], 0
        for end in range(1, len(sorted_chunk) + 1):
            size = end - start
            # Widths ascend within the sorted chunk, so the newest pair sets the batch width.
            too_many_tokens = (
                self.max_tokens is not None
                and size * int(self._width[sorted_chunk[end - 1]]) > self.max_tokens
            )
            too_many_pairs = self.batch_size is not None and size > self.batch_size
            if too_many_tokens or too_many_pairs:
                batches.append(sorted_chunk[start : end - 1])
                start = end - 1
        batches.append(sorted_chunk[start:])
        return batches

    def batch(self, indices: np.ndarray) -> Batch:
        """The padded Batch of the given pair indices."""
        return make_batch(
            [self.pairs[i] for i in indices], indices, self.pad_to_multiple, self.max_len, self.ids.pad
        )

    def __len__(self) -> int:
        """Number of batches in the current epoch (all of it, not just the rest)."""
        return len(self.plan(self.epoch))

    def __iter__(self) -> Iterator[Batch]:
        """Yield the rest of the current epoch; the position advances as each batch is yielded."""
        epoch, plan = self.epoch, self.plan(self.epoch)
        while self.epoch == epoch and self.index < len(plan):
            indices = plan[self.index]
            # Advance before yielding: a state_dict() taken while the consumer holds this batch
            # resumes after it, the batch being already handed out.
            self.index += 1
            if self.index == len(plan):
                self.epoch, self.index = epoch + 1, 0
            yield self.batch(indices)

    def stream(self) -> Iterator[Batch]:
        """Yield batches forever, epoch after epoch."""
        while True:
            yield from self

    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The position as a JSON-serialisable dict: seed, epoch, and batches done in the epoch."""
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "index": self.index,
            "num_pairs": len(self.pairs),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a `state_dict()` position; the sampler needs the same pairs and settings."""
        if state.get("num_pairs", len(self.pairs)) != len(self.pairs):
            raise ValueError(
                f"state was saved for {state['num_pairs']} pairs but this sampler has "
                f"{len(self.pairs)}; "
                f"resume with the same corpus"
            )
        self.seed, self.epoch, self.index = (
            int(state["seed"]),
            int(state["epoch"]),
            int(state["index"]),
        )
        num_batches = len(self.plan(self.epoch))
        if not 0 <= self.index <= num_batches:
            raise ValueError(
                f"state index {self.index} is outside epoch {self.epoch}'s {num_batches} batches"
            )
        if self.index == num_batches:  # a finished epoch is the start of the next one
            self.epoch, self.index = self.epoch + 1, 0
