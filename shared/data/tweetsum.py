"""TweetSum dialogue summarisation, as the book's chapter 5 uses it: gzipped CSVs with columns
`inputs` (the dialogue) and `summaries`; the model input is "Summarize: " + dialogue."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

PROMPT = "Summarize: "
SPLITS = ("train", "valid", "test")
SPLIT_ALIASES = {"val": "valid"}  # the training loop's validation split name
# ../shared/data/book-ch5 beside the repository (the project's data layout; a worktree sits one level deeper)
_REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIR = next(
    (d for d in (_REPO.parent / "shared/data/book-ch5", _REPO.parent.parent / "shared/data/book-ch5") if d.is_dir()),
    _REPO.parent / "shared/data/book-ch5",
)


def load_tweetsum(split: str, directory: str | Path | None = None) -> tuple[list[str], list[str]]:
    """(prompts, summaries) of one split, read from tweetsum_<split>.csv.gz (or .csv)."""
    split = SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise ValueError(f"unknown TweetSum split {split!r}; expected one of {', '.join(SPLITS)}")
    directory = Path(directory) if directory is not None else DEFAULT_DIR
    for name, opener in ((f"tweetsum_{split}.csv.gz", gzip.open), (f"tweetsum_{split}.csv", open)):
        path = directory / name
        if path.is_file():
            with opener(path, "rt", encoding="utf-8", newline="") as handle:
                rows = list(csv.DictReader(handle))
            missing = {"inputs", "summaries"} - set(rows[0] if rows else {})
            if missing:
                raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
            return [PROMPT + row["inputs"] for row in rows], [row["summaries"] for row in rows]
    raise FileNotFoundError(f"no tweetsum_{split}.csv.gz or .csv in {directory}")


def load_tweetsum_pairs(split: str, directory: str | Path | None = None) -> list[tuple[str, str]]:
    """(prompt, summary) pairs of one split: the corpus as the training loop reads it."""
    prompts, summaries = load_tweetsum(split, directory)
    return list(zip(prompts, summaries))
