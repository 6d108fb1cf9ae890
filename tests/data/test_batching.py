"""Batching: each pair once per epoch, token budgets, padding/shift layout, seeded order, resume."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.data import load_corpus, train_tokenizer
from shared.data.batching import (
    Batch,
    BatchSampler,
    bucket_width,
    make_batch,
    rows_for_width,
    truncate,
    width_buckets,
)
from shared.data.special_tokens import BOS_ID, EOS_ID, PAD_ID


def random_pairs(n: int, seed: int = 0, max_words: int = 60) -> list[tuple[list[int], list[int]]]:
    """Encoded-looking pairs: source = words + EOS, target = BOS + words + EOS (ids > specials)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        s = rng.integers(4, 500, size=rng.integers(1, max_words)).tolist()
        t = rng.integers(4, 500, size=rng.integers(1, max_words)).tolist()
        pairs.append((s + [EOS_ID], [BOS_ID] + t + [EOS_ID]))
    return pairs


def fingerprint(batch: Batch) -> tuple[bytes, ...]:
    return (
        batch.src.tobytes(),
        batch.tgt_in.tobytes(),
        batch.tgt_out.tobytes(),
        batch.indices.tobytes(),
    )


def check_batch(batch: Batch, pairs: list, max_len: int | None, multiple: int) -> None:
    """Each row is its (truncated) pair, padded; tgt_in/tgt_out are the target shifted by one."""
    b_size = batch.src.shape[0]
    assert batch.tgt_in.shape == batch.tgt_out.shape and batch.tgt_in.shape[0] == b_size == len(
        batch.indices
    )
    for arr in (batch.src, batch.tgt_in, batch.tgt_out):
        assert arr.dtype == np.int32
        assert arr.shape[1] % multiple == 0 or arr.shape[1] == max_len
        assert max_len is None or arr.shape[1] <= max_len
    for row, i in enumerate(batch.indices):
        if i == -1:  # a padding row (fixed row count): all PAD, so no target and no loss
            assert (batch.src[row] == PAD_ID).all() and (batch.tgt_in[row] == PAD_ID).all()
            assert (batch.tgt_out[row] == PAD_ID).all()
            continue
        s, t = truncate(pairs[i], max_len)
        assert batch.src[row, : len(s)].tolist() == s and (batch.src[row, len(s) :] == PAD_ID).all()
        assert batch.tgt_in[row, : len(t) - 1].tolist() == t[:-1]
        assert batch.tgt_out[row, : len(t) - 1].tolist() == t[1:]
        assert (batch.tgt_in[row, len(t) - 1 :] == PAD_ID).all() and (
            batch.tgt_out[row, len(t) - 1 :] == PAD_ID
        ).all()
    assert batch.num_tokens == int((batch.tgt_out != PAD_ID).sum())


# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_tokens": 1000},
        {"max_tokens": 777, "pad_to_multiple": 8, "max_len": 40, "chunk_size": 100},
        {"batch_size": 32},
        {"batch_size": 16, "max_tokens": 400, "max_len": 24, "shuffle": False},
    ],
)
def test_epoch_covers_every_pair_once_within_limits(kwargs: dict) -> None:
    pairs = random_pairs(700)
    sampler = BatchSampler(pairs, seed=3, **kwargs)
    multiple, max_len = kwargs.get("pad_to_multiple", 1), kwargs.get("max_len")
    for epoch in range(2):
        batches = list(sampler)
        assert len(batches) == len(sampler.plan(epoch))
        seen = np.concatenate([b.indices for b in batches])
        assert sorted(seen[seen >= 0].tolist()) == list(range(len(pairs)))
        for b in batches:
            check_batch(b, pairs, max_len, multiple)
            b_size = b.src.shape[0]
            if "max_tokens" in kwargs:
                assert b_size * max(b.src.shape[1], b.tgt_in.shape[1]) <= kwargs["max_tokens"]
            if "batch_size" in kwargs:
                assert b_size <= kwargs["batch_size"]
    assert sampler.state_dict()["epoch"] == 2


