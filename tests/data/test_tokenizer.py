"""Tokenizer: fixed special ids, BOS/EOS placement, round trips, determinism, save/load."""

from __future__ import annotations

import string
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, trainers

from shared.data import load_corpus
from shared.data.special_tokens import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, UNK_ID
from shared.data.tokenizer import SOURCE_FILE, Tokenizer, TokenizerError, train_tokenizer

# Every printable ASCII character once, so the round-trip property below never meets an unknown one.
ALPHABET = string.ascii_letters + string.digits + string.punctuation


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, str]]:
    return (
        load_corpus("toy", "train")[:2000]
        + [(ALPHABET, ALPHABET)] * 2
        + [
            ("A man, in a red hat; sings!", "Ein Mann mit rotem Hut singt!"),
            (
                "Caf\u00e9 \u00fcber Stra\u00dfe \u2014 \u201cquoted\u201d",
                "Gr\u00fc\u00dfe \u00e0 l'\u00e9t\u00e9",
            ),
        ]
        * 2
    )


@pytest.fixture(scope="module")
def joint(corpus: list[tuple[str, str]]) -> Tokenizer:
    return train_tokenizer(corpus, vocab_size=300)


@pytest.fixture(scope="module")
def split_tok(corpus: list[tuple[str, str]]) -> Tokenizer:
    return train_tokenizer(corpus, vocab_size=300, joint=False)


def test_special_ids_are_fixed(joint: Tokenizer, split_tok: Tokenizer) -> None:
    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID) == (0, 1, 2, 3)
    for hf in (joint._tgt, split_tok._src, split_tok._tgt):
        assert [hf.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
        assert SPECIAL_TOKENS == ("<pad>", "<bos>", "<eos>", "<unk>")


def test_bos_eos_placement(joint: Tokenizer) -> None:
    src = joint.encode_source("ta bim blor mek")
    tgt = joint.encode_target("lo eka soru dosa")
    assert src[-1] == EOS_ID and BOS_ID not in src
    assert tgt[0] == BOS_ID and tgt[-1] == EOS_ID
    assert all(i > UNK_ID for i in src[:-1] + tgt[1:-1])  # real subwords, no unknowns
    assert joint.encode_pairs([("ta bim blor mek", "lo eka soru dosa")]) == [(src, tgt)]


def test_round_trip_on_training_text(
    joint: Tokenizer, split_tok: Tokenizer, corpus: list[tuple[str, str]]
) -> None:
    for tok in (joint, split_tok):
        for s, t in corpus[::7] + corpus[-4:]:
            assert tok.decode_source(tok.encode_source(s)) == unicodedata.normalize("NFKC", s)
            assert tok.decode_target(tok.encode_target(t)) == unicodedata.normalize("NFKC", t)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=12), min_size=1, max_size=8))
def test_round_trip_property(joint: Tokenizer, words: list[str]) -> None:
    text = " ".join(words)  # "normal text": words separated by single spaces
    assert joint.decode_target(joint.encode_target(text)) == text
    assert joint.decode_source(joint.encode_source(text)) == text


def test_decode_stops_at_eos_and_accepts_arrays(joint: Tokenizer) -> None:
    ids = joint.encode_target("lo eka soru")
    garbage = joint.encode_target("mi ipa")[1:-1]
    padded = np.array(ids + garbage + [PAD_ID, PAD_ID], dtype=np.int32)
    assert joint.decode_target(padded) == "lo eka soru"
    assert joint.decode_target(ids[:-1] + [PAD_ID]) == "lo eka soru"  # no EOS: pads are skipped
    assert joint.decode_target([UNK_ID]) == ""


def test_special_token_text_is_not_a_special_id(joint: Tokenizer) -> None:
    ids = joint.encode_source("ta <eos> <pad> blor")
    assert ids.count(EOS_ID) == 1 and PAD_ID not in ids
    assert joint.decode_source(ids) == "ta <eos> <pad> blor"


def test_unknown_characters_map_to_unk(joint: Tokenizer) -> None:
    assert UNK_ID in joint.encode_source("ta \u4e2d blor")


def test_training_is_deterministic(
    corpus: list[tuple[str, str]], joint: Tokenizer, tmp_path: Path
) -> None:
    again = train_tokenizer(list(corpus), vocab_size=300)
    joint.save(tmp_path / "a")
    again.save(tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()


def test_joint_save_load(joint: Tokenizer, tmp_path: Path) -> None:
    joint.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]
    loaded = Tokenizer.load(tmp_path)
    assert loaded.joint and loaded.src_vocab_size == loaded.tgt_vocab_size == joint.tgt_vocab_size
    text = "ka dap krat nup ta vosk"
    assert loaded.encode_source(text) == joint.encode_source(text)


def test_per_language_save_load(split_tok: Tokenizer, tmp_path: Path) -> None:
    assert not split_tok.joint
    assert (
        split_tok.src_vocab_size != split_tok.tgt_vocab_size
        or split_tok._src.get_vocab() != split_tok._tgt.get_vocab()
    )
    split_tok.save(tmp_path)
    assert (tmp_path / SOURCE_FILE).is_file()
    loaded = Tokenizer.load(tmp_path)
    assert not loaded.joint
    assert (loaded.src_vocab_size, loaded.tgt_vocab_size) == (
        split_tok.src_vocab_size,
        split_tok.tgt_vocab_size,
    )
    assert loaded.encode_source("ta bim blor") == split_tok.encode_source("ta bim blor")
    assert loaded.encode_target("lo eka soru") == split_tok.encode_target("lo eka soru")


def test_joint_save_over_per_language_dir_stays_joint(
    split_tok: Tokenizer, joint: Tokenizer, tmp_path: Path
) -> None:
    split_tok.save(tmp_path)
    joint.save(tmp_path)
    assert Tokenizer.load(tmp_path).joint


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        Tokenizer.load(tmp_path)
    # A tokenizer whose special tokens sit at other ids must be refused, not silently misused.
    foreign = HFTokenizer(models.BPE(unk_token="<unk>"))
    foreign.train_from_iterator(
        ["a b c"] * 3, trainers.BpeTrainer(special_tokens=["<unk>", "<pad>"], show_progress=False)
    )
    with pytest.raises(TokenizerError, match="special tokens must have ids"):
        Tokenizer(foreign)


def test_bad_training_arguments() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer([("a", "b")], vocab_size=4)
    with pytest.raises(ValueError, match="empty"):
        train_tokenizer([], vocab_size=100)
