"""JAX fine-tuning compiles once per batch shape, and the book's TweetSum recipe meets few shapes
(issue #18 item 5: every new padded length was a fresh XLA compile of the flan-t5-base LoRA step).

Counted are the jitted step's own compiles (its cache entries), not the sampler's promise: a
step that recompiled for anything else than a new (B, S, T) (a weak type, an uncommitted
buffer, a new optimizer-state layout after the first update) would show here as more compiles
than shapes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.checkpoints.init import initial_tensors
from shared.checkpoints.lora_config import LoRAConfig
from shared.config.model_config import ModelConfig
from shared.data.batching import BatchSampler, SequenceIds
from shared.training.finetune import read_train_config

REPO = Path(__file__).resolve().parents[1]
BOOK_RECIPE = REPO / "configs" / "finetune-tweetsum-lora.json"
T5_IDS = SequenceIds(start=0, end=1, pad=0)  # T5: the decoder starts with pad, </s> is 1
STEPS = 50  # the measure: 50 steps of the recipe


def tweetsum_shaped_pairs(n: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """T5-encoded pairs with TweetSum's lengths (T5-style tokens): dialogues of 150-850 tokens,
    summaries of 15-115 (the train split spans 174-814 and 22-114 with a 10.5k-piece Unigram)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        s = rng.integers(3, 500, size=rng.integers(150, 850)).tolist()
        t = rng.integers(3, 500, size=rng.integers(15, 115)).tolist()
        pairs.append((s + [1], [0] + t + [1]))
    return pairs


def recipe_sampler(pairs, **overrides) -> BatchSampler:
    train = read_train_config(BOOK_RECIPE).replace(**overrides)
    return BatchSampler(pairs, batch_size=train.batch_size, max_tokens=train.max_tokens, max_len=train.max_len,
                        pad_to_multiple=train.pad_to_multiple, seed=train.seed, ids=T5_IDS)  # fmt: skip


def shapes_in(sampler: BatchSampler, steps: int) -> set[tuple[tuple[int, ...], tuple[int, ...]]]:
    stream = sampler.stream()
    return {(b.src.shape, b.tgt_in.shape) for b in (next(stream) for _ in range(steps))}


def test_book_recipe_meets_two_shapes_in_fifty_steps():
    """The recipe's 128-token ladder: every summary fits one target width (128) and dialogues two
    source widths (256, 512), so 50 steps compile the JAX step twice. The 32-token ladder it
    replaces met 6 shapes: T in 32/64/128 doubled every compile for no more than ~30% less padding."""
    pairs = tweetsum_shaped_pairs(900)
    shapes = shapes_in(recipe_sampler(pairs), STEPS)
    assert {t for _, t in shapes} == {(8, 128)} and {s for s, _ in shapes} == {(8, 256), (8, 512)}
    assert len(shapes_in(recipe_sampler(pairs, pad_to_multiple=32), STEPS)) >= 5  # what the change removed


def test_jax_lora_step_compiles_once_per_batch_shape():
    """A LoRA fine-tune over several shapes (a tiny T5, the recipe's optimizer and dropout): the
    jitted step compiles exactly once per distinct (B, S, T), within the sampler's bound."""
    import jax

    from jax_impl.finetune import LoRAJaxBackend

    # widths 8 and 16: at most 4 shapes (4 compiles of a 1+1-layer step), 6 steps meet 2 or more
    train = read_train_config(BOOK_RECIPE).replace(max_len=16, pad_to_multiple=8, batch_size=4)
    config = ModelConfig.from_preset(
        "flan-t5-small", d_model=16, num_heads=2, head_size=8, d_ff=24, num_encoder_layers=1, num_decoder_layers=1,
        src_vocab_size=40, tgt_vocab_size=40, max_len=16,
    )  # fmt: skip
    train = train.replace(model_preset=None, model=config, model_overrides={})
    lora = LoRAConfig(r=2, alpha=4, dropout=0.05, target_modules=("q_proj", "v_proj"))
    rng = np.random.default_rng(0)
    pairs = [([*rng.integers(3, 40, size=rng.integers(1, 15)).tolist(), 1], [0, *rng.integers(3, 40, size=rng.integers(1, 15)).tolist(), 1])
             for _ in range(64)]  # fmt: skip
    sampler = BatchSampler(pairs, batch_size=train.batch_size, max_len=train.max_len, pad_to_multiple=train.pad_to_multiple,
                           seed=0, ids=T5_IDS)  # fmt: skip
    backend = LoRAJaxBackend(config, train, 6, initial_tensors(config, seed=0), lora)
    stream, shapes = sampler.stream(), set()
    for _ in range(6):
        batch = next(stream)
        shapes.add((batch.src.shape, batch.tgt_in.shape))
        metrics = backend.train_step(batch)
    jax.block_until_ready(metrics["loss"])
    assert 2 <= len(shapes) <= sampler.max_shapes  # several shapes met, so the count below means something
    assert backend._train_step._cache_size() == len(shapes)


def test_finetune_speed_benchmark_runs_both_stacks(tmp_path):
    """benchmarks/finetune_speed.py end to end on a tiny T5 and a few TweetSum-shaped rows (2 steps
    per stack): every figure present, the same tokens in both stacks; timings reported, not asserted."""
    import gzip
    import json

    from benchmarks.finetune_speed import main

    rows = [("Customer: my watch stopped counting steps. Agent: please update the watch and the phone.",
             "Customer's watch stopped counting steps. Agent asked to update both devices."),
            ("Customer: my flight was delayed and my bag is lost. Agent: send us the bag tag number.",
             "Customer lost a bag after a delay. Agent asked for the bag tag number.")] * 8  # fmt: skip
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "valid", "test"):
        with gzip.open(data / f"tweetsum_{split}.csv.gz", "wt", encoding="utf-8") as handle:
            handle.write("inputs,summaries\n" + "".join(f'"{d}","{s}"\n' for d, s in rows))
    out = tmp_path / "report.json"
    assert main(["--tiny", "--steps", "2", "--data-dir", str(data), "--work", str(tmp_path / "work"), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"torch", "jax"} and report["steps"] == 2 and report["pad_to_multiple"] == 128
    torch_run, jax_run = report["results"]["torch"], report["results"]["jax"]
    assert torch_run["tokens"] == jax_run["tokens"] > 0  # the same batches in both stacks
    assert torch_run["batch_shapes"] == jax_run["batch_shapes"] >= 1
    assert set(report["jax_over_torch"]) >= {"tokens_per_s"}
    assert report["jax_over_torch"]["tokens_per_s"] == jax_run["tokens_per_s"] / torch_run["tokens_per_s"]
