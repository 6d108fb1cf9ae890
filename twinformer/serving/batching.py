"""The batching engine: continuous batching over one KV cache of `max_batch` rows, either stack.

Design (twinformer/serving/protocol.py is the contract with the HTTP layer):
  - One decode thread. At each step boundary it drops cancelled requests, admits queued ones into
    free rows (twinformer/serving/scheduler.py) and runs ONE decode step for every running row.
    A request joins by having its prompt prefilled into its row alone (decoder-only: the prompt's
    keys/values; encoder-decoder: its encoded source and cross keys/values), and leaves when it
    emits a stop id, reaches max_new_tokens, or is cancelled; its row is free at once. Nobody
    waits for the slowest row.
  - The stack's slot decoder ({torch,jax}_impl/slots.py) keeps each row's keys/values left-aligned
    in its own row, with a per-row write slot and position: row r's token at its step t sits where
    it would sit decoding alone (decoder-only: slot L_r - 1 + t, position L_r - 1 + t; encoder-
    decoder: slot and position t), and a per-row mask hides the slots the row has not filled. So a
    row's math is the request decoded alone (torch_impl/generate.py, jax_impl/generate.py): same
    prefill, same positions, same keys; the attention only spans more (masked, weight 0) slots.
  - Token choice per row: greedy rows take the argmax of the batched logits (banned ids first, as
    the stacks' choose_next); a sampling row applies its stack's choose_next to its own logits row
    with its own temperature/top_p and its own uniforms `uniforms(seed, max_new_tokens, 1)`,
    the draws twinformer/decoding_model.py hands `generate` for that request alone.
  - Multi-LoRA: adapters are loaded once ({torch,jax}_impl/multi_lora.py); each row carries an
    adapter index (0 = base) into stacked A/B matrices, so rows with different adapters share a step.
"""

from __future__ import annotations

import importlib
import logging
import threading
from pathlib import Path

import numpy as np

from shared.decoding.generation import GenerationConfig, uniforms
from twinformer.serving.limits import check_request, max_context
from twinformer.serving.protocol import DecodeRequest, FinishReason, TokenSink
from twinformer.serving.scheduler import Running, Scheduler

log = logging.getLogger("twinformer.serve")

FRAMEWORKS = ("torch", "jax")


def load_slot_decoder(framework: str, checkpoint: Path, adapters: dict[str, Path] | None, rows: int):
    """The stack's slot decoder ({framework}_impl/slots.py) for the checkpoint, adapters loaded."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; expected one of {', '.join(FRAMEWORKS)}")
    module = importlib.import_module(f"{framework}_impl.slots")
    return module.load_slot_decoder(Path(checkpoint), {k: Path(v) for k, v in (adapters or {}).items()}, rows)


def sampling_config(request: DecodeRequest) -> GenerationConfig | None:
    """The request's sampling rule (None: greedy)."""
    if request.temperature == 0:
        return None
    return GenerationConfig(do_sample=True, temperature=float(request.temperature), top_p=float(request.top_p))


