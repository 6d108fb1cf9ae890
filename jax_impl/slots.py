"""Per-row decoding for continuous batching (twinformer/serving/batching.py): the JAX slot decoders.

The twin of torch_impl/slots.py (same interface: join, step, greedy, sample, leave; see its
docstring for the row layout): R rows of KV cache, each row left-aligned where decoding its request
alone puts its keys, a per-row write slot `at` (R,) (decoder-only: also the position), and a
per-row mask of the slots the row has filled.

Fixed shapes, so a new request never recompiles:
  - the step is one jitted function of (params, adapters, state, tokens (R,), active (R,),
    adapter index (R,)): every shape is fixed by R and max_len, so it compiles once;
  - a joining prompt is padded on the right to a length bucket (powers of two up to max_len):
    decoder-only, the prompt ids[:-1] fill slots 0 .. L-2 and the padded tail is masked and then
    overwritten by the generated tokens; encoder-decoder, the source is encoded with its padding
    masked and its cross keys/values fill the row's fixed source bucket of max_len slots. The
    prefill compiles once per bucket, lazily (at most log2(max_len) + 1 programs, each logged).
  - the step attends over the first `span` slots only (and reads the first `source` slots of the
    encoder-decoders' source buckets): the smallest of 16, 32, 64, ... up to max_len that holds
    every row (torch_impl/slots.py, same rule). Each (span, source) pair is one program, compiled
    at its first use and logged (at most log2(max_len / 16) + 1 spans).
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.attention import causal_mask, empty_cache, padding_mask
from jax_impl.generate import choose_next
from jax_impl.incremental import incremental_decoder, is_encoder_decoder
from jax_impl.multi_lora import load_multi_lora, multi_lora_apply
from jax_impl.positions import relative_buckets
from shared.data.batching import bucket_width  # prompt lengths: powers of two, capped at max_len
from shared.decoding.generation import GenerationConfig

log = logging.getLogger("twinformer.serve")

GREEDY = GenerationConfig()
SPAN_MULTIPLE = 16  # the smallest attention span (slots), as torch_impl/slots.py


def spanned(layers: list[dict], span: int, source: int | None = None) -> list[dict]:
    """Each layer's caches cut to the step's span: "self" to `span` slots, "cross" (if any) to `source`."""
    def cut(layer):
        out = dict(layer, self={n: layer["self"][n][:, :, :span] for n in ("k", "v")})
        if "cross" in layer:
            out["cross"] = {n: layer["cross"][n][:, :, :source] for n in ("k", "v")}
        return out

    return [cut(layer) for layer in layers]


def unspanned(full: list[dict], cut: list[dict], span: int) -> list[dict]:
    """`full` with the step's written self caches (the first `span` slots) put back."""
    return [dict(layer, self={n: layer["self"][n].at[:, :, :span].set(new["self"][n]) for n in ("k", "v")})
            for layer, new in zip(full, cut)]  # fmt: skip


def set_row(big: jax.Array, row_value: jax.Array, row) -> jax.Array:
    """big (R, ...) with row `row` (traced) replaced by row_value (1, ...) (the leading part of it)."""
    return jax.lax.dynamic_update_slice(big, row_value.astype(big.dtype), (row,) + (0,) * (big.ndim - 1))


# -- per family: the prefill and the step as functions of the bound module (model.apply(method=...)) ---
def causal_prefill(m, state: dict, ids, real, row) -> dict:
    """ids (1, P): the prompt's ids[:-1] right-padded to its bucket, `real` = L - 1 of them -> state with row `row`."""
    c = m.config
    N = state["key_ok"].shape[1]
    P = ids.shape[1]
    key_row = jnp.arange(N)[None, :] < real  # (1, N)
    x, rope = m._embed(ids, jnp.arange(P)[None, :], True)  # positions = slots (the prompt is unpadded on the left)
    allowed = causal_mask(jnp.arange(P), jnp.arange(N)) & padding_mask(key_row)  # (1, P, N)
    layers = []
    for layer, layer_cache in zip(m.layers, state["layers"]):
        fresh = {"self": empty_cache(1, layer_cache["self"]["k"].shape[1], N, c.head_dim, layer_cache["self"]["k"].dtype)}
        x, fresh = layer.cached(x, fresh, 0, allowed, rope)
        layers.append({"self": {n: set_row(layer_cache["self"][n], fresh["self"][n], row) for n in ("k", "v")}})
    return dict(state, layers=layers, key_ok=set_row(state["key_ok"], key_row, row),
                at=state["at"].at[row].set(real))


