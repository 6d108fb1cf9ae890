"""Bad input gets a clear refusal, never a silent wrong answer; and the CLI's small conveniences."""

from __future__ import annotations

import argparse
import json
import sys
import re
import time
from pathlib import Path

import pytest

import twinformer
from shared.checkpoints.paths import list_checkpoints
from shared.training.metrics_log import read_metrics
from tests.conftest import TINY_RUN
from twinformer.backends import make_backend
from twinformer.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- numeric flags: checked when the command line is parsed --------------------------------------------
def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_no_numeric_flag_takes_a_bare_int_or_float():
    """Every numeric flag goes through twinformer/arg_types.py, which refuses out-of-range values."""
    bare = [f"{name} {'/'.join(a.option_strings)}" for name, parser in _subparsers().items()
            for a in parser._actions if a.type in (int, float)]  # fmt: skip
    assert bare == []


@pytest.mark.parametrize("argv, flag", [
    (["train", "--framework", "torch", "--config", "x.json", "--max-minutes", "-1"], "--max-minutes"),
    (["train", "--framework", "torch", "--config", "x.json", "--max-minutes", "nan"], "--max-minutes"),
    (["train", "--framework", "torch", "--config", "x.json", "--steps", "0"], "--steps"),
    (["train", "--framework", "torch", "--config", "x.json", "--threads", "-2"], "--threads"),
    (["finetune", "--framework", "torch", "--full", "--steps", "-5"], "--steps"),
    (["evaluate", "--checkpoint", "x", "--max-sentences", "0"], "--max-sentences"),
    (["evaluate", "--checkpoint", "x", "--beam", "0"], "--beam"),
    (["translate", "--checkpoint", "x", "--batch-size", "0", "a"], "--batch-size"),
    (["translate", "--checkpoint", "x", "--temperature", "0", "a"], "--temperature"),
    (["translate", "--checkpoint", "x", "--k", "0", "a"], "--k"),
    (["translate", "--checkpoint", "x", "--max-new-tokens", "-1", "a"], "--max-new-tokens"),
    (["parity", "--batch", "0"], "--batch"),
    (["parity", "--src-len", "-1"], "--src-len"),
    (["parity", "--tgt-len", "zero"], "--tgt-len"),
    (["parity", "--seed", "-1"], "--seed"),
    (["parity", "--preset", ""], "--preset"),
    (["average", "--run", "x", "--out", "y", "--last", "0"], "--last"),
    (["convert", "--from", "book-ch4", "a.pt", "out", "--norm-eps", "-1e-5"], "--norm-eps"),
    (["demo", "--steps-jax", "-3"], "--steps-jax"),
])  # fmt: skip
def test_a_bad_number_is_refused_naming_its_flag(argv, flag, capsys):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert f"error: argument {flag}: " in err and "Traceback" not in err


def test_parity_lengths_beyond_the_model_are_refused(capsys):
    code, _, err = run_cli(capsys, "parity", "--src-len", "999")
    assert code == 2 and "--src-len 999 exceeds the model's max_len" in err


# -- silent wrong answers --------------------------------------------------------------------------------
def test_an_empty_sentence_gets_an_empty_line(tiny_run, capsys):
    code, out, err = run_cli(capsys, "translate", "--checkpoint", str(tiny_run), "--max-new-tokens", "4",
                             "", "lo eka", "   ")  # fmt: skip
    assert code == 0, err
    lines = out.split("\n")
    assert lines[0] == "" and lines[2] == "" and lines[3] == "" and len(lines) == 4  # 3 lines, then the end
    code, out, _ = run_cli(capsys, "translate", "--checkpoint", str(tiny_run), "--max-new-tokens", "4", "lo eka")
    assert out.split("\n")[0] == lines[1], "the empty lines must not change the others"


def test_training_into_a_run_directory_needs_resume_or_overwrite(tmp_path, capsys):
    config = tmp_path / "two.json"
    TINY_RUN.replace(total_steps=2, save_every=0).save(config)
    train = ["train", "--framework", "torch", "--config", str(config), "--run-dir", str(tmp_path / "run"), "--no-progress"]
    assert run_cli(capsys, *train)[0] == 0
    before = sorted(p.name for p in list_checkpoints(tmp_path / "run"))

    code, _, err = run_cli(capsys, *train)
    assert code == 2 and "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert sorted(p.name for p in list_checkpoints(tmp_path / "run")) == before  # nothing touched

    (tmp_path / "run" / "checkpoints" / "step_0000099").mkdir()  # an older, longer run's leftover
    code, out, err = run_cli(capsys, *train, "--overwrite")
    assert code == 0, err
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_0000002"]
    steps = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == sorted(set(steps)), "no duplicate steps in metrics.jsonl"


