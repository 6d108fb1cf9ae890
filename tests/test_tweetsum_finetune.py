"""The book's chapter-5 workflow as commands, on a tiny random T5 and a handful of TweetSum rows:
`finetune --lora` with the book's recipe (configs/finetune-tweetsum-lora.json) in both stacks,
`evaluate` with ROUGE-1/2/L (the same scores in both stacks), and a LoRA run that torch starts and
jax resumes, landing on the weights of the run torch finishes itself."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from shared.checkpoints.checkpoint import read_tensors, save_checkpoint
from shared.config.model_config import ModelConfig
from shared.data.batching import make_batch
from shared.data.t5_tokenizer import train_t5_tokenizer
from shared.data.tweetsum import PROMPT
from shared.training.finetune import finetune, read_lora_config, read_train_config
from shared.checkpoints.init import initial_tensors
from shared.parity.tolerances import apriori_own_error, scale_aware_limit
from twinformer.backends import make_backend, make_lora_backend
from twinformer.cli import main

REPO = Path(__file__).resolve().parents[1]
BOOK_RECIPE = REPO / "configs" / "finetune-tweetsum-lora.json"
ROWS = [
    ("Customer: my watch stopped counting steps. Agent: please update the watch and the phone.",
     "Customer's watch stopped counting steps. Agent asked to update both devices."),
    ("Customer: my flight was delayed and my bag is lost. Agent: send us the bag tag number.",
     "Customer lost a bag after a delay. Agent asked for the bag tag number."),
    ("Customer: the password reset link expired. Agent: we sent you a new link by mail.",
     "Customer's reset link expired. Agent sent a new link."),
    ("Customer: my order arrived broken. Agent: sorry, send a photo and we refund it.",
     "Customer got a broken order. Agent offered a refund for a photo."),
]  # fmt: skip
STEPS = 3
TEST_REPEATS = 3  # 12 test rows: two decode batches of the recipe's 8 rows
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def _within_fp32(torch_value, jax_value, bound: float | None = None) -> bool:
    """The one cross-stack comparison of this file: the project's float32 bound (shared/parity/tolerances.py)
    with the a-priori own error of a tiny model (width <= 64, a dozen ops deep), or `bound`, absolute."""
    a, b = np.asarray(torch_value, np.float64), np.asarray(jax_value, np.float64)
    diff = float(np.max(np.abs(a - b)))
    if bound is None:
        scale = float(np.max(np.abs(a)))
        bound = scale_aware_limit("float32", scale, apriori_own_error("float32", scale, contraction=64, depth=12))
    return diff <= bound


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """TweetSum-shaped gzipped CSVs (train, valid, test) and a random tiny flan-t5 with a T5-style tokenizer."""
    root = tmp_path_factory.mktemp("tweetsum")
    data = root / "data"
    data.mkdir()
    for split, rows in (("train", ROWS), ("valid", ROWS), ("test", ROWS * TEST_REPEATS)):
        with gzip.open(data / f"tweetsum_{split}.csv.gz", "wt", encoding="utf-8") as handle:
            handle.write("inputs,summaries\n" + "".join(f'"{d}","{s}"\n' for d, s in rows))
    tokenizer = train_t5_tokenizer([PROMPT] + [text for row in ROWS for text in row], vocab_size=90)
    config = ModelConfig.from_preset(
        "flan-t5-small", d_model=16, num_heads=2, head_size=8, d_ff=24, num_encoder_layers=1, num_decoder_layers=1,
        src_vocab_size=tokenizer.vocab_size, tgt_vocab_size=tokenizer.vocab_size, max_len=48,
        dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0,
    )  # fmt: skip
    save_checkpoint(root / "base", config, initial_tensors(config, seed=0))
    tokenizer.save(root / "base")
    return root


def test_book_recipe_is_chapter_5():
    lora, train = read_lora_config(BOOK_RECIPE), read_train_config(BOOK_RECIPE)
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules) == (16, 32, 0.05, ("q_proj", "v_proj"))
    recipe = (train.corpus, train.optimizer, train.lr, train.total_steps, train.batch_size)
    assert recipe == ("tweetsum", "adamw", 1e-3, 300, 8)


def test_t5_targets_start_with_the_decoder_start_id(work):
    """Decoder input = start (T5: pad 0) + summary; labels = summary + </s>; padding never counted."""
    from shared.data.model_tokenizer import load_model_tokenizer
    from shared.config.model_config import ModelConfig as Config

    tokenizer = load_model_tokenizer(work / "base", Config.load(work / "base" / "config.json"))
    pairs = tokenizer.encode_pairs([(PROMPT + ROWS[0][0], ROWS[0][1]), (PROMPT + ROWS[2][0], "ok")])
    batch = make_batch(pairs, pad_id=tokenizer.sequence_ids.pad)
    summary = tokenizer.encode(ROWS[0][1])
    assert batch.tgt_in[0, 0] == 0 and list(batch.tgt_in[0, 1 : len(summary)]) == summary[:-1]
    assert list(batch.tgt_out[0, : len(summary)]) == summary and summary[-1] == 1
    assert batch.num_tokens == len(summary) + len(tokenizer.encode("ok"))
    assert tokenizer.decode_target(batch.tgt_out[0]) == tokenizer.decode(summary)


def test_lora_finetune_and_rouge_in_both_stacks(work, capsys):
    """finetune --lora (the book's recipe) then evaluate: ROUGE-1/2/L and loss, the same in both stacks."""
    runs = {}
    for framework in ("torch", "jax"):
        run_dir = work / f"lora-{framework}"
        assert main(["finetune", "--framework", framework, "--lora", str(BOOK_RECIPE), "--base", str(work / "base"),
                     "--data-dir", str(work / "data"), "--steps", str(STEPS), "--run-dir", str(run_dir),
                     "--no-progress"]) == 0  # fmt: skip
        out = capsys.readouterr().out
        summary = _last_json(out)
        assert summary["mode"] == "lora" and summary["step"] == STEPS and np.isfinite(summary["last_loss"])
        assert "max_len 512 capped at the base model's max_len 48" in out and "trainable params:" in out
        adapter = read_tensors(Path(summary["adapter"]) / "adapter_model.safetensors")
        assert adapter and all("q_proj" in k or "v_proj" in k for k in adapter)  # the book's q and v
        assert any(np.any(v) for k, v in adapter.items() if "lora_B" in k)  # lora_B starts at 0: it trained
        runs[framework] = run_dir

    # evaluate a LoRA run (its recorded base + adapter, its corpus): the same scores from either stack
    scores = {}
    for framework in ("torch", "jax"):
        assert main(["evaluate", "--checkpoint", str(runs["torch"]), "--framework", framework,
                     "--max-decode-len", "8", "--json"]) == 0
        scores[framework] = _last_json(capsys.readouterr().out)
    for result in scores.values():
        assert (result["corpus"], result["split"], result["sentences"]) == ("tweetsum", "test", len(ROWS) * TEST_REPEATS)
        assert result["rouge_texts"] == len(ROWS) * TEST_REPEATS
        assert all(0.0 <= result[k] <= 100.0 for k in ("rouge1", "rouge2", "rougeL"))
    assert {k: scores["torch"][k] for k in ("rouge1", "rouge2", "rougeL")} == {
        k: scores["jax"][k] for k in ("rouge1", "rouge2", "rougeL")}  # greedy decodes are token-identical
    assert _within_fp32(scores["torch"]["loss"], scores["jax"]["loss"])


def test_lora_run_started_in_torch_resumes_in_jax(work, tmp_path, capsys):
    """Adapter dropout off (its masks are each stack's own random numbers): jax finishes torch's run
    on the weights torch reaches itself, within the project's Adam-trajectory bound."""
    recipe = json.loads(BOOK_RECIPE.read_text())
    recipe["lora"]["dropout"] = 0.0
    recipe["train"].update(total_steps=4, save_every=0, data_dir=str(work / "data"))
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    lora, config = read_lora_config(tmp_path / "recipe.json"), read_train_config(tmp_path / "recipe.json")
    finetune("torch", tmp_path / "run", base=work / "base", mode="lora", lora=lora, config=config, stop_at=2,
             progress=False, report=lambda _: None,
             backend_factory=make_backend, lora_backend_factory=make_lora_backend)  # fmt: skip
    shutil.copytree(tmp_path / "run", tmp_path / "run-jax")
    finals = {}
    for framework, run_dir in (("torch", "run"), ("jax", "run-jax")):
        assert main(["finetune", "--framework", framework, "--resume", str(tmp_path / run_dir), "--no-progress"]) == 0
        summary = _last_json(capsys.readouterr().out)
        assert summary["step"] == 4
        finals[framework] = read_tensors(Path(summary["adapter"]) / "adapter_model.safetensors")
    # Adam moves a weight by at most about lr per step whatever its gradient, so the two stacks'
    # rounding (amplified by Adam where a gradient is near zero) parts them by at most 2 lr a step;
    # this checks that the run resumes and trains on in the other stack. The sharp trajectory
    # parity of LoRA training is parity_tests/test_lora_training.py's (float64-measured bound).
    bound = 2 * recipe["train"]["lr"] * 2
    assert sorted(finals["torch"]) == sorted(finals["jax"])
    assert all(_within_fp32(finals["torch"][k], finals["jax"][k], bound) for k in finals["torch"])
    moved = [k for k in finals["torch"] if "lora_B" in k and np.any(finals["torch"][k])]
    assert moved  # the resumed steps trained the adapter, in both stacks


def test_tweetsum_errors(work, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TWINFORMER_TWEETSUM_DIR", raising=False)  # an empty --data-dir falls through to it
    monkeypatch.setenv("TWINFORMER_CACHE", str(tmp_path / "cache"))
    assert main(["finetune", "--framework", "torch", "--lora", str(BOOK_RECIPE), "--base", str(work / "base"),
                 "--data-dir", str(tmp_path), "--steps", "1", "--run-dir", str(tmp_path / "r"), "--no-progress"]) != 0
    assert re.search(r"no tweetsum_train\.csv\.gz or \.csv in", capsys.readouterr().err)
