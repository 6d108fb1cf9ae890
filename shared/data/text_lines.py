"""Plain-text corpora for causal-LM training: one text per line.

Sources: the "text" corpus reads `<data_dir>/<split>.txt` (UTF-8, blank lines skipped); the other
corpora give their target side (Multi30k: the English side by default, a small real corpus; toy:
its target strings). The training loop hands each text to the pair pipeline as ("", text): the
causal LM reads the target side only (decoder input BOS + text, targets text + EOS).
"""

from __future__ import annotations

from pathlib import Path

from shared.data.data_dirs import find_file, not_found_message

TEXT_SUFFIX = ".txt"


def read_text_lines(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a text corpus holds <split>{TEXT_SUFFIX}, one text per line")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_lm_texts(corpus: str, split: str, data_dir: str | None, lang: str | None) -> list[str]:
    """The texts of one split of a corpus, for causal-LM training."""
    if corpus == "text":  # the one search rule: data_dir, $TWINFORMER_TEXT_DIR, the cache
        name = f"{split}{TEXT_SUFFIX}"
        path = find_file("text", (name,), data_dir)
        if path is None:
            raise FileNotFoundError(not_found_message("text", f"{name} (one text per line)", data_dir))
        return read_text_lines(path)
    if corpus == "multi30k":
        from shared.data.multi30k import locate, read_lines

        return [line for line in read_lines(locate(split, lang or "en", data_dir)) if line.strip()]
    from shared.data import load_corpus

    return [target for _, target in load_corpus(corpus, split, data_dir=data_dir)]
