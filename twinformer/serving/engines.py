"""The one place that picks an engine: the batching engine (continuous batching, the default), run in
a process of its own (engine_process.py), or the serial engine (`--no-batching`: one request at a
time, the fallback, in the server's process)."""

from __future__ import annotations

from pathlib import Path

from twinformer.serving.protocol import Engine


def make_engine(framework: str, checkpoint: Path, adapters: dict[str, Path] | None = None, batching: bool = True,
                max_batch: int = 8, own_process: bool = True) -> Engine:
    """A started engine for `checkpoint` in `framework` with the LoRA `adapters` ({name: directory}) loaded.

    own_process=False keeps the batching engine in this process (tests that reach into its thread).
    """
    if not batching:
        from twinformer.serving.serial import SerialEngine

        return SerialEngine(framework, checkpoint, adapters)
    if not own_process:
        from twinformer.serving.batching import BatchingEngine

        return BatchingEngine(framework, checkpoint, adapters, max_batch=max_batch)
    from twinformer.serving.engine_process import ProcessEngine

    return ProcessEngine(framework, checkpoint, adapters, max_batch=max_batch)


__all__ = ["make_engine"]
