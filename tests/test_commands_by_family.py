"""Every command over every family: it works, or it refuses in one line that names the command to use.

The decoder-only checkpoint is a random tiny GPT-2 made by transformers with a byte-level BPE
tokenizer trained here, converted by `convert --from hf` as a user would; the encoder-decoder one
is the shared tiny training run (tests/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from twinformer.cli import main

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "the sun is bright today"] * 5
PROMPTS = ["the cat", "a dog ran in"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gpt2_dirs(tmp_path_factory) -> tuple[Path, Path, object]:
    """(HF directory, our converted checkpoint, the transformers model) of a random tiny GPT-2."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("gpt2")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))  # fmt: skip
    config = transformers.GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=0, eos_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # peaked attention, so the tokens depend on the positions (not HF's near-uniform init)
        for parameter in hf.parameters():
            parameter.mul_(4.0)
    hf.save_pretrained(root / "hf")
    tok.save(str(root / "hf" / "tokenizer.json"))
    assert main(["convert", "--from", "hf", str(root / "hf"), str(root / "ours")]) == 0
    return root / "hf", root / "ours", hf


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_generate_streams_what_transformers_generates(gpt2_dirs, capsys, framework):
    from tokenizers import Tokenizer

    hf_dir, ours, hf = gpt2_dirs
    tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    code, out, err = run_cli(capsys, "generate", "--checkpoint", str(ours), "--framework", framework,
                             "--max-new-tokens", "8", *PROMPTS)  # fmt: skip
    assert code == 0, err
    expected = []
    for prompt in PROMPTS:
        ids = torch.tensor([tok.encode(prompt).ids])
        with torch.no_grad():
            new = hf.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)[0, ids.shape[1]:]
        stop = (new == 0).nonzero()
        new = new[: int(stop[0])] if len(stop) else new
        expected.append(tok.decode(new.tolist(), skip_special_tokens=True))
    assert len(set(expected)) > 1 and all(expected), "the check needs non-trivial continuations"
    assert out.split("\n")[:-1] == expected


def test_sampling_gives_the_same_text_in_both_stacks(gpt2_dirs, capsys):
    _, ours, _ = gpt2_dirs
    outputs = []
    for framework in ("torch", "jax"):
        code, out, err = run_cli(capsys, "generate", "--checkpoint", str(ours), "--framework", framework, "--do-sample",
                                 "--top-p", "0.9", "--top-k", "20", "--seed", "3", "--batch-size", "2",
                                 "--max-new-tokens", "6", *PROMPTS)  # fmt: skip
        assert code == 0, err
        outputs.append(out)
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("command, instead", [
    (["translate", "--checkpoint", "{ours}", "hello"], "twinformer generate"),
    (["summarize", "--checkpoint", "{ours}", "hello"], "twinformer generate"),
    (["parity", "--checkpoint", "{ours}"], "parity --against hf"),
    (["evaluate", "--checkpoint", "{ours}"], "twinformer generate"),
])  # fmt: skip
def test_encoder_decoder_commands_refuse_a_decoder_only_model_in_one_line(gpt2_dirs, capsys, command, instead):
    code, out, err = run_cli(capsys, *[part.format(ours=gpt2_dirs[1]) for part in command])
    assert code == 2 and instead in err and len(err.strip().splitlines()) == 1, err


def test_generate_refuses_an_encoder_decoder_model_in_one_line(tiny_run, capsys):
    code, out, err = run_cli(capsys, "generate", "--checkpoint", str(tiny_run), "hello")
    assert code == 2 and "twinformer translate" in err and len(err.strip().splitlines()) == 1, err


def test_generate_reads_prompts_from_a_file_and_says_when_there_are_none(gpt2_dirs, capsys, tmp_path):
    _, ours, _ = gpt2_dirs
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    code, out, err = run_cli(capsys, "generate", "--checkpoint", str(ours), "--input", str(tmp_path / "prompts.txt"),
                             "--max-new-tokens", "3")  # fmt: skip
    assert code == 0 and len(out.split("\n")) == len(PROMPTS) + 1, err
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    code, out, err = run_cli(capsys, "generate", "--checkpoint", str(ours), "--input", str(tmp_path / "empty.txt"))
    assert code == 0 and out == "" and "no prompts" in err


def test_beam_search_runs_for_a_decoder_only_model(gpt2_dirs, capsys):
    _, ours, _ = gpt2_dirs
    outputs = [run_cli(capsys, "generate", "--checkpoint", str(ours), "--framework", framework, "--num-beams", "3",
                       "--max-new-tokens", "5", PROMPTS[0]) for framework in ("torch", "jax")]  # fmt: skip
    assert [code for code, _, _ in outputs] == [0, 0] and outputs[0][1] == outputs[1][1]
    assert np.all([out.endswith("\n") for _, out, _ in outputs])
