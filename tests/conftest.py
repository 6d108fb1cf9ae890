"""Fixtures of the CLI tests: one tiny trained run, shared by every test that only reads it; the one
skip reason of tests that need a corpus's files, and a line in the test summary saying how to run them."""

from __future__ import annotations

import jax  # noqa: F401  imported before any in-process CLI call: `--threads` (default 1) sets
# XLA_FLAGS only when jax is not yet imported, and XLA reads them once, so without this the thread
# setting of every later test would depend on which test happened to import jax first.
import os
from collections import Counter
from pathlib import Path

import pytest

from shared.data.data_dirs import CORPUS_ENV
from shared.training.train_config import TrainConfig

CORPUS_SKIP_MARK = "needs the corpus files"  # in every skip reason corpus_dir() gives


def corpus_skip_reason(corpus: str) -> str:
    """The one skip reason of every test that needs `corpus`'s files and cannot find them."""
    env = CORPUS_ENV[corpus]
    return f"{corpus}: {CORPUS_SKIP_MARK}; set {env}=DIR (the directory holding them) to run these tests"


def corpus_dir(corpus: str) -> Path:
    """The directory in $TWINFORMER_<CORPUS>_DIR, or a skip with the one reason. Tests never download,
    and never guess a path beside the checkout: CI (.ci/run) sets the variables."""
    env = os.environ.get(CORPUS_ENV[corpus], "")
    if not env or not Path(env).is_dir():
        pytest.skip(corpus_skip_reason(corpus))
    return Path(env)


def corpus_skip_summary(reasons: list[str]) -> list[str]:
    """One summary line per corpus whose files were missing: how many tests skipped and how to run them."""
    counts = Counter(reason.removeprefix("Skipped: ") for reason in reasons if CORPUS_SKIP_MARK in reason)
    return [f"{count} tests skipped: {reason}" for reason, count in sorted(counts.items())]


def pytest_terminal_summary(terminalreporter) -> None:
    """Say why corpus tests skipped, also under -q (which shows only "N skipped" otherwise)."""
    reasons = [report.longrepr[2] for report in terminalreporter.stats.get("skipped", [])
               if isinstance(report.longrepr, tuple)]  # fmt: skip
    for line in corpus_skip_summary(reasons):
        terminalreporter.write_line(line, yellow=True)

TINY_MODEL = {"d_model": 16, "num_heads": 2, "d_ff": 32, "num_encoder_layers": 1, "num_decoder_layers": 1,
              "dropout": 0.0, "attention_dropout": 0.0, "embedding_dropout": 0.0, "max_len": 16}  # fmt: skip
# 4 steps, a checkpoint every 2, both kept: a run directory with two checkpoints and `latest`.
TINY_RUN = TrainConfig(model_overrides=TINY_MODEL, vocab_size=48, batch_size=16, max_len=16, pad_to_multiple=16,
                       total_steps=4, save_every=2, keep_last=2, log_every=2, bleu_sentences=2,
                       max_decode_len=4)  # fmt: skip


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished torch run of TINY_RUN (read it, never write into it)."""
    import torch

    from twinformer.cli import main

    root = tmp_path_factory.mktemp("tiny-run")
    TINY_RUN.save(root / "tiny.json")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--framework", "torch", "--config", str(root / "tiny.json"), "--run-dir",
                     str(root / "run"), "--no-progress"]) == 0  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return root / "run"
