"""Synthetic task: sizes, determinism, sentence lengths, disjoint splits, the translation rule."""

from __future__ import annotations

import pytest

from shared.data import load_corpus, toy_task
from shared.data.toy_task import ADJECTIVES, DICTIONARY, NOUNS, load_toy


def _translate(xa_sentence: str) -> str:
    """Reference translation independent of the generator: map words, adjectives after nouns."""
    out: list[str] = []
    for word in xa_sentence.split():
        out.append(DICTIONARY[word])
        if word in NOUNS and len(out) >= 2 and out[-2] in ADJECTIVES.values():
            out[-2], out[-1] = out[-1], out[-2]
    return " ".join(out)


def test_split_sizes_and_interface() -> None:
    for split, size in {"train": 4000, "val": 200, "test": 200}.items():
        pairs = load_toy(split)
        assert len(pairs) == size
        assert all(isinstance(s, str) and isinstance(t, str) for s, t in pairs)


def test_deterministic_and_seed_dependent() -> None:
    assert load_toy("train") == load_toy("train")
    toy_task._generate.cache_clear()  # regenerate from scratch, not from the memo
    assert load_toy("train", seed=0) == load_toy("train")
    assert load_toy("train", seed=1) != load_toy("train", seed=0)


def test_lengths_vocabulary_and_disjoint_splits() -> None:
    splits = {split: load_toy(split) for split in toy_task.SPLITS}
    words = {w for pairs in splits.values() for s, _ in pairs for w in s.split()}
    assert 30 <= len(words) <= 45
    lengths = {len(s.split()) for pairs in splits.values() for s, _ in pairs}
    assert min(lengths) == 3 and max(lengths) == 10
    sources = [{s for s, _ in pairs} for pairs in splits.values()]
    assert sum(len(s) for s in sources) == len(set().union(*sources))  # no sentence in two splits


def test_targets_follow_dictionary_and_reordering() -> None:
    pairs = load_toy("train")
    assert all(_translate(s) == t for s, t in pairs)
    assert any(s.split()[1] in ADJECTIVES for s, _ in pairs)  # the reordering rule is exercised


def test_reverse_direction_and_dispatch() -> None:
    forward = load_toy("val")
    assert load_toy("val", src_lang="xb", tgt_lang="xa") == [(t, s) for s, t in forward]
    assert load_corpus("toy", "val") == forward


@pytest.mark.parametrize(
    ("split", "src", "tgt"), [("dev", "xa", "xb"), ("val", "en", "de"), ("val", "xa", "xa")]
)
def test_bad_names_are_rejected(split: str, src: str, tgt: str) -> None:
    with pytest.raises(ValueError, match="toy"):
        load_toy(split, src, tgt)


def test_unknown_corpus_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown corpus 'wmt14'"):
        load_corpus("wmt14", "train")
