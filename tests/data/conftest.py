"""Fixtures for the data tests: the local Multi30k copy, and isolation from cache and network."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from shared.data import multi30k
from tests.conftest import corpus_dir

_REAL_URLOPEN = urllib.request.urlopen


@pytest.fixture(scope="session")
def multi30k_dir() -> Path:
    """The local Multi30k copy ($TWINFORMER_MULTI30K_DIR); tests needing it skip (never download) with
    the one reason that names the variable (tests/conftest.py)."""
    return corpus_dir("multi30k")


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point the download cache at an empty temp dir and forbid the network, for every data test."""
    monkeypatch.setenv(multi30k.ENV_CACHE, str(tmp_path_factory.mktemp("cache")))

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("data tests must not use the network")

    monkeypatch.setattr(multi30k.urllib.request, "urlopen", no_network)


@pytest.fixture
def file_urls_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let urlopen read file:// URLs (a local "mirror") while still refusing the network."""

    def local_only(url: str, *args: object, **kwargs: object) -> object:
        if not str(url).startswith("file:"):
            raise AssertionError(f"data tests must not use the network (tried {url})")
        return _REAL_URLOPEN(url, *args, **kwargs)

    monkeypatch.setattr(multi30k.urllib.request, "urlopen", local_only)
