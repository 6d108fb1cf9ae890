"""What the `twinformer serve` tests share: tiny random checkpoints (a T5 with a LoRA adapter and a
GPT-2 with a chat template, each with its tokenizer) and a server on a free loopback port in a thread."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "the sun is bright today",
         "Summarize: my phone does not record my steps any more", "customer lost a bag after a delayed flight"]  # fmt: skip
# A ChatML-style template, as Qwen's and many others' tokenizer_config.json carry one.
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
                 "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                 "{% endif %}")  # fmt: skip


def make_t5(root: Path) -> tuple[Path, Path]:
    """(checkpoint, LoRA adapter) of a random tiny flan-t5 with a T5-style tokenizer; the adapter's B is
    not zero, so that it changes the model's output."""
    from shared.checkpoints.adapter_io import expected_adapter_shapes, save_adapter
    from shared.checkpoints.checkpoint import save_checkpoint
    from shared.checkpoints.init import initial_tensors
    from shared.checkpoints.lora_config import LoRAConfig
    from shared.config.model_config import ModelConfig
    from shared.data.t5_tokenizer import train_t5_tokenizer

    tokenizer = train_t5_tokenizer(TEXTS * 3, vocab_size=60)
    config = ModelConfig.from_preset(
        "flan-t5-small", d_model=16, num_heads=2, head_size=8, d_ff=24, num_encoder_layers=1, num_decoder_layers=1,
        src_vocab_size=tokenizer.vocab_size, tgt_vocab_size=tokenizer.vocab_size, max_len=64,
        dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0,
    )  # fmt: skip
    tensors = initial_tensors(config, seed=0)
    tensors = {k: v * 8 if v.ndim == 2 else v for k, v in tensors.items()}  # peaked: tokens depend on the input
    checkpoint = root / "t5"
    save_checkpoint(checkpoint, config, tensors)
    tokenizer.save(checkpoint)
    lora = LoRAConfig(r=2, alpha=4, dropout=0.0, target_modules=("q_proj", "v_proj"))
    rng = np.random.default_rng(1)
    adapter = {key: (rng.standard_normal(shape) * 2).astype(np.float32)
               for key, shape in expected_adapter_shapes(config, lora).items()}  # fmt: skip
    save_adapter(root / "t5-adapter", config, lora, adapter)
    return checkpoint, root / "t5-adapter"


def make_gpt2(root: Path) -> Path:
    """A random tiny GPT-2-shaped causal LM with a byte-level BPE trained here and a chat template."""
    from benchmarks.serve_load import byte_level_bpe
    from shared.checkpoints.checkpoint import save_checkpoint
    from shared.checkpoints.init import initial_tensors
    from shared.config.model_config import ModelConfig

    tok = byte_level_bpe(TEXTS, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    vocab = tok.get_vocab_size()
    config = ModelConfig.from_preset("gpt2", d_model=32, num_heads=2, d_ff=64, num_decoder_layers=2, max_len=128,
                                     src_vocab_size=vocab, tgt_vocab_size=vocab, pad_id=0, bos_id=0, eos_id=0)  # fmt: skip
    tensors = {k: v * 4 if v.ndim == 2 else v for k, v in initial_tensors(config, seed=0).items()}  # peaked logits
    checkpoint = root / "gpt2"
    save_checkpoint(checkpoint, config, tensors)
    tok.save(str(checkpoint / "tokenizer.json"))
    (checkpoint / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": CHAT_TEMPLATE, "eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"}))
    return checkpoint


class ThreadServer:
    """uvicorn serving `app` on 127.0.0.1 at a free port, in a thread (stop(): what SIGTERM does)."""

    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 60) -> None:
        self.server.should_exit = True  # uvicorn's SIGTERM handler sets exactly this
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the server did not stop"


# -- fixtures (imported by the tests/test_serve_*.py modules) -------------------------------------------
import pytest  # noqa: E402

# The engines the HTTP tests run against: one request at a time, and continuous batching.
ENGINES = ["serial", "batching"]
ADAPTER = "tweetsum"


@pytest.fixture(scope="session")
def serve_checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    t5, adapter = make_t5(root)
    return {"t5": t5, "t5-adapter": adapter, "gpt2": make_gpt2(root)}


def build_app(paths: dict[str, Path], family: str, framework: str, engine: str = "serial", api_key: str | None = None,
              wrap=None, max_body_bytes: int | None = None):  # fmt: skip
    """The app `twinformer serve` builds, for the test checkpoint of `family` ("t5" with its adapter, or "gpt2")."""
    from shared.checkpoints.checkpoint import read_config
    from twinformer.serving.app import create_app
    from twinformer.serving.chat_template import ChatFormat
    from twinformer.serving.engines import make_engine
    from twinformer.serving.model_text import ModelText

    checkpoint = paths[family]
    adapters = {ADAPTER: paths["t5-adapter"]} if family == "t5" else None
    # a wrapped engine (SlowEngine: its sinks sleep on the engine thread) stays in this process, where
    # that slows the decoding itself; otherwise the batching engine runs in its own process, as in `serve`
    decoder = make_engine(framework, checkpoint, adapters, batching=engine == "batching", max_batch=4,
                          own_process=wrap is None)
    if wrap is not None:
        decoder = wrap(decoder)
    extra = {} if max_body_bytes is None else {"max_body_bytes": max_body_bytes}
    return create_app(decoder, ModelText.load(checkpoint, read_config(checkpoint)), ChatFormat.load(checkpoint), family,
                      api_key=api_key, **extra)  # fmt: skip


@pytest.fixture(scope="module")
def servers(serve_checkpoints):
    """servers(family, framework, engine="serial", **build_app options) -> a running ThreadServer
    (one per distinct call in the module, stopped at its end)."""
    running: dict[tuple, ThreadServer] = {}

    def get(family: str, framework: str, engine: str = "serial", **options) -> ThreadServer:
        key = (family, framework, engine, tuple(sorted(options.items())))
        if key not in running:
            running[key] = ThreadServer(build_app(serve_checkpoints, family, framework, engine, **options))
        return running[key]

    yield get
    for server in running.values():
        server.stop()


def client(server: ThreadServer, api_key: str = "unused"):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0, timeout=120)


def wait_until(condition, timeout: float = 30.0) -> bool:
    """Polls `condition` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


class SlowEngine:
    """An engine whose tokens reach the server `delay` seconds apart (the request is still running when a
    test acts on it), recording each request's finish reason."""

    def __init__(self, engine, delay: float = 0.05):
        self.engine, self.delay, self.finished = engine, delay, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def submit(self, request, sink):
        outer = self

        class Slow:
            def token(self, token_id):
                time.sleep(outer.delay)  # on the engine thread: the engine itself is slowed
                sink.token(token_id)

            def finish(self, reason, message=None):
                outer.finished.append(reason)
                sink.finish(reason, message)

        return self.engine.submit(request, Slow())
