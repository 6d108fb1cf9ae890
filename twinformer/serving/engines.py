"""The one place that picks an engine: the batching engine (continuous batching, the default) or
the serial engine (`--no-batching`: one request at a time, the fallback)."""

from __future__ import annotations

from pathlib import Path

from twinformer.serving.protocol import Engine


def make_engine(framework: str, checkpoint: Path, adapters: dict[str, Path] | None = None, batching: bool = True,
                max_batch: int = 8) -> Engine:
    """A started engine for `checkpoint` in `framework` with the LoRA `adapters` ({name: directory}) loaded."""
    if not batching:
        from twinformer.serving.serial import SerialEngine

        return SerialEngine(framework, checkpoint, adapters)
    from twinformer.serving.batching import BatchingEngine

    return BatchingEngine(framework, checkpoint, adapters, max_batch=max_batch)


__all__ = ["make_engine"]
