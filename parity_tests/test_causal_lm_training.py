"""Causal-LM training on the shared loop: the same init and batches give the same per-step losses in
both stacks, and a run resumed in the other framework tracks the uninterrupted run (as
test_training_parity.py does for the encoder-decoder). Data: a plain-text corpus ("text": one text
per line) written to a temporary folder."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from parity_tests.helpers import assert_all_close, float64_backend
from shared.data.text_lines import read_text_lines
from shared.checkpoints.init import initial_tensors
from shared.training.train_config import TrainConfig
from shared.training.loop import load_pairs, make_sampler, make_tokenizer, train
from twinformer.backends import make_backend

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = "a dog runs on the green grass while two children play with a red ball near the old house".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """train.txt / val.txt of short random sentences (blank lines in between are skipped)."""
    folder = tmp_path_factory.mktemp("text")
    rng = np.random.default_rng(0)
    for split, n in (("train", 400), ("val", 40)):
        lines = [" ".join(rng.choice(WORDS, rng.integers(3, 12))) for _ in range(n)]
        (folder / f"{split}.txt").write_text("\n\n".join(lines) + "\n")
    return folder


def _config(env, corpus, **overrides) -> TrainConfig:
    if env.precision == "bfloat16":
        pytest.skip("training keeps float32 weights; the bfloat16 row covers forward passes only")
    base = dict(
        model_preset="llama-small",
        model_overrides={"d_model": 32, "num_heads": 4, "num_kv_heads": 2, "d_ff": 48, "num_decoder_layers": 2,
                         "max_len": 32, "pad_id": 0, "bos_id": 1, "eos_id": 2},
        corpus="text", data_dir=str(corpus), vocab_size=64, batch_size=16, max_len=16, pad_to_multiple=16,
        total_steps=12, lr=3e-3, seed=0, device=env.device,
        precision="tf32" if env.precision == "tf32" else "float32",
        log_every=1, bleu_sentences=0, keep_last=None, clip_norm=1.0, schedule="inverse_sqrt", warmup_steps=3,
    )  # fmt: skip
    return TrainConfig(**{**base, **overrides})


def test_text_corpus_reader_skips_blank_lines(corpus) -> None:
    lines = read_text_lines(corpus / "val.txt")
    assert len(lines) == 40 and all(lines)


def test_causal_lm_trajectory_matches_across_stacks(parity_env, corpus) -> None:
    from jax_impl.training import JaxBackend
    from torch_impl.training import TorchBackend

    config = _config(parity_env, corpus, total_steps=20)
    pairs = load_pairs(config, "train")
    assert all(source == "" for source, _ in pairs)  # the causal LM reads the target side only
    tokenizer = make_tokenizer(config, pairs)
    model_config = config.resolve_model_config(tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    batches = [b for _, b in zip(range(20), make_sampler(config, tokenizer, pairs).stream())]
    init = initial_tensors(model_config, 0)
    backends = [TorchBackend(model_config, config, 20, init), JaxBackend(model_config, config, 20, init)]
    torch_losses, jax_losses = (np.array([float(b.train_step(batch)["loss"]) for batch in batches]) for b in backends)
    assert torch_losses[-1] < torch_losses[0] - 0.5, "the run must actually train"
    with jax.enable_x64():  # the same trajectories in float64: each stack's own rounding error, for the bound
        twins = [float64_backend(framework, model_config, config, 20, init) for framework in ("torch", "jax")]
        torch64, jax64 = (np.array([float(b.train_step(batch)["loss"]) for batch in batches]) for b in twins)
    assert_all_close("train: causal_lm loss trajectory", {"losses": (torch_losses, jax_losses, torch64, jax64)},
                     parity_env.precision, "per step")
    evals = [b.eval_batch(batches[0]) for b in backends]
    assert evals[0][1] == evals[1][1] == int((batches[0].tgt_out != 0).sum())


@pytest.mark.parametrize("first, second", [("torch", "jax"), ("jax", "torch")])
def test_causal_lm_resumed_in_the_other_framework_tracks_the_run(parity_env, corpus, tmp_path, first, second) -> None:
    config = _config(parity_env, corpus)
    reference = train(config, first, tmp_path / "full", progress=False, backend_factory=make_backend)
    half = train(config, first, tmp_path / "switched", stop_at=6, progress=False, backend_factory=make_backend)
    assert half.losses == reference.losses[:6]
    resumed = train(None, second, tmp_path / "switched", resume=tmp_path / "switched", progress=False,
                    backend_factory=make_backend)
    assert resumed.step == 12
    run64 = dict(progress=False, backend_factory=float64_backend)
    with jax.enable_x64():  # float64 twins of both runs: their own rounding errors, for the bound
        reference64 = train(config, first, tmp_path / "full64", **run64)
        train(config, first, tmp_path / "switched64", stop_at=6, **run64)
        resumed64 = train(None, second, tmp_path / "switched64", resume=tmp_path / "switched64", **run64)
    quad = (np.array(reference.losses[6:]), np.array(resumed.losses), np.array(reference64.losses[6:]), np.array(resumed64.losses))
    assert_all_close(f"train: causal_lm resume {first}->{second}", {"losses after resume": quad}, parity_env.precision,
                     "per step")