def test_bucketing_keeps_padding_low() -> None:
    # Widths are powers of two (bounded compiles, module doc of shared/data/batching.py), so a side
    # may get up to twice its length; sorting neighbours by length (and each side's bucket) keeps
    # most rows near their batch's width. Counted over source and target together: independent
    # uniform lengths 1..60 on both sides, the hardest case for a shared width.
    pairs = random_pairs(3000)
    in_random_order = [make_batch(pairs[i : i + 32]) for i in range(0, len(pairs), 32)]
    for settings_ in ({"max_tokens": 2000}, {"batch_size": 32}):
        for name, batches in (("sorted", list(BatchSampler(pairs, seed=0, **settings_))), ("random", in_random_order)):
            real = sum(int((b.src != PAD_ID).sum() + (b.tgt_out != PAD_ID).sum()) for b in batches)
            padded = sum(b.src.size + b.tgt_out.size for b in batches)
            assert real / padded > 0.65 if name == "sorted" else real / padded < 0.5


def test_order_is_seeded() -> None:
    pairs = random_pairs(300)
    a = [fingerprint(b) for b in BatchSampler(pairs, max_tokens=600, seed=1)]
    b = [fingerprint(b) for b in BatchSampler(pairs, max_tokens=600, seed=1)]
    c = [fingerprint(b) for b in BatchSampler(pairs, max_tokens=600, seed=2)]
    assert a == b and a != c
    sampler = BatchSampler(pairs, max_tokens=600, seed=1)
    assert [fingerprint(x) for x in sampler] == a
    assert [fingerprint(x) for x in sampler] != a  # the next epoch is reshuffled


@settings(max_examples=25, deadline=None)
@given(consumed=st.integers(0, 60), seed=st.integers(0, 2**32 - 1))
def test_resume_yields_the_same_remaining_batches(consumed: int, seed: int) -> None:
    pairs = random_pairs(200, seed=5)
    settings_ = {
        "max_tokens": 500,
        "pad_to_multiple": 4,
        "max_len": 48,
        "seed": seed,
        "chunk_size": 64,
    }
    original = BatchSampler(pairs, **settings_)
    stream = original.stream()
    for _ in range(consumed):  # may cross epoch boundaries (an epoch here is ~20-30 batches)
        next(stream)
    state = json.loads(json.dumps(original.state_dict()))  # must survive a JSON round trip
    resumed = BatchSampler(
        pairs, **{**settings_, "seed": 0}
    )  # the state, not the argument, sets the seed
    resumed.load_state_dict(state)
    expected = [fingerprint(b) for b in itertools.islice(stream, 50)]
    assert [fingerprint(b) for b in itertools.islice(resumed.stream(), 50)] == expected


def test_state_dict_contents_and_epoch_rollover() -> None:
    sampler = BatchSampler(random_pairs(50), batch_size=10, seed=7)
    assert sampler.state_dict() == {"seed": 7, "epoch": 0, "index": 0, "num_pairs": 50}
    it = iter(sampler)
    next(it)
    assert sampler.state_dict()["index"] == 1
    list(it)
    assert sampler.state_dict() == {"seed": 7, "epoch": 1, "index": 0, "num_pairs": 50}
    finished = {"seed": 7, "epoch": 0, "index": len(sampler.plan(0)), "num_pairs": 50}
    sampler.load_state_dict(finished)
    assert (sampler.epoch, sampler.index) == (1, 0)


def test_load_state_dict_rejects_other_corpus() -> None:
    sampler = BatchSampler(random_pairs(50), batch_size=10)
    with pytest.raises(ValueError, match="saved for 49 pairs"):
        sampler.load_state_dict({"seed": 0, "epoch": 0, "index": 0, "num_pairs": 49})
    with pytest.raises(ValueError, match="outside epoch"):
        sampler.load_state_dict({"seed": 0, "epoch": 0, "index": 99, "num_pairs": 50})


# --------------------------------------------------------------------------------------------------
def test_truncation_keeps_eos() -> None:
    src = [5] * 30 + [EOS_ID]
    tgt = [BOS_ID] + [6] * 30 + [EOS_ID]
    s, t = truncate((src, tgt), max_len=10)
    assert s == [5] * 9 + [EOS_ID]
    assert t == [BOS_ID] + [6] * 9 + [EOS_ID]  # T = len(t) - 1 = 10
    batch = make_batch(
        [(s, t)], max_len=10, pad_to_multiple=8
    )  # 10 -> 16 would exceed max_len: capped
    assert batch.src.shape == batch.tgt_in.shape == (1, 10)
    assert batch.tgt_out[0, -1] == EOS_ID and batch.num_tokens == 10


