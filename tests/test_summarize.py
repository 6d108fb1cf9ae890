"""`twinformer summarize` on a random tiny T5 with a locally trained T5-style tokenizer: the same
summaries in both stacks, TweetSum read and scored with ROUGE; the TweetSum reader and ROUGE."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders

from shared.checkpoints.checkpoint import save_checkpoint
from shared.config.model_config import ModelConfig
from shared.data.t5_tokenizer import T5Tokenizer
from shared.data.tweetsum import PROMPT, load_tweetsum
from shared.checkpoints.init import initial_tensors
from shared.training.metrics import rouge
from twinformer.cli import main

DIALOGUES = [
    ("my phone does not record my steps any more", "customer's phone stopped counting steps"),
    ("the flight was delayed and my bag is lost", "customer lost a bag after a delayed flight"),
    ("please reset my password, the link expired", "customer asks for a new password link"),
]


def write_tweetsum(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with gzip.open(directory / "tweetsum_test.csv.gz", "wt", encoding="utf-8") as handle:
        handle.write("inputs,summaries\n" + "".join(f'"{d}","{s}"\n' for d, s in DIALOGUES))


@pytest.fixture()
def t5_checkpoint(tmp_path) -> Path:
    """A random tiny T5 whose directory holds a Unigram tokenizer.json with T5's special ids."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    texts = [t for pair in DIALOGUES for t in pair] + [PROMPT]
    tok.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=60, special_tokens=["<pad>", "</s>", "<unk>"],
                                                           unk_token="<unk>", show_progress=False))
    config = ModelConfig.from_preset(
        "flan-t5-small", d_model=16, num_heads=2, head_size=8, d_ff=24, num_encoder_layers=1, num_decoder_layers=1,
        src_vocab_size=tok.get_vocab_size(), tgt_vocab_size=tok.get_vocab_size(), max_len=64,
        dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0,
    )
    directory = tmp_path / "t5"
    save_checkpoint(directory, config, initial_tensors(config, seed=0))
    tok.save(str(directory / "tokenizer.json"))
    return directory


def test_summaries_are_identical_in_both_stacks_and_scored(t5_checkpoint, tmp_path, capsys):
    write_tweetsum(tmp_path / "data")
    outputs = {}
    for framework in ("torch", "jax"):
        assert main(["summarize", "--checkpoint", str(t5_checkpoint), "--framework", framework, "--tweetsum", "test",
                     "--data-dir", str(tmp_path / "data"), "--max-new-tokens", "5"]) == 0
        outputs[framework] = capsys.readouterr().out.splitlines()
    assert outputs["torch"] == outputs["jax"]
    assert len(outputs["torch"]) == len(DIALOGUES) + 1 and outputs["torch"][-1].startswith("rouge1 ")


def test_tokenizer_appends_the_end_id_and_decodes_back(t5_checkpoint):
    tokenizer = T5Tokenizer.load(t5_checkpoint)
    ids = tokenizer.encode("my phone does not record my steps")
    assert ids[-1] == 1 and 0 not in ids
    assert tokenizer.decode(ids + [7, 8]) == "my phone does not record my steps"
    assert len(tokenizer.encode("my phone does not record my steps", max_len=3)) == 3


def test_tweetsum_reader_and_rouge(tmp_path, monkeypatch):
    monkeypatch.delenv("TWINFORMER_TWEETSUM_DIR", raising=False)  # the split missing here must be missing
    monkeypatch.setenv("TWINFORMER_CACHE", str(tmp_path / "cache"))
    write_tweetsum(tmp_path)
    prompts, summaries = load_tweetsum("test", tmp_path)
    assert prompts[0] == PROMPT + DIALOGUES[0][0] and summaries[2] == DIALOGUES[2][1]
    assert rouge(summaries, summaries) == {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0}
    assert 0.0 < rouge(["customer lost a phone"], [summaries[1]])["rouge1"] < 100.0
    with pytest.raises(FileNotFoundError, match="tweetsum_valid"):
        load_tweetsum("valid", tmp_path)


def test_tweetsum_dir_is_a_deprecated_alias_of_data_dir(t5_checkpoint, tmp_path, capsys):
    write_tweetsum(tmp_path / "data")
    common = ["summarize", "--checkpoint", str(t5_checkpoint), "--tweetsum", "test", "--max-new-tokens", "3"]
    assert main([*common, "--data-dir", str(tmp_path / "data")]) == 0
    new = capsys.readouterr()
    assert main([*common, "--tweetsum-dir", str(tmp_path / "data")]) == 0
    old = capsys.readouterr()
    assert old.out == new.out and "--data-dir" not in new.err
    assert "twinformer: --tweetsum-dir is deprecated; use --data-dir (same meaning)" in old.err


def test_empty_input_says_so_on_stderr_and_exits_0(t5_checkpoint, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    assert main(["summarize", "--checkpoint", str(t5_checkpoint), "--input", str(tmp_path / "empty.txt")]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "twinformer summarize: no texts in the input: nothing to summarise\n"


def test_a_blank_line_gets_an_empty_line_as_in_translate(t5_checkpoint, tmp_path, capsys):
    texts = [DIALOGUES[0][0], "", "   ", DIALOGUES[1][0]]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    assert main(["summarize", "--checkpoint", str(t5_checkpoint), "--input", str(tmp_path / "in.txt"),
                 "--max-new-tokens", "4"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.split("\n")
    assert lines[1:3] == ["", ""] and len(lines) == len(texts) + 1  # + the final newline
    assert main(["summarize", "--checkpoint", str(t5_checkpoint), "--max-new-tokens", "4", texts[0], texts[3]]) == 0
    alone = capsys.readouterr().out.splitlines()
    assert [lines[0], lines[3]] == alone  # the blank lines change nothing else


def test_a_missing_tokenizer_is_reported_before_the_model_loads(t5_checkpoint, tmp_path, monkeypatch, capsys):
    import shutil

    import twinformer.commands.summarize as summarize

    bare = tmp_path / "bare"
    shutil.copytree(t5_checkpoint, bare)
    (bare / "tokenizer.json").unlink()

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the tokenizer was checked")

    monkeypatch.setattr(summarize, "_make_decoder", no_model)
    assert main(["summarize", "--checkpoint", str(bare), "some text"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"twinformer summarize: error: checkpoint {bare} has no T5 tokenizer") and len(err.splitlines()) == 1
