"""`twinformer serve`: an OpenAI-compatible HTTP server and chat page over a checkpoint (book chapter 6).

Serves POST /v1/completions and /v1/chat/completions (streamed with `stream: true`), GET /v1/models
(the base and `base:ADAPTER` for each --adapter), /health, /metrics (Prometheus) and a chat page at
/. Requests decode together on the KV cache (continuous batching) unless --no-batching. Binds
127.0.0.1 unless --host says otherwise; with --api-key (or $TWINFORMER_API_KEY) every endpoint but
/health and the page wants `Authorization: Bearer KEY`. SIGTERM or Ctrl-C: no new requests, the
ones in flight finish.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from twinformer.arg_types import non_empty, non_negative_int, positive_int
from twinformer.cli_common import add_force_argument, add_threads_argument

API_KEY_ENV = "TWINFORMER_API_KEY"
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def adapter_spec(text: str) -> tuple[str, Path]:
    name, sep, directory = text.partition("=")
    if not sep or not directory:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR (e.g. tweetsum=runs/lora), got {text!r}")
    if not ADAPTER_NAME.fullmatch(name):
        raise argparse.ArgumentTypeError(f"adapter name {name!r}: use letters, digits, '.', '_' or '-' "
                                         "(it becomes the model id BASE:NAME)")  # fmt: skip
    return name, Path(directory)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a checkpoint over HTTP: OpenAI-compatible API, streaming, batching, LoRA adapters, chat page",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("--checkpoint", required=True, type=Path, metavar="DIR",
                        help="a T5, causal-LM or book Transformer checkpoint (or run) directory with its tokenizer")
    parser.add_argument("--framework", choices=("torch", "jax"), default="torch")
    parser.add_argument("--adapter", type=adapter_spec, action="append", default=[], metavar="NAME=DIR",
                        help="a LoRA adapter loaded at start, served as model BASE:NAME (repeat for several)")
    parser.add_argument("--model-name", type=non_empty, metavar="NAME",
                        help="the base model's id in the API (default: the checkpoint directory's name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=non_negative_int, default=8000, help="port (default 8000)")
    parser.add_argument("--api-key", metavar="KEY", help=f"require this bearer key (default: ${API_KEY_ENV} if set)")
    parser.add_argument("--max-batch", type=positive_int, default=8, metavar="N", help="rows of the running batch")
    parser.add_argument("--no-batching", action="store_true", help="decode one request at a time (the serial engine)")
    parser.add_argument("--max-body-bytes", type=positive_int, default=1 << 20, metavar="N",
                        help="largest request body accepted (default 1 MiB)")
    add_force_argument(parser)
    add_threads_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from twinformer.threads import apply_threads

    apply_threads(args.threads)  # before torch / jax are imported
    import uvicorn

    from shared.checkpoints.adapter_base import check_adapter_on_checkpoint
    from shared.checkpoints.checkpoint import read_config
    from shared.checkpoints.paths import resolve
    from twinformer.serving.app import create_app
    from twinformer.serving.chat_template import ChatFormat
    from twinformer.serving.engines import make_engine
    from twinformer.serving.model_text import ModelText

    if not 1 <= args.port < 65536:
        raise ValueError(f"--port {args.port}: use a port in 1..65535")
    names = [name for name, _ in args.adapter]
    if len(set(names)) != len(names):
        raise ValueError(f"--adapter names repeat ({', '.join(names)}): give each adapter its own name")
    # Everything the user can get wrong is checked before the model loads.
    checkpoint = resolve(args.checkpoint, "model")
    config = read_config(checkpoint)
    adapters = {name: resolve(directory, "adapter") for name, directory in args.adapter}
    for directory in adapters.values():  # an adapter trained on another base is refused (--force applies it)
        check_adapter_on_checkpoint(directory, checkpoint, force=args.force)
    model_text = ModelText.load(checkpoint, config)
    chat_format = ChatFormat.load(checkpoint)
    model_name = args.model_name or Path(args.checkpoint).resolve().name
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    engine = make_engine(args.framework, checkpoint, adapters, batching=not args.no_batching, max_batch=args.max_batch)
    app = create_app(engine, model_text, chat_format, model_name, api_key=api_key, max_body_bytes=args.max_body_bytes)
    models = ", ".join([model_name] + [f"{model_name}:{name}" for name in names])
    print(f"twinformer serve: {models} ({args.framework}, {'serial' if args.no_batching else 'batching'}) on "
          f"http://{args.host}:{args.port}/{' (API key required)' if api_key else ''}", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")).run()
    engine.shutdown(drain=True)  # already drained by the app's lifespan unless uvicorn failed to start
    return 0