class BatchingEngine:
    """`Engine` (twinformer/serving/protocol.py) with continuous batching; see the module docstring."""

    def __init__(self, framework: str, checkpoint: Path, adapters: dict[str, Path] | None = None, max_batch: int = 8):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._start(load_slot_decoder(framework, checkpoint, adapters, max_batch))

    @classmethod
    def from_slot_decoder(cls, decoder) -> "BatchingEngine":
        """An engine over an already built slot decoder (tests, benchmarks)."""
        engine = cls.__new__(cls)
        engine._start(decoder)
        return engine

    def _start(self, decoder) -> None:
        self.decoder = decoder
        self.adapters: tuple[str, ...] = tuple(decoder.adapters)
        self.max_context: int = max_context(decoder.config)
        self.decoder_only: bool = decoder.decoder_only
        self.steps_run = 0  # decode steps so far (for tests and benchmarks)
        self._scheduler = Scheduler(decoder.rows)
        self._thread = threading.Thread(target=self._run, name="twinformer-batching", daemon=True)
        self._thread.start()

    # -- Engine -------------------------------------------------------------------------------------
    def submit(self, request: DecodeRequest, sink: TokenSink) -> int:
        check_request(request, self.decoder.config, self.decoder_only, self.adapters)
        return self._scheduler.enqueue(request, sink)

    def cancel(self, ticket: int) -> None:
        self._scheduler.cancel(ticket)

    def load(self) -> dict[str, int]:
        return self._scheduler.load()

    def shutdown(self, drain: bool = True) -> None:
        for _, _, sink in self._scheduler.stop_accepting(drop_queue=not drain):
            _finish(sink, "cancelled")
        if not drain:
            for _, running in self._scheduler.running():
                self._scheduler.cancel(running.ticket)
        self._thread.join()

    # -- the decode thread --------------------------------------------------------------------------
    def _run(self) -> None:
        scheduler = self._scheduler
        while True:
            self._drop_cancelled()
            for row, item in scheduler.admit():
                self._join(row, *item)
            running = scheduler.running()
            if not running:
                if not scheduler.accepting and scheduler.idle():
                    return
                scheduler.wait_for_work()
                continue
            try:
                self._step(running)
            except Exception as error:  # a failing step must not take the server down: its rows end
                log.exception("decode step failed")
                for row, r in running:
                    if scheduler.rows[row] is r:
                        self._leave(row, "error", f"decoding failed: {error}")

    def _drop_cancelled(self) -> None:
        cancelled = self._scheduler.take_cancelled()
        if not cancelled:
            return
        for _, _, sink in self._scheduler.drop_queued(cancelled):
            _finish(sink, "cancelled")
        for row, r in self._scheduler.running():
            if r.ticket in cancelled:
                self._leave(row, "cancelled")

    def _join(self, row: int, ticket: int, request: DecodeRequest, sink: TokenSink) -> None:
        adapter_index = 0 if request.adapter is None else 1 + self.adapters.index(request.adapter)
        config = sampling_config(request)
        try:
            first = self.decoder.join(row, np.asarray(request.prompt_ids, dtype=np.int64), adapter_index)
        except Exception as error:
            log.exception("prefill failed")
            _finish(sink, "error", f"prefill failed: {error}")
            return
        draws = None if config is None else uniforms(request.seed, request.max_new_tokens, 1)[:, 0]
        stop = frozenset(self.decoder.stop_ids) | frozenset(request.stop_ids)
        self._scheduler.rows[row] = Running(ticket, request, sink, adapter_index, stop, config, draws, next_token=first)

    def _step(self, running: list[tuple[int, Running]]) -> None:
        R = len(self._scheduler.rows)
        tokens = np.zeros(R, dtype=np.int64)
        active = np.zeros(R, dtype=bool)
        for row, r in running:
            tokens[row], active[row] = r.next_token, True
        logits = self.decoder.step(tokens, active)
        self.steps_run += 1
        greedy = self.decoder.greedy(logits) if any(r.draws is None for _, r in running) else None
        for row, r in running:
            if r.draws is None:
                token = int(greedy[row])
            else:
                token = int(self.decoder.sample(logits, row, r.sampling, float(r.draws[r.produced])))
            r.produced += 1
            if token in r.stop_ids:
                self._leave(row, "stop")
                continue
            _call(r.sink.token, token)
            r.next_token = token
            if r.produced >= r.request.max_new_tokens:
                self._leave(row, "length")

    def _leave(self, row: int, reason: FinishReason, message: str | None = None) -> None:
        r = self._scheduler.rows[row]
        self._scheduler.release(row)
        self.decoder.leave(row)
        _finish(r.sink, reason, message)


def _call(fn, *args) -> None:
    """A sink method; a sink that raises must not stop the engine (the HTTP layer's bug, logged)."""
    try:
        fn(*args)
    except Exception:
        log.exception("token sink raised")


def _finish(sink: TokenSink, reason: FinishReason, message: str | None = None) -> None:
    _call(sink.finish, reason, message)


__all__ = ["BatchingEngine", "load_slot_decoder"]
