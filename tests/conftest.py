"""Fixtures of the CLI tests: one tiny trained run, shared by every test that only reads it."""

from __future__ import annotations

import jax  # noqa: F401  imported before any in-process CLI call: `--threads` (default 1) sets
# XLA_FLAGS only when jax is not yet imported, and XLA reads them once, so without this the thread
# setting of every later test would depend on which test happened to import jax first.
import pytest

from shared.train_config import TrainConfig

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
