"""`twinformer serve`'s command line: what the user can get wrong is refused in one line before the
model loads, and the book's Transformer (translation) serves through the same app."""

from __future__ import annotations

import pytest

from tests.serve_support import ThreadServer, client, serve_checkpoints  # noqa: F401  (fixture)
from twinformer.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def refused(capsys, *argv: str) -> str:
    """The one error line (argparse's usage errors come after its usage lines, as for every command)."""
    code = main(["serve", *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith(("usage:", " "))]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_arguments_are_refused_in_one_line(serve_checkpoints, capsys, tmp_path):
    t5, adapter = str(serve_checkpoints["t5"]), str(serve_checkpoints["t5-adapter"])
    assert "NAME=DIR" in refused(capsys, "--checkpoint", t5, "--adapter", adapter)
    assert "adapter name" in refused(capsys, "--checkpoint", t5, "--adapter", f"a:b={adapter}")
    assert "repeat" in refused(capsys, "--checkpoint", t5, "--adapter", f"x={adapter}", "--adapter", f"x={adapter}")
    assert "--port" in refused(capsys, "--checkpoint", t5, "--port", "70000")
    assert "error" in refused(capsys, "--checkpoint", str(tmp_path / "missing"))
    assert "--no-batching" in refused(capsys, "--checkpoint", t5) if not _has_batching() else True


def _has_batching() -> bool:
    import importlib.util

    return importlib.util.find_spec("twinformer.serving.batching") is not None


def test_a_checkpoint_without_its_tokenizer_is_refused_before_loading(serve_checkpoints, capsys, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(serve_checkpoints["t5"], bare)
    (bare / "tokenizer.json").unlink()
    assert "tokenizer" in refused(capsys, "--checkpoint", str(bare), "--no-batching")


def test_the_books_transformer_serves_too(tiny_run):
    """The book's translation model: a completion's prompt is the source sentence."""
    from shared.checkpoints.checkpoint import read_config
    from shared.checkpoints.paths import resolve
    from twinformer.serving.app import create_app
    from twinformer.serving.chat_template import ChatFormat
    from twinformer.serving.engines import make_engine
    from twinformer.serving.model_text import ModelText

    checkpoint = resolve(tiny_run, "model")
    config = read_config(checkpoint)
    app = create_app(make_engine("torch", checkpoint, batching=False), ModelText.load(checkpoint, config),
                     ChatFormat.load(checkpoint), "book")  # fmt: skip
    server = ThreadServer(app)
    try:
        reply = client(server).completions.create(model="book", prompt="a dog", max_tokens=4, temperature=0)
        assert reply.usage.completion_tokens >= 1 and reply.choices[0].finish_reason in ("stop", "length")
    finally:
        server.stop()
