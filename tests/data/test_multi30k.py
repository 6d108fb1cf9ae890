"""Multi30k reader: line counts of the local copy, lookup order, checksums, download, offline."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import urllib.error
from pathlib import Path

import pytest

from shared.data import load_corpus, multi30k
from shared.data.multi30k import ChecksumError, Multi30kError, load_multi30k

EXPECTED_LINES = {
    "train": 29000,
    "val": 1014,
    "test_2016_flickr": 1000,
    "test_2017_flickr": 1000,
    "test_2017_mscoco": 461,
    "test_2018_flickr": 1071,
}


@pytest.fixture(autouse=True)
def _fresh_verification_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no file marked verified, so earlier tests cannot skip its checks."""
    monkeypatch.setattr(multi30k, "_verified", set())


@pytest.fixture
def no_env_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(multi30k.ENV_DIR, raising=False)


def _write_gz(path: Path, lines: list[str]) -> str:
    """Write lines as a gzip file; return its sha256."""
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", list(EXPECTED_LINES))
def test_local_copy_line_counts(multi30k_dir: Path, split: str) -> None:
    for src, tgt in (("en", "de"), ("en", "fr"), ("fr", "de")):
        pairs = load_multi30k(split, src, tgt, data_dir=multi30k_dir)
        assert len(pairs) == EXPECTED_LINES[split]
        assert all(s and t and s == s.strip() and t == t.strip() for s, t in pairs)


def test_pairs_are_aligned_translations(multi30k_dir: Path) -> None:
    pairs = load_multi30k("train", "en", "de", data_dir=multi30k_dir)
    assert pairs[0] == (
        "Two young, White males are outside near many bushes.",
        "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche.",
    )
    reverse = load_multi30k("train", "de", "en", data_dir=multi30k_dir)
    assert reverse[:100] == [(t, s) for s, t in pairs[:100]]


def test_load_corpus_dispatches_to_multi30k(multi30k_dir: Path) -> None:
    assert load_corpus("multi30k", "val", data_dir=multi30k_dir) == load_multi30k(
        "val", "en", "de", multi30k_dir
    )


def test_env_var_is_used_when_no_argument(
    multi30k_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(multi30k.ENV_DIR, str(multi30k_dir))
    assert len(load_multi30k("test_2017_mscoco")) == 461


def test_explicit_argument_wins_over_env_var(
    multi30k_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(multi30k.ENV_DIR, str(multi30k_dir))
    lines = ["a dog runs", "two cats"]
    hashes = {lang: _write_gz(tmp_path / f"val.{lang}.gz", lines) for lang in ("en", "de")}
    for lang, digest in hashes.items():
        monkeypatch.setitem(multi30k.SHA256, f"val.{lang}.gz", digest)
    assert multi30k.search_dirs(tmp_path)[:2] == [tmp_path, multi30k_dir]
    assert load_multi30k("val", data_dir=tmp_path) == [
        ("a dog runs", "a dog runs"),
        ("two cats", "two cats"),
    ]


def test_local_files_are_hashed_once_per_process(
    multi30k_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = multi30k._sha256
    monkeypatch.setattr(multi30k, "_sha256", lambda data: calls.append(1) or real(data))
    load_multi30k("val", data_dir=multi30k_dir)
    load_multi30k("val", data_dir=multi30k_dir)
    assert len(calls) == 2  # val.en.gz and val.de.gz, each hashed once


# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("split", "src", "tgt", "match"),
    [
        ("test", "en", "de", "unknown Multi30k split 'test'"),
        ("train", "cs", "de", "unknown Multi30k language 'cs'"),
        ("train", "en", "en", "both 'en'"),
    ],
)
def test_bad_names_are_rejected(split: str, src: str, tgt: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_multi30k(split, src, tgt)


def test_corrupt_local_file_fails_checksum(multi30k_dir: Path, tmp_path: Path) -> None:
    shutil.copy(multi30k_dir / "val.de.gz", tmp_path / "val.de.gz")
    _write_gz(tmp_path / "val.en.gz", ["not the real file"])
    with pytest.raises(ChecksumError, match=r"val\.en\.gz has sha256 .* expected"):
        load_multi30k("val", data_dir=tmp_path)


def test_line_count_mismatch_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_env_dir: None
) -> None:
    monkeypatch.setitem(
        multi30k.SHA256, "val.en.gz", _write_gz(tmp_path / "val.en.gz", ["a", "b", "c"])
    )
    monkeypatch.setitem(multi30k.SHA256, "val.de.gz", _write_gz(tmp_path / "val.de.gz", ["a", "b"]))
    with pytest.raises(Multi30kError, match="has 3 lines but .* has 2"):
        load_multi30k("val", data_dir=tmp_path)


# --------------------------------------------------------------------------------------------------
def test_offline_error_names_file_places_and_remedy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_env_dir: None
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(multi30k.urllib.request, "urlopen", offline)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Multi30kError) as info:
        load_multi30k("val", data_dir=empty)
    message = str(info.value)
    assert "val.en.gz" in message
    assert str(empty) in message and str(multi30k.cache_dir()) in message
    assert multi30k.ENV_DIR in message
    assert not multi30k.cache_dir().exists() or not any(multi30k.cache_dir().iterdir())


def test_download_with_bad_checksum_leaves_nothing(tmp_path: Path, file_urls_only: None) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _write_gz(mirror / "val.en.gz", ["tampered"])
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError, match="nothing was saved"):
        multi30k.download("val.en.gz", cache, base_url=mirror.as_uri() + "/")
    assert not cache.exists() or list(cache.iterdir()) == []


def test_download_into_cache_then_reuse(
    multi30k_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    file_urls_only: None,
    no_env_dir: None,
) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for lang in ("en", "de"):
        shutil.copy(multi30k_dir / f"val.{lang}.gz", mirror / f"val.{lang}.gz")
    monkeypatch.setattr(multi30k, "BASE_URL", mirror.as_uri() + "/")

    pairs = load_multi30k("val")  # nothing local: both files come from the "mirror"
    assert len(pairs) == 1014
    cache = multi30k.cache_dir()
    assert sorted(p.name for p in cache.iterdir()) == [
        "val.de.gz",
        "val.en.gz",
    ]  # no temp files left
    assert (cache / "val.en.gz").read_bytes() == (multi30k_dir / "val.en.gz").read_bytes()

    shutil.rmtree(mirror)  # a second load must read the cache, not download again
    assert load_multi30k("val") == pairs
