"""Where a corpus's files are looked for: one rule for every corpus that lives in files.

In order:
  1. the directory given: the command's `--data-dir`, else the train config's `data_dir`
     (the commands put the flag into the config, so both arrive here as `data_dir`),
  2. the corpus's environment variable (CORPUS_ENV: $TWINFORMER_MULTI30K_DIR, $TWINFORMER_TWEETSUM_DIR,
     $TWINFORMER_TEXT_DIR),
  3. the cache, `$TWINFORMER_CACHE/<corpus>` (default `~/.cache/twinformer/<corpus>`); only Multi30k
     downloads into it (shared/data/multi30k.py), the others are read there when put there.
The first directory holding the file wins. A file found nowhere gets one message naming every
directory looked in and the two ways to point at the data (not_found_message).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_CACHE = "TWINFORMER_CACHE"
CORPUS_ENV = {
    "multi30k": "TWINFORMER_MULTI30K_DIR",
    "tweetsum": "TWINFORMER_TWEETSUM_DIR",
    "text": "TWINFORMER_TEXT_DIR",
}

PathLike = str | os.PathLike[str]


def _check(corpus: str) -> None:
    if corpus not in CORPUS_ENV:
        raise ValueError(f"corpus {corpus!r} has no files; corpora with files: {', '.join(CORPUS_ENV)}")


def cache_root() -> Path:
    """`$TWINFORMER_CACHE`, else `~/.cache/twinformer` (corpora, and the checkpoint fingerprints of
    shared/checkpoints/adapter_base.py)."""
    root = os.environ.get(ENV_CACHE)
    return Path(root) if root else Path.home() / ".cache" / "twinformer"


def cache_dir(corpus: str) -> Path:
    """`$TWINFORMER_CACHE/<corpus>`, else `~/.cache/twinformer/<corpus>`."""
    _check(corpus)
    return cache_root() / corpus


def search_dirs(corpus: str, data_dir: PathLike | None = None) -> list[Path]:
    """The directories looked in for a corpus's files, in priority order (the cache always last)."""
    _check(corpus)
    dirs = [] if data_dir is None or str(data_dir) == "" else [Path(data_dir)]
    env = os.environ.get(CORPUS_ENV[corpus])
    if env:
        dirs.append(Path(env))
    dirs.append(cache_dir(corpus))
    return dirs


def find_file(corpus: str, names: tuple[str, ...] | list[str], data_dir: PathLike | None = None) -> Path | None:
    """The first of `names` in the first directory of search_dirs that holds one; None if none does."""
    for directory in search_dirs(corpus, data_dir):
        for name in names:
            if (directory / name).is_file():
                return directory / name
    return None


def not_found_message(corpus: str, what: str, data_dir: PathLike | None = None) -> str:
    """One line: what is missing, where it was looked for, and how to say where it is."""
    looked = ", ".join(str(d) for d in search_dirs(corpus, data_dir))
    return (
        f"no {what} in {looked} (looked in that order); give the directory with --data-dir DIR (or "
        f"data_dir in the train config), or set {CORPUS_ENV[corpus]}"
    )


__all__ = ["CORPUS_ENV", "ENV_CACHE", "cache_dir", "cache_root", "find_file", "not_found_message", "search_dirs"]
