"""Fixtures for the data tests: the local Multi30k copy, and isolation from cache and network."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import pytest

from shared.data import multi30k

REPO_ROOT = Path(__file__).resolve().parents[2]
_REAL_URLOPEN = urllib.request.urlopen


def _local_multi30k() -> Path | None:
    """TWINFORMER_MULTI30K_DIR if set, else <repo_root>/../shared/data/multi30k, if it exists."""
    env = os.environ.get(multi30k.ENV_DIR)
    candidate = Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "multi30k"
    return candidate if candidate.is_dir() else None


@pytest.fixture(scope="session")
def multi30k_dir() -> Path:
    """The local Multi30k copy; tests needing it skip (never download) when it is absent."""
    path = _local_multi30k()
    if path is None:
        env = os.environ.get(multi30k.ENV_DIR)
        where = f"{multi30k.ENV_DIR}={env} is not a directory" if env else "no local Multi30k copy"
        pytest.skip(
            f"{where}: set {multi30k.ENV_DIR} to the .gz files' directory or put them in "
            f"{REPO_ROOT.parent / 'shared' / 'data' / 'multi30k'}"
        )
    return path


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
