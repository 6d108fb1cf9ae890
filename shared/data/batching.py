"""Length-bucketed, padded numpy batches from encoded pairs, in a seeded order that can be resumed.

Axis glossary (see shared/parity/axes.py): B batch, S source length, T target length.

Input: (source ids, target ids) pairs as made by `Tokenizer.encode_source` / `encode_target`:
source = subwords + EOS, target = BOS + subwords + EOS. A batch holds
  src     (B, S)  source ids, PAD_ID after the end
  tgt_in  (B, T)  target[:-1]: BOS + subwords, what the decoder reads
  tgt_out (B, T)  target[1:]: subwords + EOS, what the decoder must predict
The ids that start, end and pad sequences are the translation tokenizer's (shared/data/special_tokens.py)
unless a `SequenceIds` says otherwise: T5 starts the decoder with its pad id and ends with </s> (1).

Shapes come from a small fixed set, so a jitted step compiles a bounded number of times (each new
(B, S, T) is a fresh XLA compile: a 512-token recipe padded to multiples of 32 met 26 shapes in 50
steps, and JAX spent most of a short fine-tune compiling):
  S, T  the smallest of pad_to_multiple * 2^k (k = 0, 1, ...) that holds the batch's longest
        sequence, capped at max_len (`bucket_width`; all of them: `width_buckets`);
  B     fixed by the sampler (`rows_for_width`): batch_size, or max_tokens // width, or the smaller;
        a short batch (an epoch's last of a chunk) gets all-PAD rows (index -1, no target, no loss:
        the same padding rows shared/training/sharding.py adds, so they change no loss and no gradient).
So at most len(width_buckets)^2 shapes per run (`BatchSampler.max_shapes`). Powers of two cost some
padding (at most 2x, ~1.3x on TweetSum's 50-500-token dialogues) in both stacks alike; the sampler
packs neighbours of similar length, so most batches sit well inside their bucket.
Choosing pad_to_multiple trades padding for compiles: a coarser ladder pads more (compute paid by
both stacks on every step) and meets fewer shapes (a JAX compile each, ~30 s for flan-t5-base's LoRA
step on 2 cores). When one side is short, a multiple at least its longest length gives that side a
single width: the book's TweetSum recipe pads to 128, so every summary (at most ~115 tokens) takes
T = 128 and 50 steps meet 2 shapes, not 6 (notes/README_jax-compile.md derives the trade).
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


def bucket_width(length: int, multiple: int, cap: int | None) -> int:
    """The padded width of a batch whose longest sequence has `length` tokens: the smallest
    multiple * 2^k that holds it, at most cap (module doc: few shapes, few jit compiles)."""
    width = multiple
    while width < length:
        width *= 2
    return min(width, cap) if cap is not None else width


def width_buckets(multiple: int, cap: int) -> tuple[int, ...]:
    """Every width bucket_width can give for sequences of 1..cap tokens, ascending."""
    widths = [bucket_width(1, multiple, cap)]
    while widths[-1] < cap:
        widths.append(bucket_width(widths[-1] + 1, multiple, cap))
    return tuple(widths)


def rows_for_width(width: int, batch_size: int | None, max_tokens: int | None) -> int:
    """The fixed row count of every batch of this width: batch_size, max_tokens // width, or the smaller."""
    limits = [n for n in (batch_size, None if max_tokens is None else max(1, max_tokens // width)) if n is not None]
    if not limits:
        raise ValueError("give max_tokens and/or batch_size")
    return min(limits)


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
    rows: int | None = None,
) -> Batch:
    """Pad truncated pairs into one Batch; widths are bucket_width's (pad_to_multiple * 2^k, cap
    max_len); rows: pad B up to this many with all-PAD rows (index -1), default len(pairs)."""
    if not pairs:
        raise ValueError("cannot make a batch from zero pairs")
    rows = len(pairs) if rows is None else rows
    if rows < len(pairs):
        raise ValueError(f"{len(pairs)} pairs do not fit in {rows} rows")
    s_len = bucket_width(max(len(s) for s, _ in pairs), pad_to_multiple, max_len)
    t_len = bucket_width(max(len(t) - 1 for _, t in pairs), pad_to_multiple, max_len)
    src = np.full((rows, s_len), pad_id, dtype=np.int32)  # (B, S)
    tgt_in = np.full((rows, t_len), pad_id, dtype=np.int32)  # (B, T)
    tgt_out = np.full((rows, t_len), pad_id, dtype=np.int32)  # (B, T)
    for row, (s, t) in enumerate(pairs):
        src[row, : len(s)] = s
        tgt_in[row, : len(t) - 1] = t[:-1]
        tgt_out[row, : len(t) - 1] = t[1:]
    idx = np.arange(len(pairs)) if indices is None else np.asarray(indices)
    idx = np.concatenate([idx, np.full(rows - len(pairs), -1, dtype=idx.dtype)])  # (B,): -1 = a padding row
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
    training does not see lengths rising through each chunk). Every batch has one of a bounded set
    of shapes (module doc; `max_shapes`). Iterating yields the rest of the
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
            [bucket_width(n, pad_to_multiple, max_len) for n in longest], dtype=np.int64
        )
        self._shorter = np.array([min(len(s), len(t) - 1) for s, t in self.pairs], dtype=np.int64)
        # Each side's own bucket: within one width, pairs whose S and T fall in the same buckets go
        # together, so a batch pads neither side beyond its bucket for the sake of the other.
        self._side_buckets = np.array(
            [[bucket_width(len(s), pad_to_multiple, max_len), bucket_width(len(t) - 1, pad_to_multiple, max_len)]
             for s, t in self.pairs], dtype=np.int64,
        )  # fmt: skip
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
            sides = self._side_buckets[chunk]
            chunk = chunk[np.lexsort((self._shorter[chunk], sides[:, 1], sides[:, 0], self._width[chunk]))]
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
        """The padded Batch of the given pair indices, with the fixed row count of its width."""
        pairs = [self.pairs[i] for i in indices]
        width = max(bucket_width(max(len(s), len(t) - 1), self.pad_to_multiple, self.max_len) for s, t in pairs)
        rows = rows_for_width(width, self.batch_size, self.max_tokens)
        return make_batch(pairs, indices, self.pad_to_multiple, self.max_len, self.ids.pad, rows=max(rows, len(pairs)))

    @property
    def max_shapes(self) -> int:
        """The most distinct (B, S, T) batch shapes this sampler can yield: one B per width, so one
        shape per (S, T) pair of width buckets (the bound on jit compiles of a train or eval step)."""
        cap = self.max_len if self.max_len is not None else int(self._width.max())
        return len(width_buckets(self.pad_to_multiple, cap)) ** 2

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
