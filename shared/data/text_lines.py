"""Plain-text corpora for causal-LM training: one text per line.

Sources: the "text" corpus reads `<data_dir>/<split>.txt` (UTF-8, blank lines skipped); the other
corpora give their target side (Multi30k: the English side by default, a small real corpus; toy:
its target strings). The training loop hands each text to the pair pipeline as ("", text): the
causal LM reads the target side only (decoder input BOS + text, targets text + EOS).
"""

from __future__ import annotations

from pathlib import Path

TEXT_SUFFIX = ".txt"


def read_text_lines(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a text corpus holds <split>{TEXT_SUFFIX}, one text per line")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_lm_texts(corpus: str, split: str, data_dir: str | None, lang: str | None) -> list[str]:
    """The texts of one split of a corpus, for causal-LM training."""
    if corpus == "text":
        if not data_dir:
            raise ValueError("the text corpus needs data_dir (a folder with train.txt and val.txt)")
        return read_text_lines(Path(data_dir) / f"{split}{TEXT_SUFFIX}")
    if corpus == "multi30k":
        from shared.data.multi30k import locate, read_lines

        return [line for line in read_lines(locate(split, lang or "en", data_dir)) if line.strip()]
    from shared.data import load_corpus

    return [target for _, target in load_corpus(corpus, split)]
