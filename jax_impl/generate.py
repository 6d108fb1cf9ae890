"""One generation loop for every jax_impl family: greedy, sampling and beam search (contract:
shared/decoding/generation.py; the beam rules: shared/decoding/search.py's docstring).

    generate(model, params, ids, mask=None, config=GenerationConfig(), draws=None, on_token=None)
        -> (B, T_out) int32 numpy

model: the Flax module of jax_impl.build_model; ids / mask numpy (B, L). Encoder-decoders: ids is
the source, mask None = its non-pad tokens; decoder-only: ids is the left-padded prompt, mask None
= all real. A row with no real token is a padding row (it fills a fixed-size batch): it returns
pad only.

The loop reaches the model only through its incremental decoder (jax_impl/incremental.py) and
runs jitted over static-shape caches: without `on_token` the whole loop is one jitted
`lax.while_loop`; with it, a Python loop over a jitted step that moves only the (B,) chosen ids to
the host and hands them to on_token (streaming). Beam search always runs as one loop (on_token then
gets the best hypotheses' columns at the end). Compiles: one per (model, config, B, L, N); B is
padded up to a power of two so that callers' batch sizes fall into a few buckets.

Sampling mirrors `shared.decoding.generation.choose_next` op for op and consumes the shared `draws` (N, B)
uniforms (None: `shared.decoding.generation.uniforms(seed=0, N, B)`), so both stacks sample the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.incremental import incremental_decoder, is_encoder_decoder
from shared.decoding.inputs import check_source_ids
from shared.decoding.generation import GenerationConfig, length_normalizers, uniforms


def choose_next(logits: jax.Array, u: jax.Array, config: GenerationConfig, banned: tuple[int, ...] = ()) -> jax.Array:
    """logits (B, V), u (B,) -> next ids (B,): shared.decoding.generation.choose_next, op for op."""
    x = logits.astype(jnp.float32)
    if banned:
        x = x.at[:, jnp.asarray(banned)].set(-jnp.inf)
    if not config.do_sample:
        return jnp.argmax(x, axis=-1).astype(jnp.int32)  # the first maximum, as numpy
    x = x / jnp.float32(config.temperature)  # (B, V)
    if config.top_k:
        kth = jax.lax.top_k(x, min(config.top_k, x.shape[-1]))[0][:, -1:]  # (B, 1): the k-th largest
        x = jnp.where(x < kth, -jnp.inf, x)
    if config.top_p < 1.0:
        order = jnp.argsort(-x, axis=-1, stable=True)  # (B, V), best first
        ranked = jnp.take_along_axis(x, order, axis=-1)
        p = jax.nn.softmax(ranked, axis=-1)
        drop_ranked = (jnp.cumsum(p, axis=-1) - p) >= jnp.float32(config.top_p)  # mass ranked strictly before
        drop = jnp.zeros_like(drop_ranked).at[jnp.arange(x.shape[0])[:, None], order].set(drop_ranked)
        x = jnp.where(drop, -jnp.inf, x)
    cdf = jnp.cumsum(jax.nn.softmax(x, axis=-1), axis=-1)  # (B, V)
    threshold = (u.astype(jnp.float32) * cdf[:, -1])[:, None]
    return jnp.minimum(jnp.sum(cdf <= threshold, axis=-1), x.shape[-1] - 1).astype(jnp.int32)


# -- greedy and sampling -------------------------------------------------------------------------------
def _start(params, ids, mask, *, model, config: GenerationConfig, steps: int, copies: int = 1):
    decoder = incremental_decoder(model, config.use_cache)
    return decoder.start(params, ids, mask, steps, copies), decoder.first_tokens(ids, mask)


def _pick(params, cache, tokens, t, u, done, *, model, config: GenerationConfig, stop: tuple[int, ...]):
    """One step: feed tokens at t -> (next ids (B,), cache, done) (pad once a row has stopped)."""
    decoder = incremental_decoder(model, config.use_cache)
    logits, cache = decoder.step(params, cache, tokens, t)
    chosen = choose_next(logits, u, config, decoder.banned_ids)
    chosen = jnp.where(done, model.config.pad_id, chosen).astype(jnp.int32)
    return chosen, cache, done | jnp.isin(chosen, jnp.asarray(stop, jnp.int32))


_STATIC = ("model", "config", "steps", "stop")
_start_jit = jax.jit(_start, static_argnames=("model", "config", "steps", "copies"))
_pick_jit = jax.jit(_pick, static_argnames=("model", "config", "stop"))


@partial(jax.jit, static_argnames=_STATIC)
def _sample_loop(params, ids, mask, finished, draws, *, model, config, steps, stop):
    """-> (out (B, N) new ids, pad after a stop, steps run)."""
    cache, tokens = _start(params, ids, mask, model=model, config=config, steps=steps)
    out = jnp.full((ids.shape[0], steps), model.config.pad_id, jnp.int32)  # (B, N)

    def unfinished(state):
        t, *_, done = state
        return (t < steps) & ~jnp.all(done)

    def step(state):
        t, tokens, out, cache, done = state
        chosen, cache, done = _pick(params, cache, tokens, t, draws[t], done, model=model, config=config, stop=stop)
        out = jax.lax.dynamic_update_slice_in_dim(out, chosen[:, None], t, axis=1)
        return t + 1, chosen, out, cache, done

    t, _, out, _, _ = jax.lax.while_loop(unfinished, step, (jnp.int32(0), tokens, out, cache, finished))
    return out, t


def _sample_streaming(params, ids, mask, finished, draws, on_token, rows: int, *, model, config, steps, stop):
    """The same loop in Python over the jitted step: only the (B,) chosen ids reach the host."""
    cache, tokens = _start_jit(params, ids, mask, model=model, config=config, steps=steps)
    done_host, columns = np.asarray(finished).copy(), []
    done = jnp.asarray(finished)
    for t in range(steps):
        if done_host.all():
            break
        tokens, cache, done = _pick_jit(params, cache, tokens, jnp.int32(t), draws[t], done, model=model,
                                        config=config, stop=stop)
        chosen = np.asarray(tokens)  # (B,): the one transfer per token
        columns.append(chosen)
        on_token(chosen[:rows])
        done_host |= np.isin(chosen, stop)
    return np.stack(columns, axis=1) if columns else np.zeros((ids.shape[0], 0), np.int32)


# -- beam search ---------------------------------------------------------------------------------------
def beam_top_k(candidates: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """(B, K, V) -> lax.top_k of the (B, K * V) flattening: values and flat indices k * V + v.

    In two stages, each beam's best k, then the best k of those K * k: exactly the same result
    (a row's best k hold at most k of any one beam, which come in that beam's own top-k order,
    and candidates stay in flat-index order, so equal values still go lower index first), but
    XLA on the CPU turns one top_k over K * V into a full sort of every row inside the loop.
    """
    B, K, V = candidates.shape
    if k >= V:
        return jax.lax.top_k(candidates.reshape(B, K * V), k)
    per_beam, index = jax.lax.top_k(candidates, k)  # (B, K, k)
    flat_index = (index + (jnp.arange(K) * V)[None, :, None]).reshape(B, K * k)
    values, pick = jax.lax.top_k(per_beam.reshape(B, K * k), k)  # (B, k)
    return values, jnp.take_along_axis(flat_index, pick, axis=1)


def merge_pool(pool, offers):
    """Keep the K best of pool + offers, each (rows (B, K, N), norm (B, K), length (B, K)), by norm.

    The pool comes first in the concatenation, so on equal scores the earlier hypothesis stays.
    """
    K = pool[1].shape[1]
    norm, keep = jax.lax.top_k(jnp.concatenate([pool[1], offers[1]], axis=1), K)  # (B, K)
    rows = jnp.take_along_axis(jnp.concatenate([pool[0], offers[0]], axis=1), keep[:, :, None], axis=1)
    length = jnp.take_along_axis(jnp.concatenate([pool[2], offers[2]], axis=1), keep, axis=1)
    return rows, norm, length


@partial(jax.jit, static_argnames=_STATIC)
def _beam_loop(params, ids, mask, finished, norms, *, model, config, steps, stop):
    """-> (best hypothesis per row (B, N), its length (B,)). Rules: shared/decoding/search.py's docstring."""
    decoder = incremental_decoder(model, config.use_cache)
    pad, V, K, B = model.config.pad_id, model.config.tgt_vocab_size, config.num_beams, ids.shape[0]
    allowed = np.ones(V, bool)  # (V,): a constant mask, not a scatter into the logits
    allowed[list(decoder.banned_ids)] = False
    cache = decoder.start(params, ids, mask, steps, K)  # B*K rows, row b*K + k is beam k of row b
    tokens = jnp.repeat(decoder.first_tokens(ids, mask), K)  # (B*K,)
    buffer = jnp.full((B * K, steps), pad, jnp.int32)  # (B*K, N) each beam's tokens so far
    # One live beam: K copies of the first token would fill the first step with duplicates.
    scores = jnp.full((B, K), -jnp.inf, jnp.float32).at[:, 0].set(0.0)
    pool = (jnp.full((B, K, steps), pad, jnp.int32), jnp.full((B, K), -jnp.inf, jnp.float32), jnp.zeros((B, K), jnp.int32))
    ranks = jnp.arange(2 * K)
    first_beam = jnp.arange(B)[:, None] * K  # (B, 1): row b's beams start at b*K
    stop_ids = jnp.asarray(stop, jnp.int32)

    def unfinished(state):
        t, *_, done = state
        return (t < steps) & ~jnp.all(done)

    def step(state):
        t, tokens, buffer, cache, scores, pool, done = state
        logits, cache = decoder.step(params, cache, tokens, t)  # (B*K, V)
        logits = jnp.where(allowed, logits.astype(jnp.float32), -jnp.inf)
        logp = jax.nn.log_softmax(logits, axis=-1).reshape(B, K, V)
        values, flat = beam_top_k(scores[:, :, None] + logp, 2 * K)  # (B, 2K)
        parent, token = flat // V, (flat % V).astype(jnp.int32)
        rows = jnp.take_along_axis(buffer.reshape(B, K, steps), parent[:, :, None], axis=1)  # (B, 2K, N)
        rows = jax.lax.dynamic_update_slice_in_dim(rows, token[:, :, None], t, axis=2)
        is_eos = jnp.isin(token, stop_ids)
        # EOS candidates ranked K or lower are dropped (so one beam stops where greedy does).
        offered = is_eos[:, :K] & (values[:, :K] > -jnp.inf) & ~done[:, None]  # (B, K)
        offer_norm = jnp.where(offered, values[:, :K] / norms[t + 1], -jnp.inf)
        pool = merge_pool(pool, (rows[:, :K], offer_norm, jnp.full((B, K), t + 1, jnp.int32)))
        # The first K non-EOS candidates in rank order: sort keys rank (+ 2K for EOS) are unique.
        _, alive = jax.lax.top_k(-(ranks + jnp.where(is_eos, 2 * K, 0)), K)  # (B, K)
        scores = jnp.take_along_axis(values, alive, axis=1)
        buffer = jnp.take_along_axis(rows, alive[:, :, None], axis=1).reshape(B * K, steps)
        tokens = jnp.take_along_axis(token, alive, axis=1).reshape(B * K)
        cache = decoder.reorder(cache, (first_beam + jnp.take_along_axis(parent, alive, axis=1)).reshape(B * K))
        worst = pool[1][:, K - 1]
        done = done | ((worst > -jnp.inf) & (scores[:, 0] / norms[t + 1] <= worst))
        return t + 1, tokens, buffer, cache, scores, pool, done

    state = (jnp.int32(0), tokens, buffer, cache, scores, pool, finished)
    _, _, buffer, _, scores, pool, done = jax.lax.while_loop(unfinished, step, state)
    # Rows not done ran all N steps: their unfinished beams compete too, normalised at length N.
    alive_norm = jnp.where((scores > -jnp.inf) & ~done[:, None], scores / norms[steps], -jnp.inf)
    rows, _, length = merge_pool(pool, (buffer.reshape(B, K, steps), alive_norm, jnp.full((B, K), steps, jnp.int32)))
    return rows[:, 0], length[:, 0]  # padding rows were never offered anything: pad, length 0


