"""The one rule that finds every corpus's files (shared/data/data_dirs.py): the directory given
(--data-dir / data_dir), then $TWINFORMER_<CORPUS>_DIR, then the cache; one message when not found."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from shared.data import data_dirs, multi30k
from shared.data.text_lines import load_lm_texts
from shared.data.tweetsum import load_tweetsum
from tests.conftest import CORPUS_SKIP_MARK, corpus_skip_reason, corpus_skip_summary


def _write_tweetsum(directory: Path, summary: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with gzip.open(directory / "tweetsum_test.csv.gz", "wt", encoding="utf-8") as handle:
        handle.write(f'inputs,summaries\n"a dialogue","{summary}"\n')
    return directory


@pytest.fixture
def no_corpus_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in data_dirs.CORPUS_ENV.values():
        monkeypatch.delenv(env, raising=False)


def test_every_corpus_with_files_has_a_variable_and_multi30k_uses_the_rule(no_corpus_env, tmp_path, monkeypatch):
    assert data_dirs.CORPUS_ENV == {"multi30k": "TWINFORMER_MULTI30K_DIR", "tweetsum": "TWINFORMER_TWEETSUM_DIR",
                                    "text": "TWINFORMER_TEXT_DIR"}  # fmt: skip
    monkeypatch.setenv("TWINFORMER_MULTI30K_DIR", str(tmp_path / "env"))
    assert multi30k.search_dirs(tmp_path / "given") == data_dirs.search_dirs("multi30k", tmp_path / "given")
    assert multi30k.cache_dir() == data_dirs.cache_dir("multi30k")


def test_tweetsum_is_found_by_its_environment_variable(no_corpus_env, tmp_path, monkeypatch):
    _write_tweetsum(tmp_path / "book-ch5", "from the variable")
    monkeypatch.setenv("TWINFORMER_TWEETSUM_DIR", str(tmp_path / "book-ch5"))
    assert load_tweetsum("test")[1] == ["from the variable"]


def test_tweetsum_lookup_order_is_given_dir_then_variable_then_cache(no_corpus_env, tmp_path, monkeypatch):
    monkeypatch.setenv("TWINFORMER_CACHE", str(tmp_path / "cache"))
    _write_tweetsum(tmp_path / "cache" / "tweetsum", "from the cache")
    assert load_tweetsum("test")[1] == ["from the cache"]
    monkeypatch.setenv("TWINFORMER_TWEETSUM_DIR", str(_write_tweetsum(tmp_path / "env", "from the variable")))
    assert load_tweetsum("test")[1] == ["from the variable"]
    assert load_tweetsum("test", _write_tweetsum(tmp_path / "given", "from --data-dir"))[1] == ["from --data-dir"]
    assert load_tweetsum("test", tmp_path / "empty")[1] == ["from the variable"]  # a given dir without it: next


def test_not_found_names_every_directory_and_both_ways_to_fix_it(no_corpus_env, tmp_path, monkeypatch):
    monkeypatch.setenv("TWINFORMER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TWINFORMER_TWEETSUM_DIR", str(tmp_path / "env"))
    with pytest.raises(FileNotFoundError) as error:
        load_tweetsum("valid", tmp_path / "given")
    message = str(error.value)
    assert message.startswith(f"no tweetsum_valid.csv.gz or .csv in {tmp_path / 'given'}, {tmp_path / 'env'}, "
                              f"{tmp_path / 'cache' / 'tweetsum'}")  # fmt: skip
    assert "--data-dir" in message and "TWINFORMER_TWEETSUM_DIR" in message


def test_text_corpus_follows_the_same_rule(no_corpus_env, tmp_path, monkeypatch):
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "train.txt").write_text("one\n\ntwo\n")
    monkeypatch.setenv("TWINFORMER_TEXT_DIR", str(tmp_path / "texts"))
    assert load_lm_texts("text", "train", None, None) == ["one", "two"]
    with pytest.raises(FileNotFoundError, match="TWINFORMER_TEXT_DIR"):
        load_lm_texts("text", "val", None, None)


def test_tweetsum_targets_for_a_causal_lm_read_the_given_directory(no_corpus_env, tmp_path):
    assert load_lm_texts("tweetsum", "test", str(_write_tweetsum(tmp_path, "given")), None) == ["given"]


def test_one_skip_reason_names_the_variable_and_the_summary_counts_it():
    reason = corpus_skip_reason("multi30k")
    assert CORPUS_SKIP_MARK in reason and "TWINFORMER_MULTI30K_DIR=DIR" in reason
    lines = corpus_skip_summary([f"Skipped: {reason}"] * 13 + ["Skipped: chromium not installed"])
    assert lines == [f"13 tests skipped: {reason}"]