def test_missing_multi30k_gives_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    import shared.data.multi30k as multi30k

    monkeypatch.setenv("TWINFORMER_MULTI30K_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("TWINFORMER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(multi30k, "BASE_URL", (tmp_path / "offline").as_uri() + "/")  # no network in tests
    config = tmp_path / "m30k.json"
    TINY_RUN.replace(corpus="multi30k").save(config)
    code, out, err = run_cli(capsys, "train", "--framework", "torch", "--config", str(config), "--run-dir",
                             str(tmp_path / "run"), "--data-dir", str(tmp_path / "given"), "--no-progress")  # fmt: skip
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("twinformer train: error: train.en.gz not found locally")
    assert f"looked in: {tmp_path / 'given'}, {tmp_path / 'empty'}, {tmp_path / 'cache' / 'multi30k'}" in err
    assert "TWINFORMER_MULTI30K_DIR" in err and "--data-dir" in err


def test_readme_says_where_multi30k_is_read_from_where_it_first_names_it():
    text = README.read_text()
    paragraph = next(p for p in text.split("\n\n") if "Multi30k" in p)
    assert "TWINFORMER_MULTI30K_DIR" in paragraph and "--data-dir" in paragraph


# -- conveniences ----------------------------------------------------------------------------------------
def test_version(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"twinformer {twinformer.__version__}"


def test_evaluate_prints_a_table_and_json_on_request(tiny_run, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # bars are drawn on a terminal only
    argv = ["evaluate", "--checkpoint", str(tiny_run), "--max-sentences", "20", "--split", "val"]
    code, table, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert re.search(r"^loss +\d+\.\d{4} nats/token", table, re.M) and re.search(r"^BLEU +\d+\.\d\d", table, re.M)
    assert "decode" in err, "a progress bar on stderr"
    code, out, err = run_cli(capsys, *argv, "--json", "--no-progress")
    result = json.loads(out)
    assert err == "" and {"loss", "ppl", "tokens", "bleu"} <= set(result) and result["split"] == "val"
    assert f"{result['loss']:.4f} nats/token" in table


def test_translate_shows_progress_for_long_inputs_only(tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # bars are drawn on a terminal only
    lines = tmp_path / "in.txt"
    lines.write_text("lo eka\n" * 5)
    common = ["translate", "--checkpoint", str(tiny_run), "--max-new-tokens", "2", "--batch-size", "2"]
    code, out, err = run_cli(capsys, *common, "--input", str(lines))
    assert code == 0 and len(out.splitlines()) == 5 and "translate" in err
    code, out, err = run_cli(capsys, *common, "--input", str(lines), "--no-progress")
    assert code == 0 and err == ""
    code, out, err = run_cli(capsys, *common, "lo eka", "lo eka", "lo eka")
    assert code == 0 and err == "", "sentences on the command line: no bar"


def test_the_training_bar_leaves_evaluations_out_of_its_rate(tmp_path, monkeypatch):
    """The ETA is (steps left) / (training rate): time spent evaluating must not slow the rate."""
    import tqdm

    import shared.training.loop as loop
    from shared.training.loop import train

    bars, real_evaluate, pause = [], loop.evaluate, 0.4

    class RecordingBar(tqdm.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.opened, self.elapsed_at_close, self.wall_at_close = time.perf_counter(), None, None
            bars.append(self)

        def close(self):
            if self.elapsed_at_close is None:
                self.elapsed_at_close = self.format_dict["elapsed"]
                self.wall_at_close = time.perf_counter() - self.opened
            super().close()

    def slow_evaluate(*args, **kwargs):
        time.sleep(pause)
        return real_evaluate(*args, **{**kwargs, "bleu_sentences": 0})

    monkeypatch.setattr(tqdm, "tqdm", RecordingBar)
    monkeypatch.setattr(loop, "evaluate", slow_evaluate)
    train(TINY_RUN.replace(total_steps=4, eval_every=1, save_every=0), "torch", tmp_path, progress=True,
          backend_factory=make_backend)
    bar = next(bar for bar in bars if str(bar.desc).startswith("train["))
    # Three mid-run evaluations (after steps 1-3) sleep 3 * 0.4 s while the bar is open; its
    # elapsed time, from which tqdm computes the rate and the ETA, leaves them out.
    assert bar.wall_at_close > 3 * pause
    assert bar.elapsed_at_close < bar.wall_at_close - 3 * pause + 0.1


def test_threads_default_and_flag(monkeypatch):
    import torch

    from twinformer.threads import DEFAULT_CPU_THREADS, apply_threads, resolve_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert resolve_threads(None) == DEFAULT_CPU_THREADS == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert resolve_threads(None) == 2 and resolve_threads(3) == 3
    before = torch.get_num_threads()
    try:
        assert apply_threads(2) == 2 and torch.get_num_threads() == 2
        assert apply_threads(0) == 0 and torch.get_num_threads() == 2  # 0: left as the library has it
    finally:
        torch.set_num_threads(before)


def test_every_doc_the_code_points_to_is_in_the_repo():
    root = README.parent
    sources = [p for folder in ("shared", "torch_impl", "jax_impl", "twinformer", "parity_tests", "tests", "benchmarks")
               for p in (root / folder).rglob("*.py")]  # fmt: skip
    cited = {m for p in sources for m in re.findall(r"\b(?:shared/)?docs/[\w.-]+\.md", p.read_text())}
    assert "docs/BOOK_MODELS.md" in cited
    assert [doc for doc in sorted(cited) if not (root / doc).is_file()] == []