# -- the entry point -----------------------------------------------------------------------------------
def bucket_rows(rows: int) -> int:
    """The batch size a call compiles for: the next power of two (callers' sizes fall in few buckets)."""
    return 1 << max(rows - 1, 0).bit_length()


def _inputs(model, ids, mask) -> tuple[np.ndarray, np.ndarray, int]:
    """Checked (ids int32, mask bool, room): room = how many new tokens the model's positions allow."""
    c = model.config
    ids = check_source_ids(np.asarray(ids), c)
    if mask is None:
        mask = ids != c.pad_id if is_encoder_decoder(model) else np.ones(ids.shape, bool)
    mask = np.asarray(mask).astype(bool)
    if mask.shape != ids.shape:
        raise ValueError(f"mask shape {mask.shape} differs from ids shape {ids.shape}")
    if is_encoder_decoder(model):
        return ids.astype(np.int32), mask, c.max_len - 1  # the start token and N tokens fill the positions
    if np.any(np.diff(mask.astype(np.int8), axis=1) < 0):
        raise ValueError("prompts must be left-padded: a False in the mask after a True")
    return ids.astype(np.int32), mask, c.max_len - ids.shape[1] + 1  # slots L - 1 + N hold positions < max_len


def generate(
    model,
    params,
    ids,
    mask=None,
    config: GenerationConfig = GenerationConfig(),
    draws: np.ndarray | None = None,
    on_token: Callable[[np.ndarray], None] | None = None,
) -> np.ndarray:
    """ids (B, L) -> new tokens (B, T_out) int32 numpy (the prompt and the start token excluded; the
    stop token included, pad after it). See the module docstring."""
    ids, mask, room = _inputs(model, ids, mask)
    steps = config.steps(room)
    B = ids.shape[0]
    finished = ~mask.any(axis=1)  # padding rows
    stop = config.eos_token_id if config.eos_token_id is not None else incremental_decoder(model).stop_ids
    if finished.all():
        return np.zeros((B, 0), np.int32)
    # Pad the batch to its bucket with copies of row 0, finished from the start.
    extra = bucket_rows(B) - B
    ids_b = np.concatenate([ids, np.repeat(ids[:1], extra, axis=0)])
    mask_b = np.concatenate([mask, np.repeat(mask[:1], extra, axis=0)])
    finished_b = jnp.asarray(np.concatenate([finished, np.ones(extra, bool)]))
    # The compiled program depends only on what the loop reads from the config.
    static = config.replace(max_new_tokens=None, eos_token_id=None)
    if config.strategy == "beam":
        norms = jnp.asarray(length_normalizers(steps, config.length_penalty))
        best, length = _beam_loop(params, ids_b, mask_b, finished_b, norms, model=model,
                                  config=static.replace(length_penalty=1.0), steps=steps, stop=stop)
        out = np.asarray(best)[:B, : int(np.asarray(length)[:B].max())].astype(np.int32)  # (B, T_out)
        if on_token is not None:
            for column in out.T:
                on_token(column)
        return out
    if config.do_sample:
        draws = uniforms(0, steps, B) if draws is None else np.asarray(draws)
        if draws.ndim != 2 or draws.shape[0] < steps or draws.shape[1] != B:
            raise ValueError(f"sampling needs (N, B) = ({steps}, {B}) uniforms, got {draws.shape}")
    else:
        draws = np.zeros((steps, B))  # greedy reads none
    draws_b = jnp.asarray(np.concatenate([draws[:steps], np.zeros((steps, extra))], axis=1), jnp.float32)
    options = dict(model=model, config=static, steps=steps, stop=stop)
    if on_token is not None:
        return _sample_streaming(params, ids_b, mask_b, finished_b, draws_b, on_token, B, **options)[:B].astype(np.int32)
    out, t = _sample_loop(params, ids_b, mask_b, finished_b, draws_b, **options)
    return np.asarray(out)[:B, : int(t)].astype(np.int32)  # (B, T_out)


__all__ = ["beam_top_k", "bucket_rows", "choose_next", "generate", "merge_pool"]