def causal_step(m, state: dict, tokens, active, span: int, source: int):
    """tokens (R,) at each row's slot `at` (= its position) -> (logits (R, V), state)."""
    at = jnp.where(active > 0, state["at"], 0)  # a free row (inactive) writes at slot 0 and stays there
    R = state["key_ok"].shape[0]
    key_ok = state["key_ok"].at[jnp.arange(R), at].set(True)  # the key written this step
    allowed = (key_ok[:, :span] & (jnp.arange(span)[None, :] <= at[:, None]))[:, None, :]  # (R, 1, span)
    x, rope = m._embed(tokens[:, None], at[:, None], True)  # (R, 1, D)
    layers = []
    for layer, layer_cache in zip(m.layers, spanned(state["layers"], span)):
        x, layer_cache = layer.cached(x, layer_cache, at, allowed, rope)
        layers.append(layer_cache)
    logits = m.project(m.final_norm(x))[:, 0, :]  # (R, V)
    return logits, dict(state, layers=unspanned(state["layers"], layers, span), key_ok=key_ok, at=at + active)


def encoder_decoder_prefill(m, state: dict, ids, mask, row) -> dict:
    """ids, mask (1, S_b): the source padded to its bucket -> state with row `row`'s cross keys/values."""
    memory = m.encode(ids, mask, deterministic=True)  # (1, S_b, D)
    S = state["src_ok"].shape[1]
    layers = []
    for layer, layer_cache in zip(m.decoder.layers, state["layers"]):
        kv = layer.cross_attn.keys_values(memory)  # (1, H, S_b, K)
        cross = {n: set_row(layer_cache["cross"][n], kv[n], row) for n in ("k", "v")}
        layers.append(dict(layer_cache, cross=cross))
    src_row = jnp.zeros((1, S), bool).at[:, : ids.shape[1]].set(mask)  # (1, S)
    return dict(state, layers=layers, src_ok=set_row(state["src_ok"], src_row, row),
                key_ok=state["key_ok"].at[row].set(False), at=state["at"].at[row].set(0))


def t5_step(m, state: dict, tokens, active, span: int, source: int):
    """T5: each row's relative bias is the row of the (N, span) causal bias table at its slot."""
    at = jnp.where(active > 0, state["at"], 0)  # a free row (inactive) writes at slot 0 and stays there
    N = state["key_ok"].shape[1]
    self_mask = (jnp.arange(span)[None, :] <= at[:, None])[:, None, :]  # (R, 1, span)
    table = m.decoder.layers[0].self_attn.position_bias(relative_buckets(m.config, N, span, False))  # (1, H, N, span)
    bias = table[0][:, at, :].transpose(1, 0, 2)[:, :, None, :]  # (R, H, 1, span)
    y = m.shared_embed(tokens[:, None])  # (R, 1, D)
    cut = dict(state, layers=spanned(state["layers"], span, source))
    y, layers = m.decoder.step(y, cut, at, self_mask, padding_mask(state["src_ok"][:, :source]), bias)
    return m.project(y)[:, 0, :], dict(state, layers=unspanned(state["layers"], layers, span), at=at + active)