def test_make_batch_layout() -> None:
    pairs = [([7, 8, EOS_ID], [BOS_ID, 9, EOS_ID]), ([7, EOS_ID], [BOS_ID, 9, 10, 11, EOS_ID])]
    batch = make_batch(pairs, pad_to_multiple=8)
    np.testing.assert_array_equal(batch.src, [[7, 8, 2, 0, 0, 0, 0, 0], [7, 2, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(
        batch.tgt_in, [[1, 9, 0, 0, 0, 0, 0, 0], [1, 9, 10, 11, 0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(
        batch.tgt_out, [[9, 2, 0, 0, 0, 0, 0, 0], [9, 10, 11, 2, 0, 0, 0, 0]]
    )
    assert batch.num_tokens == 6
    with pytest.raises(AttributeError):
        batch.num_tokens = 1  # type: ignore[misc]  # frozen


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "max_tokens"),
        ({"max_tokens": 10}, "longest pair alone needs"),
        ({"batch_size": 0}, "batch_size must be positive"),
        ({"batch_size": 4, "pad_to_multiple": 0}, "must be positive"),
    ],
)
def test_bad_settings_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BatchSampler(random_pairs(20), **kwargs)


def test_unencoded_pairs_are_rejected() -> None:
    with pytest.raises(ValueError, match="encode with Tokenizer"):
        BatchSampler([([5, 6], [7, 8])], batch_size=2)


def test_end_to_end_from_toy_corpus() -> None:
    pairs = load_corpus("toy", "val")
    tok = train_tokenizer(load_corpus("toy", "train")[:1000], vocab_size=200)
    encoded = tok.encode_pairs(pairs)
    batches = list(BatchSampler(encoded, max_tokens=256, pad_to_multiple=8, seed=0))
    assert sum(int((b.indices >= 0).sum()) for b in batches) == len(pairs)
    b = batches[0]
    row = int(b.indices[0])
    assert tok.decode_source(b.src[0]) == pairs[row][0]
    assert tok.decode_target(b.tgt_out[0]) == pairs[row][1]


@pytest.mark.parametrize("settings_", [{"batch_size": 32, "pad_to_multiple": 8, "max_len": 48},
                                       {"max_tokens": 700, "pad_to_multiple": 4, "max_len": 40},
                                       {"batch_size": 8, "max_tokens": 3000, "pad_to_multiple": 32, "max_len": 512}])  # fmt: skip
def test_shapes_come_from_a_small_fixed_set(settings_: dict) -> None:
    """The fix for one XLA compile per new padded length (issue #18 item 5): widths are
    pad_to_multiple * 2^k (cap max_len), one row count per width, so at most max_shapes shapes."""
    sampler = BatchSampler(random_pairs(2000, max_words=700), seed=0, **settings_)
    batches = [b for _ in range(2) for b in sampler]
    widths = set(width_buckets(settings_["pad_to_multiple"], settings_["max_len"]))
    assert all(b.src.shape[1] in widths and b.tgt_in.shape[1] in widths for b in batches)
    rows = {}
    for b in batches:  # one row count per width, padding rows included
        rows.setdefault(max(b.src.shape[1], b.tgt_in.shape[1]), set()).add(b.src.shape[0])
    assert all(len(r) == 1 for r in rows.values())
    shapes = {(b.src.shape, b.tgt_in.shape) for b in batches}
    assert len(shapes) <= sampler.max_shapes == len(widths) ** 2


def test_bucket_widths_are_powers_of_two_times_the_multiple_capped() -> None:
    assert width_buckets(32, 512) == (32, 64, 128, 256, 512)
    assert width_buckets(16, 96) == (16, 32, 64, 96)
    assert [bucket_width(n, 8, 40) for n in (1, 8, 9, 17, 33, 40)] == [8, 8, 16, 32, 40, 40]
    assert rows_for_width(64, 8, None) == 8 and rows_for_width(64, None, 700) == 10 and rows_for_width(64, 8, 300) == 4
