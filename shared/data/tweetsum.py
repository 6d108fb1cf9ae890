"""TweetSum dialogue summarisation, as the book's chapter 5 uses it: gzipped CSVs with columns
`inputs` (the dialogue) and `summaries`; the model input is "Summarize: " + dialogue."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

from shared.data.data_dirs import find_file, not_found_message

PROMPT = "Summarize: "
SPLITS = ("train", "valid", "test")
SPLIT_ALIASES = {"val": "valid"}  # the training loop's validation split name
CORPUS = "tweetsum"  # its directory: --data-dir, data_dir, $TWINFORMER_TWEETSUM_DIR, the cache (data_dirs.py)


def load_tweetsum(split: str, directory: str | Path | None = None) -> tuple[list[str], list[str]]:
    """(prompts, summaries) of one split, read from tweetsum_<split>.csv.gz (or .csv) in the first
    directory of the one search rule (shared/data/data_dirs.py; `directory` first) that holds it."""
    split = SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise ValueError(f"unknown TweetSum split {split!r}; expected one of {', '.join(SPLITS)}")
    names = (f"tweetsum_{split}.csv.gz", f"tweetsum_{split}.csv")
    path = find_file(CORPUS, names, directory)
    if path is None:
        raise FileNotFoundError(not_found_message(CORPUS, f"{names[0]} or .csv", directory))
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = {"inputs", "summaries"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    return [PROMPT + row["inputs"] for row in rows], [row["summaries"] for row in rows]


def load_tweetsum_pairs(split: str, directory: str | Path | None = None) -> list[tuple[str, str]]:
    """(prompt, summary) pairs of one split: the corpus as the training loop reads it."""
    prompts, summaries = load_tweetsum(split, directory)
    return list(zip(prompts, summaries))
