"""Property: the torch slot decoder (torch_impl/slots.py) under any join/leave schedule gives every
request exactly the greedy tokens `generate` gives it alone.

A scripted schedule, no engine thread: requests of random prompt lengths and budgets arrive at
random steps, take the lowest free row at the first step boundary at or after their arrival (rows
freed by a request that just finished are reused at once), and leave on EOS or at their budget.
The engine's own tests (tests/test_serve_engine.py) cover both stacks and the threading; this
explores the schedules.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import torch_impl
from parity_tests.causal_lm_helpers import examples
from parity_tests.test_torch_generate import FAMILIES, peaked
from shared.checkpoints.init import initial_tensors
from shared.decoding.generation import GenerationConfig
from torch_impl.generate import generate
from torch_impl.slots import SPAN_MULTIPLE, slot_decoder

MODELS = {name: torch_impl.from_numpy(config, peaked(initial_tensors(config, 0))) for name, config in FAMILIES.items()}


def schedule_run(model, rows: int, requests: list[tuple[np.ndarray, int, int]],
                 spans: list[int] | None = None, stop_ids: tuple[int, ...] | None = None) -> list[list[int]]:
    """requests: (prompt ids, budget, arrival step) -> each one's generated tokens (stop token included);
    `spans` collects the attention span of every step; stop_ids: the model's if None."""
    decoder = slot_decoder(model, rows)
    stop = set(decoder.stop_ids if stop_ids is None else stop_ids)
    waiting = sorted(range(len(requests)), key=lambda i: requests[i][2])
    occupant: list[int | None] = [None] * rows
    feed = np.zeros(rows, dtype=np.int64)
    out: list[list[int]] = [[] for _ in requests]
    step = 0
    while waiting or any(o is not None for o in occupant):
        for row in range(rows):
            if occupant[row] is None and waiting and requests[waiting[0]][2] <= step:
                i = waiting.pop(0)
                occupant[row], feed[row] = i, decoder.join(row, requests[i][0], 0)
        active = np.array([o is not None for o in occupant])
        if active.any():
            chosen = decoder.greedy(decoder.step(feed, active))
            if spans is not None:
                spans.append(decoder.span)
            for row, i in enumerate(occupant):
                if i is None:
                    continue
                out[i].append(int(chosen[row]))
                feed[row] = chosen[row]
                if chosen[row] in stop or len(out[i]) == requests[i][1]:
                    occupant[row] = None
                    decoder.leave(row)
        step += 1
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
@examples(3)
@given(data=st.data())
def test_any_schedule_gives_each_request_its_alone_tokens(family, data):
    model, config = MODELS[family], FAMILIES[family]
    rows = data.draw(st.integers(1, 3), label="rows")
    decoder_only = config.family == "causal_lm"
    requests = []
    for _ in range(data.draw(st.integers(1, 5), label="requests")):
        length = data.draw(st.integers(1, 8), label="prompt length")
        prompt = np.asarray(data.draw(st.lists(st.integers(3, config.tgt_vocab_size - 1), min_size=length,
                                               max_size=length), label="prompt"))
        room = config.max_len - length if decoder_only else config.max_len - 1
        # up to 16 new tokens: a row's slot then passes 16, the first attention span (torch_impl/slots.py)
        budget = data.draw(st.integers(1, min(room, 16)), label="budget")
        requests.append((prompt, budget, data.draw(st.integers(0, 6), label="arrival step")))
    got = schedule_run(model, rows, requests)
    for (prompt, budget, _), tokens in zip(requests, got):
        alone = generate(model, prompt[None], None, GenerationConfig(max_new_tokens=budget))[0].tolist()
        assert tokens == alone


@pytest.mark.parametrize("family", list(FAMILIES))
def test_rows_past_the_first_span_keep_their_alone_tokens(family):
    """A long request (its slots pass SPAN_MULTIPLE, so the span grows mid-run) beside a short one that
    joins later (an encoder-decoder's with a source longer than SPAN_MULTIPLE): both get their alone
    tokens. No stop ids, so the long one runs its whole budget."""
    model, config = MODELS[family], FAMILIES[family]
    decoder_only = config.family == "causal_lm"
    rng = np.random.default_rng(0)
    long_prompt = rng.integers(3, config.tgt_vocab_size, 8 if decoder_only else 5)
    budget = config.max_len - len(long_prompt) if decoder_only else config.max_len - 1
    # encoder-decoders: the late request's source is longer than the first source span (16), so the
    # rows' source span grows when it joins and shrinks when it leaves
    late_prompt = rng.integers(3, config.tgt_vocab_size, 2 if decoder_only else config.max_len - 2)
    requests = [(long_prompt, budget, 0), (late_prompt, 4, 3)]
    spans: list[int] = []
    got = schedule_run(model, 2, requests, spans, stop_ids=())
    alone = [generate(model, p[None], None, GenerationConfig(max_new_tokens=n, eos_token_id=()))[0].tolist()
             for p, n, _ in requests]  # fmt: skip
    assert max(spans) > SPAN_MULTIPLE, spans  # the run did cross the first span
    assert got == alone