def book_step(m, state: dict, tokens, active, span: int, source: int):
    """The book's Transformer: each row embedded at its own position, pad keys hidden (as decode_step)."""
    at = jnp.where(active > 0, state["at"], 0)  # a free row (inactive) writes at slot 0 and stays there
    R = state["key_ok"].shape[0]
    key_ok = state["key_ok"].at[jnp.arange(R), at].set(tokens != m.config.pad_id)
    self_mask = (key_ok[:, :span] & (jnp.arange(span)[None, :] <= at[:, None]))[:, None, :]  # (R, 1, span)
    y = m._embed(m._tables()[1], tokens[:, None], True, start=at[:, None])  # (R, 1, D)
    cut = dict(state, layers=spanned(state["layers"], span, source))
    y, layers = m.decoder.step(y, cut, at, self_mask, padding_mask(state["src_ok"][:, :source]))
    return m.project(y)[:, 0, :], dict(state, layers=unspanned(state["layers"], layers, span), key_ok=key_ok,
                                       at=at + active)  # fmt: skip


class SlotDecoder:
    """R rows of per-row decoding state over one model + params (+ stacked adapters)."""

    def __init__(self, model, params, rows: int, adapter_names: tuple[str, ...] = (), lora: dict | None = None):
        incremental = incremental_decoder(model)
        self.model, self.params, self.lora, self.rows = model, params, lora, rows
        self.config = model.config
        self.encoder_decoder = is_encoder_decoder(model)
        self.decoder_only = not self.encoder_decoder
        self.stop_ids, self.banned_ids = incremental.stop_ids, incremental.banned_ids
        self.adapters = adapter_names
        self.slots = self.config.max_len
        self.adapter_of = np.zeros(rows, np.int32)
        self.at = np.zeros(rows, np.int64)  # (R,) each row's next slot, on the host (the state's "at" mirrored)
        self.src_len = np.zeros(rows, np.int64)  # (R,) encoder-decoders: each row's source tokens (0: free)
        self.state = self._empty_state()
        name = type(model).__name__
        self._step_fn = {"T5": t5_step, "Transformer": book_step}.get(name, causal_step)
        self._steps: dict[tuple[int, int], object] = {}  # (span, source) -> its jitted step
        prefill = encoder_decoder_prefill if self.encoder_decoder else causal_prefill
        self._prefill = jax.jit(partial(self._apply, prefill), donate_argnums=(3,))
        self._greedy = jax.jit(lambda logits: choose_next(logits, None, GREEDY, self.banned_ids))
        self._step_logits = self._step_greedy = None  # the last step's logits and their greedy ids
        self.buckets_compiled: set[int] = set()

    def _apply(self, fn, params, lora, index, *args):
        return multi_lora_apply(self.model, params, lora, index, *args, method=fn)

    def _empty_state(self) -> dict:
        c, R, N = self.config, self.rows, self.slots
        dtype = jax.tree_util.tree_leaves(self.params)[0].dtype
        if self.encoder_decoder:
            layers = [{"self": empty_cache(R, c.num_heads, N, c.head_dim, dtype),
                       "cross": empty_cache(R, c.num_heads, N, c.head_dim, dtype)} for _ in range(c.num_decoder_layers)]
            extra = {"src_ok": jnp.zeros((R, N), bool)}
        else:
            from shared.families.causal_lm import kv_heads

            layers = [{"self": empty_cache(R, kv_heads(c), N, c.head_dim, dtype)} for _ in range(c.num_decoder_layers)]
            extra = {}
        state = {"layers": layers, "key_ok": jnp.zeros((R, N), bool), "at": jnp.zeros((R,), jnp.int32), **extra}
        # one buffer per leaf (equal zeros may share one), since the step donates every leaf
        return jax.tree_util.tree_map(lambda leaf: jnp.array(leaf, copy=True), state)

    # -- the engine's interface ---------------------------------------------------------------------
    def join(self, row: int, prompt_ids: np.ndarray, adapter_index: int) -> int:
        self.adapter_of[row] = adapter_index
        index = np.asarray([adapter_index], np.int32)
        L = len(prompt_ids)
        if self.encoder_decoder:
            bucket = bucket_width(L, 1, self.slots)
            ids = np.full((1, bucket), self.config.pad_id, np.int32)
            ids[0, :L] = prompt_ids
            mask = np.zeros((1, bucket), bool)
            mask[0, :L] = prompt_ids != self.config.pad_id  # as generate: the source's non-pad ids
            self._log_bucket(bucket)
            self.state = self._prefill(self.params, self.lora, index, self.state, ids, mask, row)
            self.at[row], self.src_len[row] = 0, L
            return self.config.bos_id
        bucket = bucket_width(max(L - 1, 1), 1, self.slots)
        ids = np.zeros((1, bucket), np.int32)
        ids[0, : L - 1] = prompt_ids[:-1]
        self._log_bucket(bucket)
        self.state = self._prefill(self.params, self.lora, index, self.state, ids, np.int32(L - 1), row)
        self.at[row] = L - 1
        return int(prompt_ids[-1])

    def step(self, tokens: np.ndarray, active: np.ndarray) -> jax.Array:
        span = bucket_width(int(self.at.max()) + 1, SPAN_MULTIPLE, self.slots)
        source = bucket_width(max(int(self.src_len.max()), 1), SPAN_MULTIPLE, self.slots)
        # host arrays of the jitted step's dtypes go in as they are (jnp.asarray would convert eagerly)
        logits, self._step_greedy, self.state = self._step_for(span, source)(
            self.params, self.lora, self.adapter_of.copy(), self.state, np.asarray(tokens, np.int32),
            np.asarray(active, np.int32))  # fmt: skip
        self._step_logits = logits
        self.at = np.where(active, self.at + 1, 0)
        return logits

    def _step_for(self, span: int, source: int):
        """The jitted step over `span` slots (and `source` source slots), built at its first use.

        The state (argument 3: the per-row caches) is donated: XLA updates the rows in place instead
        of copying every layer's (R, G, N, K) cache each step; the caller keeps only the new state.
        """
        key = (span, source if self.encoder_decoder else 0)
        if key not in self._steps:
            log.info("compiling the decode step over %d slots%s", span,
                     f" and {source} source slots" if self.encoder_decoder else "")  # fmt: skip
            step = partial(self._step_fn, span=span, source=source)
            self._steps[key] = jax.jit(partial(self._step_program, step), donate_argnums=(3,))
        return self._steps[key]

    def _step_program(self, step, params, lora, index, state, tokens, active):
        """-> (logits (R, V), greedy ids (R,), state): the argmax in the same program saves a dispatch."""
        logits, state = self._apply(step, params, lora, index, state, tokens, active)
        return logits, choose_next(logits, None, GREEDY, self.banned_ids), state

    def greedy(self, logits: jax.Array) -> np.ndarray:
        if logits is self._step_logits:  # the step's own logits: their argmax came out of the same program
            return np.asarray(self._step_greedy)
        return np.asarray(self._greedy(logits))

    def sample(self, logits: jax.Array, row: int, config: GenerationConfig, u: float) -> int:
        u_row = jnp.asarray([u], jnp.float32)  # float32, as generate's draws
        return int(choose_next(logits[row : row + 1], u_row, config, self.banned_ids)[0])

    def leave(self, row: int) -> None:
        # the row's caches are reset by the next join; until then it is ignored, and it writes at
        # slot 0 (inside every span)
        self.adapter_of[row] = 0
        self.at[row], self.src_len[row] = 0, 0  # the step zeroes the state's "at" of an inactive row

    def _log_bucket(self, bucket: int) -> None:
        if bucket not in self.buckets_compiled:
            self.buckets_compiled.add(bucket)
            log.info("compiling the prefill for prompts of up to %d tokens", bucket)


def load_slot_decoder(checkpoint: Path, adapters: dict[str, Path], rows: int) -> SlotDecoder:
    import jax_impl

    model, params = jax_impl.load(checkpoint)
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    lora = load_multi_lora(model.config, adapters, dtype) if adapters else None
    return SlotDecoder(model, params, rows, tuple(adapters), lora)


__all__ = ["SlotDecoder", "load_slot_decoder"]
