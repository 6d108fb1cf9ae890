"""Decoding: torch and jax generate the same tokens, stop per row at EOS, sample only from the top k.

Axis letters: B batch, S source length, N max new tokens, V target vocabulary.

Near-ties. Greedy decoding is an argmax, and the two stacks' logits differ by float32 rounding
(bounded by the cpu/float32 row of shared.parity.tolerances). When the best two logits of a step are
closer than twice that bound, either stack may legitimately pick either token, and the rest of
that row may then diverge. So each row is compared exactly up to its first such near-tie step
(judged on an independent reference's logits), and completely when it has none; the test also
asserts that near-ties stay rare (at most one row cut per example: with logits of order one and a
bound of ~4e-5, a step is a near-tie with probability ~1e-4).

Beam search compares sums of log-probabilities across beams, so its near-ties are decisions on two
scores within twice their accumulated bound; an independent float64 reference flags the rows with
one as fragile (~1% of rows) and every other row must match it exactly.
"""

from __future__ import annotations

import copy

import io
import os
import sys

import jax
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import jax_impl
import torch_impl
from jax_impl.generate import generate as jax_generate_loop
from shared.config.model_config import ModelConfig
from shared.data.special_tokens import BOS_ID, EOS_ID, PAD_ID
from shared.decoding.batching import length_buckets, pad_sources, trim_at_eos
from shared.decoding.generation import GenerationConfig, choose_next, length_normalizers, trim_padding_columns, uniforms
from shared.decoding.inputs import padding_rows
from shared.decoding.search import banned_ids, normalized_score
from shared.parity.tolerances import compare_stacks
from shared.checkpoints.weight_table import param_specs
from torch_impl.generate import generate as torch_generate_loop
from twinformer.cli import main as cli_main

jax.config.update("jax_default_matmul_precision", "highest")  # parity compares full float32


def sampling_draws(config: GenerationConfig, model_config: ModelConfig, src, seed: int) -> np.ndarray | None:
    """(N, B) uniforms of `seed` for a sampling config (both stacks consume the same draws), else None."""
    if not config.do_sample:
        return None
    rows = np.asarray(src.cpu() if isinstance(src, torch.Tensor) else src).shape[0]
    return uniforms(seed, config.steps(model_config.max_len - 1), rows)


def torch_generate(model, src, config: GenerationConfig | None = None, seed: int = 0) -> np.ndarray:
    """torch_impl.generate on a source batch (B, S) -> (B, T_out); sampling draws the uniforms of `seed`."""
    config = config or GenerationConfig()
    return torch_generate_loop(model, src, None, config, sampling_draws(config, model.config, src, seed))


def jax_generate(model, params, src, config: GenerationConfig | None = None, seed: int = 0) -> np.ndarray:
    """jax_impl.generate, the same call: (B, S) -> (B, T_out); sampling draws the uniforms of `seed`."""
    config = config or GenerationConfig()
    return jax_generate_loop(model, params, src, config=config, draws=sampling_draws(config, model.config, src, seed))


def top_k_sampling(steps: int, k: int, temperature: float) -> GenerationConfig:
    """Sampling among the k most probable tokens at a temperature (no nucleus)."""
    return GenerationConfig(max_new_tokens=steps, do_sample=True, top_k=k, temperature=temperature)


# How far a float32 logit of the model under test may be from another stack's: the scale-aware
# bound of shared/parity/tolerances.py for its logits, measured per model by `on_device` (a float32 and a
# float64 forward of torch_impl on a probe batch). A decision on two scores closer than twice this is
# a near-tie that either stack may take either way.
SLACK = 0.0
NIGHTLY = os.environ.get("HYPOTHESIS_PROFILE") == "nightly"
# Each example compiles a fresh jitted decoder (new config, new shapes): keep the count small.
def few(ci_examples: int) -> settings:
    return settings(max_examples=8 * ci_examples if NIGHTLY else ci_examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- random tiny models ----------------------------------------------------------------------------
@st.composite
def tiny_models(draw, min_d_model: int = 1):
    """A random tiny torch model (eval mode) and its converted Flax params."""
    heads = draw(st.sampled_from([1, 2, 4]))
    tie = draw(st.sampled_from(["none", "tgt_out", "all"]))
    src_vocab = draw(st.integers(8, 24))
    config = ModelConfig(
        src_vocab_size=src_vocab,
        tgt_vocab_size=src_vocab if tie == "all" else draw(st.integers(8, 24)),
        d_model=heads * draw(st.sampled_from([w for w in (2, 4, 8) if heads * w >= min_d_model])),
        num_heads=heads,
        d_ff=draw(st.integers(4, 24)),
        num_encoder_layers=draw(st.integers(0, 2)),
        num_decoder_layers=draw(st.integers(1, 2)),
        dropout=0.1,  # nonzero on purpose: decoding must switch dropout off itself
        attention_dropout=0.1,
        embedding_dropout=0.1,
        max_len=draw(st.integers(10, 20)),
        bias=draw(st.booleans()),
        norm_placement=draw(st.sampled_from(["post", "pre"])),
        norm_kind=draw(st.sampled_from(["layernorm", "book"])),
        activation=draw(st.sampled_from(["relu", "gelu", "gelu_tanh"])),
        final_norms=draw(st.booleans()),
        scale_embeddings=draw(st.booleans()),
        tie_embeddings=tie,
        positional=draw(st.sampled_from(["sinusoid", "learned"])),
    )
    torch.manual_seed(draw(st.integers(0, 2**31 - 1)))
    model = torch_impl.Transformer(config)
    if config.bias:
        # Random models rarely pick EOS; a drawn boost makes rows end at varied steps.
        with torch.no_grad():
            model.output_proj.bias[EOS_ID] += draw(st.floats(0.0, 3.0))
    model.train()  # generate() must turn dropout off (and restore this mode)
    params = jax_impl.params_from_state_dict(config, torch_impl.state_dict_numpy(model))
    return model, params


@st.composite
def sources(draw, config: ModelConfig):
    """(B, S) int32 sources with PAD tails; a row of length 0 is a padding row."""
    B, S = draw(st.integers(1, 3)), draw(st.integers(1, 8))
    src = np.full((B, S), config.pad_id, dtype=np.int32)
    for row in range(B):
        length = draw(st.integers(0, S))
        src[row, :length] = draw(st.lists(st.integers(1, config.src_vocab_size - 1), min_size=length, max_size=length))
    return src


def model_device(model) -> torch.device:
    return next(model.parameters()).device


# -- an independent reference ----------------------------------------------------------------------
def masked(logits: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    logits = logits.double().clone()
    logits[..., list(banned_ids(config))] = -torch.inf
    return logits


def reference_greedy(model, src: np.ndarray, steps: int):
    """The contract restated naively: full forward on the prefix every step, no early exit.

    Returns (expected ids (B, T_out), row ends (B,), step logits (B, N, V) with banned ids at -inf).
    """
    config = model.config
    device = next(model.parameters()).device
    with torch.no_grad():
        model.eval()
        src_t = torch.as_tensor(src, dtype=torch.long, device=device)
        prefix = torch.full((src.shape[0], 1), BOS_ID, dtype=torch.long, device=device)
        step_logits = []
        for _ in range(steps):
            logits = masked(model(src_t, prefix)[:, -1, :], config)  # (B, V)
            step_logits.append(logits)
            prefix = torch.cat([prefix, logits.argmax(-1, keepdim=True)], dim=1)
    tokens = prefix[:, 1:].cpu().numpy()
    ends = []
    for row in range(src.shape[0]):
        if padding_rows(src[row : row + 1], config.pad_id)[0]:
            ends.append(0)
        else:
            eos = np.flatnonzero(tokens[row] == EOS_ID)
            ends.append(int(eos[0]) + 1 if eos.size else steps)
    expected = np.full((src.shape[0], max(ends)), config.pad_id, dtype=np.int32)
    for row, end in enumerate(ends):
        expected[row, :end] = tokens[row, :end]
    return expected, ends, torch.stack(step_logits, dim=1).cpu().numpy()


def on_device(parity_env, model, params):
    """Model and params moved to the run's devices (--device); token tests need float32 rounding."""
    global SLACK
    if parity_env.precision != "float32":
        pytest.skip("token-for-token decoding checks need float32 logits; under tf32/bfloat16 near-ties "
                    "are too frequent for identical tokens to be expected")
    model = model.to(parity_env.torch_device)
    SLACK = logit_bound(model)
    return model, parity_env.jax_put(params)


def logit_bound(model) -> float:
    """The scale-aware bound on |torch - jax| for this model's logits (its own float32 vs float64 error)."""
    config, device = model.config, model_device(model)
    rng = np.random.default_rng(0)
    src = torch.as_tensor(rng.integers(1, config.src_vocab_size, (2, 6)), device=device)
    tgt = torch.as_tensor(rng.integers(1, config.tgt_vocab_size, (2, min(6, config.max_len))), device=device)
    training = model.training  # the tests check that decoding restores the caller's mode: leave it as found
    with torch.no_grad():
        low = model.eval()(src, tgt).cpu().numpy()
        reference = copy.deepcopy(model).double().eval()(src, tgt).cpu().numpy()
    model.train(training)
    return compare_stacks(low, low, reference, reference, "float32").limit


def near_tie(logits: np.ndarray) -> np.ndarray:
    """(..., V) -> (...) True where the top-2 gap is within twice the float32 parity bound."""
    top2 = np.sort(logits, axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0] <= 2 * SLACK


def assert_matches_reference(actual: np.ndarray, expected: np.ndarray, ends, logits: np.ndarray, who: str) -> int:
    """Rows equal up to their first near-tie, the whole array when there is none; returns rows cut."""
    cut = 0
    for row, end in enumerate(ends):
        ties = np.flatnonzero(near_tie(logits[row, :end]))
        if ties.size:
            cut += 1
            limit = int(ties[0])
            note(f"{who}: row {row} compared up to its near-tie step {limit}")
            assert actual.shape[1] >= limit
            np.testing.assert_array_equal(actual[row, :limit], expected[row, :limit], err_msg=f"{who} row {row}")
    if cut == 0:
        np.testing.assert_array_equal(actual, expected, err_msg=who)
    return cut


# -- greedy: torch == jax == reference ---------------------------------------------------------------
@few(5)
@given(data=st.data())
def test_greedy_decoding_is_identical_in_torch_and_jax(data, parity_env):
    model, params = on_device(parity_env, *data.draw(tiny_models()))
    config = model.config
    src = data.draw(sources(config))
    steps = data.draw(st.integers(1, min(12, config.max_len - 1)))
    decode = GenerationConfig(max_new_tokens=steps)

    ours_torch = torch_generate(model, src, decode)
    assert model.training, "generate must restore the caller's train mode"
    ours_jax = jax_generate(jax_impl.Transformer(config), params, src, decode)
    expected, ends, logits = reference_greedy(model, src, steps)
    note(f"expected {expected.tolist()}")

    assert ours_torch.dtype == np.int32 and ours_jax.dtype == np.int32
    cut = assert_matches_reference(ours_torch, expected, ends, logits, "torch")
    cut_jax = assert_matches_reference(ours_jax, expected, ends, logits, "jax")
    assert max(cut, cut_jax) <= 1, "near-ties should be rare; many suggest a real logit mismatch"

    # k = 1 leaves one token with probability 1: the sampler must reproduce greedy exactly (the
    # JAX sampler's k = 1 case is checked on the handmade model, sparing a compile per example).
    k1 = top_k_sampling(steps, 1, data.draw(st.sampled_from([0.5, 2.0])))
    np.testing.assert_array_equal(torch_generate(model, src, k1, seed=0), ours_torch)


def test_default_max_new_tokens_is_max_len_minus_one():
    config = ModelConfig.from_preset("tiny", max_len=12, tgt_vocab_size=9)
    torch.manual_seed(0)
    model = torch_impl.Transformer(config)
    with torch.no_grad():
        model.output_proj.bias[EOS_ID] = -1e4  # never ends: runs the full default length
    assert torch_generate(model, np.array([[5, 6, 2]], dtype=np.int32)).shape == (1, 11)


# -- a handmade model whose every output is known ------------------------------------------------------
# Pre-norm, no encoder layers, one decoder layer whose self-attention and FFN output zero and whose
# cross-attention (q = k = 0, v = out = identity) adds the mean of the non-pad source embeddings.
# So the final hidden is y = E_tgt[previous token] + mean_s E_src[src_s], and the logits W y are:
#   logit[successor(previous)] = 1, logit[EOS] = 0.1 * chain_index(previous) + b(source token),
# every other logit 0. Chain: BOS -> 4 -> 5 -> ... -> 11 -> 4 (cycle); b by source token:
#   4: 0.75 (EOS after 3 tokens), 5: 0.55 (EOS after 5), 6: -100 (never), 7: +100 (EOS at once).
# Margins are >= 0.05, far above rounding; a source mask that let PAD in would halve b and change
# the stopping step.
HAND_TGT_VOCAB, HAND_SRC_VOCAB = 12, 10
CHAIN = [BOS_ID, 4, 5, 6, 7, 8, 9, 10, 11]
EOS_BONUS = {4: 0.75, 5: 0.55, 6: -100.0, 7: 100.0}


def handmade_model():
    V, D = HAND_TGT_VOCAB, HAND_TGT_VOCAB + 2  # dims 0..V-1 one-hot token, V chain index, V+1 bonus
    config = ModelConfig(
        src_vocab_size=HAND_SRC_VOCAB, tgt_vocab_size=V, d_model=D, num_heads=1, d_ff=4,
        num_encoder_layers=0, num_decoder_layers=1, dropout=0.0, attention_dropout=0.0,
        embedding_dropout=0.0, max_len=16, norm_placement="pre", positional="learned",
    )
    tensors = {s.torch_key: np.zeros(s.torch_shape, np.float32) for s in param_specs(config)}
    for key, tensor in tensors.items():
        if key.endswith("norm.weight"):
            tensor[:] = 1.0
    tgt = tensors["tgt_embed.weight"]
    tgt[np.arange(V), np.arange(V)] = 1.0
    out = tensors["output_proj.weight"]
    for index, token in enumerate(CHAIN):
        tgt[token, V] = 0.1 * index
        out[CHAIN[index + 1] if index + 1 < len(CHAIN) else CHAIN[1], token] = 1.0
    out[EOS_ID, V] = out[EOS_ID, V + 1] = 1.0
    for token, bonus in EOS_BONUS.items():
        tensors["src_embed.weight"][token, V + 1] = bonus
    for name in ("v_proj", "out_proj"):
        tensors[f"decoder.layers.0.cross_attn.{name}.weight"][:] = np.eye(D, dtype=np.float32)
    model = torch_impl.from_numpy(config, tensors).eval()
    return model, jax_impl.params_from_state_dict(config, tensors)


P = PAD_ID
HANDMADE_CASES = [  # (sources, N, expected); most share one shape so JAX compiles once for them
    # Per-row EOS, PAD after it, a padding row, a never-ending row: runs all N steps.
    ([[4, 4, P], [5, P, P], [6, 6, 6], [P, P, P]], 10,
     [[4, 5, 6, 2, P, P, P, P, P, P], [4, 5, 6, 7, 8, 2, P, P, P, P], [4, 5, 6, 7, 8, 9, 10, 11, 4, 5], [P] * 10]),
    # Every row ends: the batch stops at the last EOS, before N.
    ([[4, 4, P], [P, P, P], [5, 5, 5], [4, P, P]], 10,
     [[4, 5, 6, 2, P, P], [P] * 6, [4, 5, 6, 7, 8, 2], [4, 5, 6, 2, P, P]]),
    ([[7, P, P], [7, 7, 7], [P, P, P], [7, 7, P]], 10, [[2], [2], [P], [2]]),  # EOS at the first step
    ([[5, 5]], 2, [[4, 5]]),  # cut by max_new_tokens before EOS
    ([[P, P], [P, P]], 5, [[], []]),  # only padding rows: nothing to generate
]


@pytest.mark.parametrize("framework", ["torch", "jax"])
@pytest.mark.parametrize("decode_kind", ["greedy", "top_k=1", "beam=1"])
@pytest.mark.parametrize("src, steps, expected", HANDMADE_CASES)
def test_eos_stopping_and_padding_on_a_handmade_model(framework, decode_kind, src, steps, expected):
    model, params = handmade_model()
    src = np.array(src, dtype=np.int32)
    if decode_kind == "greedy":
        decode = GenerationConfig(max_new_tokens=steps)
    elif decode_kind == "top_k=1":  # k = 1 keeps only the argmax, whatever the temperature
        decode = top_k_sampling(steps, 1, 0.3)
    else:  # one beam stops at its first EOS: greedy, whatever the length penalty
        decode = GenerationConfig(max_new_tokens=steps, num_beams=1, length_penalty=2.0)
    if framework == "torch":
        out = torch_generate(model, torch.as_tensor(src), decode, seed=0)
    else:
        out = jax_generate(jax_impl.Transformer(model.config), params, src, decode, seed=0)
    expected = np.array(expected, dtype=np.int32).reshape(len(expected), -1)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, expected)


# -- top-k sampling ------------------------------------------------------------------------------------
def teacher_forced_logits(model, src: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """Reference logits (B, T_out, V) at every generated step, banned ids at -inf."""
    device = model_device(model)
    with torch.no_grad():
        model.eval()
        tgt = np.concatenate([np.full((src.shape[0], 1), BOS_ID), generated], axis=1)[:, :-1]
        logits = model(torch.as_tensor(src, dtype=torch.long, device=device),
                       torch.as_tensor(tgt, dtype=torch.long, device=device))
    return masked(logits, model.config).cpu().numpy()


def assert_samples_from_top_k(model, src, generated, k, steps, who):
    config = model.config
    logits = teacher_forced_logits(model, src, generated) if generated.shape[1] else None
    ends = []
    for row in range(src.shape[0]):
        row_ids = generated[row]
        if padding_rows(src[row : row + 1], config.pad_id)[0]:
            assert (row_ids == config.pad_id).all(), f"{who}: padding row {row} generated {row_ids}"
            continue
        end = len(trim_at_eos(row_ids)) + 1 if EOS_ID in row_ids else len(row_ids)
        ends.append(end)
        assert (row_ids[end:] == config.pad_id).all(), f"{who}: row {row} not PAD after EOS: {row_ids}"
        for t in range(end):
            step = logits[row, t]
            kth = np.sort(step)[-min(k, step.size)]
            token = int(row_ids[t])
            assert token not in banned_ids(config), f"{who}: row {row} step {t} sampled banned id {token}"
            # Within rounding of the k-th best logit counts as inside the top k (a boundary tie).
            assert step[token] >= kth - 2 * SLACK, (
                f"{who}: row {row} step {t} sampled {token} (logit {step[token]:.6g}) outside the "
                f"top {k} (k-th logit {kth:.6g})"
            )
    if ends:
        # The batch stops at its last EOS (a row without EOS ran all N steps, so its end is N).
        assert generated.shape[1] == max(ends) <= steps, f"{who}: wrong T_out {generated.shape[1]}"


@few(4)
@given(data=st.data())
def test_top_k_samples_come_from_the_top_k(data, parity_env):
    model, params = on_device(parity_env, *data.draw(tiny_models()))
    config = model.config
    jax_model = jax_impl.Transformer(config)
    src = data.draw(sources(config))
    steps = data.draw(st.integers(1, min(8, config.max_len - 1)))
    k = data.draw(st.integers(2, 5))
    temperature = data.draw(st.sampled_from([0.5, 1.0, 2.0]))
    seed = data.draw(st.integers(0, 2**31 - 1))
    sample = top_k_sampling(steps, k, temperature)

    torch_ids = torch_generate(model, src, sample, seed=seed)
    jax_ids = jax_generate(jax_model, params, src, sample, seed=seed)
    assert_samples_from_top_k(model, src, torch_ids, k, steps, "torch")
    assert_samples_from_top_k(model, src, jax_ids, k, steps, "jax")
    # The same seed gives the same samples.
    np.testing.assert_array_equal(torch_generate(model, src, sample, seed=seed), torch_ids)
    np.testing.assert_array_equal(jax_generate(jax_model, params, src, sample, seed=seed), jax_ids)


def test_top_k_sampling_follows_softmax_of_logits_over_temperature(parity_env):
    """The first sampled token's frequencies over N = 4000 draws match softmax(top-k logits / T).

    Membership in the top k (the test above) cannot see a temperature applied the wrong way or a
    wrong distribution; frequencies can. Each frequency must lie within 5 binomial standard errors
    of its probability (seeded, so the outcome is reproducible; a correct sampler fails it with
    probability ~1e-6 per token).
    """
    config = ModelConfig(src_vocab_size=12, tgt_vocab_size=12, d_model=8, num_heads=2, d_ff=8,
                         num_encoder_layers=1, num_decoder_layers=1, max_len=8)
    torch.manual_seed(0)
    model = torch_impl.Transformer(config).eval()
    with torch.no_grad():
        model.output_proj.weight.mul_(8.0)  # logits a few units apart: the temperature then matters
    params = jax_impl.params_from_state_dict(config, torch_impl.state_dict_numpy(model))
    model, params = on_device(parity_env, model, params)
    N, k, temperature = 4000, 4, 0.5
    src = np.tile(np.array([[3, 4, 5, 6]], dtype=np.int32), (N, 1))
    logits = teacher_forced_logits(model, src[:1], np.zeros((1, 1), dtype=np.int64))[0, 0]  # (V,) float64
    top = np.argsort(-logits, kind="stable")[:k]
    p = np.exp((logits[top] - logits[top].max()) / temperature)
    p /= p.sum()
    assert p.max() - p.min() > 0.2, f"probabilities too even to tell temperatures apart: {p}"
    sample = top_k_sampling(1, k, temperature)
    drawn = {
        "torch": torch_generate(model, src, sample, seed=1),
        "jax": jax_generate(jax_impl.Transformer(config), params, src, sample, seed=2),  # other draws: two samples
    }
    for who, ids in drawn.items():
        first = np.asarray(ids)[:, 0]
        assert np.isin(first, top).all(), f"{who}: sampled outside the top {k}"
        frequency = np.array([(first == token).mean() for token in top])
        allowed = 5 * np.sqrt(p * (1 - p) / N) + 1 / N
        assert np.all(np.abs(frequency - p) <= allowed), f"{who}: frequencies {frequency} vs softmax(logits / T) {p}"


# -- beam search ---------------------------------------------------------------------------------------
# Beam search compares sums of log-probabilities across beams, so a near-tie is any decision taken
# on two scores closer than their error bound; `reference_beam` restates the algorithm of
# shared/decoding/search.py per row in float64, flags the rows with such a decision as fragile, and the
# stacks must match it exactly on every other row.
def score_error(logits: np.ndarray) -> float:
    """How far one step can move a candidate's float32 score: its logit's error plus the log-sum-exp's."""
    return 2 * SLACK


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    top = logits.max(axis=-1, keepdims=True)
    return logits - (top + np.log(np.exp(logits - top).sum(axis=-1, keepdims=True)))


def close(a: float, b: float, error: float) -> bool:
    """Two scores either stack may order either way (equal -inf scores are exact ties: never close)."""
    return bool(np.isfinite(a) and np.isfinite(b) and abs(a - b) <= 2 * error)


def keep_best(entries: list, k: int) -> list:
    """The k best (score, tokens) entries, equal scores in list order (the stacks' tie rule)."""
    return sorted(entries, key=lambda entry: -entry[0])[:k]


def reference_beam(model, src: np.ndarray, steps: int, num_beams: int, length_penalty: float):
    """Beam search per row on full float64 forward passes -> (expected ids (B, T_out), fragile (B,))."""
    config, device, K = model.config, model_device(model), num_beams
    V = config.tgt_vocab_size
    rows, fragile = [], []
    with torch.no_grad():
        model.eval()
        for b in range(src.shape[0]):
            if padding_rows(src[b : b + 1], config.pad_id)[0]:
                rows.append(())
                fragile.append(False)
                continue
            src_t = torch.as_tensor(np.repeat(src[b : b + 1], K, axis=0), dtype=torch.long, device=device)
            alive = [((), 0.0)] + [((), -np.inf)] * (K - 1)  # (tokens after BOS, score)
            pool: list[tuple[float, tuple[int, ...]]] = []  # (normalised score, tokens), best first
            error, shaky, done = 0.0, False, False
            for t in range(steps):
                prefix = torch.tensor([[BOS_ID, *tokens] for tokens, _ in alive], device=device)  # (K, t+1)
                logits = masked(model(src_t, prefix)[:, -1, :], config).cpu().numpy()  # (K, V)
                error += score_error(logits)
                norm_error = error / min(1.0, steps**length_penalty)
                logp = log_softmax64(logits)
                ranked = keep_best([(score + logp[k, v], tokens + (v,)) for k, (tokens, score) in enumerate(alive)
                                    for v in range(V)], K * V)
                scores = [score for score, _ in ranked]
                offers = []
                for rank, (score, tokens) in enumerate(ranked):
                    if tokens[-1] != EOS_ID or not np.isfinite(score):
                        continue
                    # Surely among the first K ranks, surely not, or fragile.
                    others = scores[:rank] + scores[rank + 1 :]
                    surely_in = sum(s >= score - 2 * error for s in others) < K
                    surely_out = sum(s > score + 2 * error for s in others) >= K
                    shaky |= not (surely_in or surely_out)
                    if rank < K:
                        offers.append((normalized_score(score, t + 1, length_penalty), tokens))
                merged = keep_best(pool + offers, K + 1)
                shaky |= len(merged) > K and close(merged[K - 1][0], merged[K][0], norm_error)
                pool = merged[:K]
                lives = [(tokens, score) for score, tokens in ranked if tokens[-1] != EOS_ID]
                shaky |= close(lives[K - 1][1], lives[K][1], error)
                alive = lives[:K]
                if len(pool) == K:
                    bound = normalized_score(alive[0][1], t + 1, length_penalty)
                    shaky |= close(bound, pool[-1][0], norm_error)
                    if bound <= pool[-1][0]:
                        done = True
                        break
            if not done:  # unfinished beams compete, normalised at length N
                pool = keep_best(pool + [(normalized_score(score, steps, length_penalty), tokens)
                                         for tokens, score in alive if np.isfinite(score)], 2 * K)
            shaky |= len(pool) > 1 and close(pool[0][0], pool[1][0], norm_error)
            rows.append(pool[0][1])
            fragile.append(shaky)
    expected = np.full((src.shape[0], max(len(r) for r in rows)), config.pad_id, dtype=np.int32)
    for b, tokens in enumerate(rows):
        expected[b, : len(tokens)] = tokens
    return expected, np.array(fragile)


def widen(ids: np.ndarray, width: int, pad: int) -> np.ndarray:
    return np.pad(ids, ((0, 0), (0, width - ids.shape[1])), constant_values=pad)


def assert_beam_matches_reference(actual: np.ndarray, expected: np.ndarray, fragile: np.ndarray, pad: int, who: str):
    """Every row not fragile equals the reference; the whole array (T_out included) when none is."""
    assert actual.dtype == np.int32, who
    if not fragile.any():
        np.testing.assert_array_equal(actual, expected, err_msg=who)
        return
    width = max(actual.shape[1], expected.shape[1])
    solid = ~fragile
    np.testing.assert_array_equal(widen(actual, width, pad)[solid], widen(expected, width, pad)[solid], err_msg=who)


@few(4)
@given(data=st.data())
def test_beam_search_is_identical_in_torch_and_jax(data, parity_env):
    # Not D = 2: a norm over two features leaves every hidden state (almost) one of two points, so
    # different beams often get bitwise-equal scores, which each stack's rounding may then order
    # its own way (greedy compares only one step's logits, which never tie like that).
    model, params = on_device(parity_env, *data.draw(tiny_models(min_d_model=4)))
    config = model.config
    src = data.draw(sources(config))
    steps = data.draw(st.integers(1, min(8, config.max_len - 1)))
    num_beams = data.draw(st.integers(2, 3))
    length_penalty = data.draw(st.sampled_from([-0.5, 0.0, 0.6, 1.0, 2.0]))
    beam = GenerationConfig(max_new_tokens=steps, num_beams=num_beams, length_penalty=length_penalty)

    ours_torch = torch_generate(model, src, beam)
    assert model.training, "generate must restore the caller's train mode"
    ours_jax = jax_generate(jax_impl.Transformer(config), params, src, beam)
    expected, fragile = reference_beam(model, src, steps, num_beams, length_penalty)
    note(f"expected {expected.tolist()}, fragile rows {np.flatnonzero(fragile).tolist()}")
    assert_beam_matches_reference(ours_torch, expected, fragile, config.pad_id, "torch")
    assert_beam_matches_reference(ours_jax, expected, fragile, config.pad_id, "jax")
    assert fragile.sum() <= 1, "near-ties should be rare; many suggest a real score mismatch"

    # One beam is greedy, token for token, whatever the length penalty (the JAX K = 1 program is
    # checked on the handmade model, sparing a compile per example).
    one = GenerationConfig(max_new_tokens=steps, num_beams=1, length_penalty=length_penalty)
    greedy, ends, logits = reference_greedy(model, src, steps)
    assert assert_matches_reference(torch_generate(model, src, one), greedy, ends, logits, "torch K=1") <= 1


# Markov models: the handmade model's shape with the source ignored (cross-attention outputs zero),
# so the logits after token p are exactly transitions[p] (0 where unlisted; PAD, BOS banned). With
# X, Y = 4, 5 and the ten allowed tokens 2..11, each case below pins one rule of the algorithm.
X, Y = 4, 5


def peaked(logits: dict[int, float]) -> dict[int, float]:
    """These logits, and -100 for every other allowed token: only the listed ones are ever likely."""
    return {token: logits.get(token, -100.0) for token in range(EOS_ID, HAND_TGT_VOCAB)}


MARKOV_CASES = {  # name: (transitions, length penalty, expected output of two beams)
    # Greedy takes X (2.0 > 1.9), after which nothing is likely: X EOS scores -2.96. Y is followed
    # by a near-certain EOS: Y EOS scores -1.25, which two beams find.
    "beats_greedy": ({BOS_ID: {X: 2.0, Y: 1.9}, X: {EOS_ID: 0.5}, Y: {EOS_ID: 5.0}}, 1.0, [Y, EOS_ID]),
    # EOS at once scores -1.58 (length 1), X Y EOS -1.72 (length 3): the raw score keeps the short
    # one; normalised by length (-1.58 vs -0.57) the long one wins. Either way the pool is full
    # after step 1 (EOS and a poor UNK EOS) while the beam X Y still beats its worst: the search
    # must go on to find X Y EOS before it may stop.
    "raw_score": ({BOS_ID: {EOS_ID: 1.0, X: 0.9}, X: {Y: 6.0}, Y: {EOS_ID: 6.0}}, 0.0, [EOS_ID]),
    "normalised": ({BOS_ID: {EOS_ID: 1.0, X: 0.9}, X: {Y: 6.0}, Y: {EOS_ID: 6.0}}, 1.0, [X, Y, EOS_ID]),
    # PAD is banned before the softmax, so its large logit after X takes no probability from X EOS
    # (X EOS -2.01 beats Y EOS -3.31, the greedy choice); a softmax over PAD too would make it -6.65.
    "banned_outside_softmax": ({BOS_ID: {X: 1.0, Y: 1.2}, X: {PAD_ID: 8.0, EOS_ID: 3.0}, Y: {EOS_ID: 0.5}},
                               1.0, [X, EOS_ID]),
    # Exactly equal scores (one-hot hidden states make the logits exact): X and Y tie, then X EOS
    # and Y EOS tie in the pool; the lower index wins both times.
    "ties": ({BOS_ID: {X: 1.0, Y: 1.0, EOS_ID: -100.0}, X: {EOS_ID: 3.0}, Y: {EOS_ID: 3.0}}, 1.0, [X, EOS_ID]),
    # EOS out of reach (-100 after BOS, X and Y): the pool stays empty, and the best unfinished beam
    # comes back after N = 4 tokens.
    "cut_at_n": ({BOS_ID: {X: 1.0, EOS_ID: -100.0}, X: {Y: 1.0, EOS_ID: -100.0}, Y: {X: 1.0, EOS_ID: -100.0}},
                 1.0, [X, Y, X, Y]),
    # p(EOS | BOS) = 0.7, then X X X X is near-certain but never ends: after N = 4 steps the pool
    # holds EOS (-0.357 / 1) and the unfinished X X X X (-1.204 / 4 = -0.301) beats it. Normalised
    # at any other length (/ 3: -0.401) it would lose.
    "unfinished_wins": ({BOS_ID: peaked({EOS_ID: float(np.log(0.7 / 0.3)), X: 0.0}), X: peaked({X: 0.0})},
                        1.0, [X, X, X, X]),
}
MARKOV_STEPS = 4


def markov_model(transitions: dict[int, dict[int, float]]):
    config = handmade_model()[0].config
    V = config.tgt_vocab_size
    tensors = {s.torch_key: np.zeros(s.torch_shape, np.float32) for s in param_specs(config)}
    for key, tensor in tensors.items():
        if key.endswith("norm.weight"):
            tensor[:] = 1.0
    tensors["tgt_embed.weight"][np.arange(V), np.arange(V)] = 1.0  # hidden = one-hot(previous token)
    for previous, row in transitions.items():
        for token, logit in row.items():
            tensors["output_proj.weight"][token, previous] = logit
    return torch_impl.from_numpy(config, tensors).eval(), jax_impl.params_from_state_dict(config, tensors)


def beam_generate(framework: str, model, params, src: np.ndarray, decode: GenerationConfig) -> np.ndarray:
    if framework == "torch":
        return torch_generate(model, src, decode)
    return jax_generate(jax_impl.Transformer(model.config), params, src, decode)


@pytest.mark.parametrize("framework", ["torch", "jax"])
@pytest.mark.parametrize("case", MARKOV_CASES)
def test_beam_search_rules_on_markov_models(framework, case):
    transitions, length_penalty, expected = MARKOV_CASES[case]
    model, params = markov_model(transitions)
    src = np.array([[X, X], [P, P]], dtype=np.int32)  # the second row pads the batch: all PAD out
    decode = GenerationConfig(max_new_tokens=MARKOV_STEPS, num_beams=2, length_penalty=length_penalty)
    out = beam_generate(framework, model, params, src, decode)
    np.testing.assert_array_equal(out, np.array([expected, [P] * len(expected)], dtype=np.int32))


def normalised_scores(model, src: np.ndarray, generated: np.ndarray, length_penalty: float) -> list[float]:
    """Each row's score / length ** lp, from teacher-forced float64 log-probabilities."""
    logp = log_softmax64(teacher_forced_logits(model, src, generated))  # (B, T_out, V)
    scores = []
    for row, ids in enumerate(generated):
        length = len(trim_at_eos(ids)) + int(EOS_ID in ids)
        scores.append(normalized_score(sum(logp[row, t, ids[t]] for t in range(length)), length, length_penalty))
    return scores


@pytest.mark.parametrize("framework", ["torch", "jax"])
@pytest.mark.parametrize("case", ["beats_greedy", "normalised", "banned_outside_softmax"])
def test_beam_search_beats_greedy_where_greedy_is_short_sighted(framework, case):
    transitions, length_penalty, _ = MARKOV_CASES[case]
    model, params = markov_model(transitions)
    src = np.array([[X, X], [P, P]], dtype=np.int32)
    greedy = beam_generate(framework, model, params, src, GenerationConfig(max_new_tokens=MARKOV_STEPS))
    beam = beam_generate(framework, model, params, src, GenerationConfig(
        max_new_tokens=MARKOV_STEPS, num_beams=2, length_penalty=length_penalty))
    assert not np.array_equal(greedy[:1], beam[:1]), "a case where beam search matters"
    greedy_score, beam_score = (normalised_scores(model, src[:1], ids[:1], length_penalty)[0] for ids in (greedy, beam))
    assert beam_score > greedy_score + 0.1, (beam_score, greedy_score)


def test_beam_settings_are_validated():
    with pytest.raises(ValueError) as error:
        GenerationConfig(num_beams=0, length_penalty=float("nan"))
    message = str(error.value)
    assert "num_beams must be an integer in [1, 64], got 0" in message and "length_penalty must be" in message
    for bad in (True, 2.0, "3", -1, 65):
        with pytest.raises(ValueError, match="num_beams"):
            GenerationConfig(num_beams=bad)
    for bad in (float("inf"), 10.5, -11, True, "1"):
        with pytest.raises(ValueError, match="length_penalty"):
            GenerationConfig(length_penalty=bad)
    assert GenerationConfig(num_beams=1, length_penalty=-10).length_penalty == -10
    np.testing.assert_array_equal(length_normalizers(3, 2.0), np.array([1, 1, 4, 9], np.float32))
    assert normalized_score(-6.0, 3, 1.0) == -2.0 and normalized_score(-6.0, 4, 0.0) == -6.0
    np.testing.assert_array_equal(trim_padding_columns(np.array([[4, 2, 0, 0], [0, 0, 0, 0]]), 0), [[4, 2], [0, 0]])
    assert trim_padding_columns(np.zeros((2, 3), np.int32), 0).shape == (2, 0)


# -- shared pieces -------------------------------------------------------------------------------------
def test_generation_config_lists_every_problem():
    with pytest.raises(ValueError) as error:
        GenerationConfig(max_new_tokens=0, do_sample=True, top_k=-1, temperature=0.0, num_beams=0, length_penalty=None)
    message = str(error.value)
    for fragment in ("max_new_tokens", "top_k must", "temperature", "num_beams", "length_penalty"):
        assert fragment in message
    config = ModelConfig.from_preset("tiny", max_len=8)
    with pytest.raises(ValueError, match="exceeds the 7 positions"):  # an encoder-decoder: BOS takes one
        torch_generate(torch_impl.Transformer(config), np.array([[5, 6, 2]]), GenerationConfig(max_new_tokens=8))
    # top_k beyond the vocabulary keeps every token (as HF generate): the sampler then matches plain sampling.
    logits, u = np.random.default_rng(0).normal(size=(4, 67)).astype(np.float32), np.linspace(0.05, 0.95, 4)
    np.testing.assert_array_equal(choose_next(logits, u, GenerationConfig(do_sample=True, top_k=1000)),
                                  choose_next(logits, u, GenerationConfig(do_sample=True)))


def test_bad_source_ids_are_reported_together():
    model, params = handmade_model()
    bad = np.array([[3.5, 99.0]])
    for call in (lambda: torch_generate(model, bad), lambda: jax_generate(jax_impl.Transformer(model.config), params, bad)):
        with pytest.raises(ValueError, match="integers"):
            call()
    with pytest.raises(ValueError, match=r"\[0, 10\), found values in \[-1, 99\]"):
        torch_generate(model, np.array([[-1, 99]]))
    with pytest.raises(ValueError, match="2-D"):
        torch_generate(model, np.array([4, 5]))


def test_batching_helpers():
    assert trim_at_eos([5, 6, EOS_ID, 7, PAD_ID]) == [5, 6]
    assert trim_at_eos(np.array([5, 6])) == [5, 6]
    lengths = [5, 1, 3, 1, 9]
    buckets = length_buckets(lengths, 2)
    assert buckets == [[1, 3], [2, 0], [4]]
    assert sorted(i for bucket in buckets for i in bucket) == list(range(len(lengths)))
    padded = pad_sources([[4, 5, 2], [6, 2]], PAD_ID, length_multiple=4, max_len=16, rows=4)
    np.testing.assert_array_equal(padded, [[4, 5, 2, 0], [6, 2, 0, 0], [0] * 4, [0] * 4])
    assert padded.dtype == np.int32
    np.testing.assert_array_equal(padding_rows(padded, PAD_ID), [False, False, True, True])
    assert pad_sources([[1] * 7], PAD_ID, length_multiple=8, max_len=7).shape == (1, 7)


# -- the translate command -----------------------------------------------------------------------------
TOY_PAIRS = [
    ("the cat sits on the mat", "le chat est sur le tapis"),
    ("the dog runs in the park", "le chien court dans le parc"),
    ("a cat and a dog", "un chat et un chien"),
    ("the bird sings", "l oiseau chante"),
    ("a dog sits", "un chien est assis"),
    ("the cat runs", "le chat court"),
]
SENTENCES = ["the cat sits", "a dog and a bird in the park", "the mat", ""]


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    """A tiny random model + a tokenizer trained on toy pairs, saved as one checkpoint directory."""
    from shared.data.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(TOY_PAIRS, vocab_size=48, min_frequency=1)
    config = ModelConfig.from_preset(
        "tiny", src_vocab_size=tokenizer.src_vocab_size, tgt_vocab_size=tokenizer.tgt_vocab_size,
        d_model=16, num_heads=2, d_ff=24, max_len=24,
    )
    torch.manual_seed(1234)
    model = torch_impl.Transformer(config)
    with torch.no_grad():
        # Logits of order 30 make top-2 gaps dwarf the ~1e-5 rounding between batch shapes and
        # stacks, so "alone vs batched" and "torch vs jax" may be compared token for token.
        model.output_proj.weight.mul_(50.0)
        model.output_proj.bias[EOS_ID] += 20.0  # some translations end before max_new_tokens
    directory = tmp_path_factory.mktemp("checkpoint")
    torch_impl.save(model, directory)
    tokenizer.save(directory)
    return directory


def translate(capsys, *argv: str) -> tuple[int, list[str], str]:
    code = cli_main(["translate", *argv])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def test_translate_batches_restore_order_and_match_across_frameworks(checkpoint_dir, capsys, tmp_path, monkeypatch):
    common = ["--checkpoint", str(checkpoint_dir), "--max-new-tokens", "8"]
    code, batched, _ = translate(capsys, *common, "--batch-size", "3", *SENTENCES)
    assert code == 0 and len(batched) == len(SENTENCES)
    alone = [translate(capsys, *common, sentence)[1] for sentence in SENTENCES]
    assert batched == [lines[0] for lines in alone], "batching must not change or reorder translations"
    assert len(set(batched)) > 1, "a model that says the same thing for every input proves little"

    assert translate(capsys, *common, "--framework", "jax", *SENTENCES)[1] == batched

    source_file = tmp_path / "sentences.txt"
    source_file.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    assert translate(capsys, *common, "--input", str(source_file))[1] == batched
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(SENTENCES) + "\n"))
    assert translate(capsys, *common)[1] == batched

    k1 = translate(capsys, *common, "--strategy", "top_k", "--k", "1", "--seed", "3", *SENTENCES)[1]
    assert k1 == batched


def test_translate_with_beam_search(checkpoint_dir, capsys):
    common = ["--checkpoint", str(checkpoint_dir), "--max-new-tokens", "8"]
    greedy = translate(capsys, *common, *SENTENCES)[1]
    code, beam, _ = translate(capsys, *common, "--beam", "2", "--batch-size", "3", *SENTENCES)
    assert code == 0 and len(beam) == len(SENTENCES)
    assert beam == [translate(capsys, *common, "--beam", "2", sentence)[1][0] for sentence in SENTENCES]
    assert translate(capsys, *common, "--beam", "2", "--framework", "jax", *SENTENCES)[1] == beam
    assert translate(capsys, *common, "--beam", "2", "--no-cache", *SENTENCES)[1] == beam  # the KV cache changes nothing
    assert translate(capsys, *common, "--strategy", "beam", *SENTENCES)[1] == greedy  # --beam 1: greedy

    code, _, err = translate(capsys, *common, "--beam", "0", "cat")
    assert code == 2 and "argument --beam: must be a positive integer, got '0'" in err
    code, _, err = translate(capsys, *common, "--beam", "2", "--strategy", "top_k", "cat")
    assert code == 2 and "cannot be combined with --strategy top_k" in err


def test_translate_reports_clear_errors(checkpoint_dir, capsys, tmp_path):
    bare = tmp_path / "no_tokenizer"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((checkpoint_dir / name).read_bytes())
    code, _, err = translate(capsys, "--checkpoint", str(bare), "hello")
    assert code == 2 and "has no tokenizer (tokenizer.json)" in err

    code, _, err = translate(capsys, "--checkpoint", str(checkpoint_dir), " ".join(["cat"] * 40))
    assert code == 2 and "longer than the model's max_len 24" in err and "line 1" in err

    code, _, err = translate(capsys, "--checkpoint", str(checkpoint_dir), "--max-new-tokens", "99", "cat")
    assert code == 2 and "max_new_tokens 99 exceeds" in err

    code, _, err = translate(capsys, "--checkpoint", str(checkpoint_dir), "--adapter", str(tmp_path / "nope"), "cat")
    assert code == 2 and "does not exist" in err


def test_translate_with_a_lora_adapter_matches_across_frameworks(checkpoint_dir, capsys, tmp_path):
    lora = pytest.importorskip("torch_impl.lora")
    from shared.checkpoints.lora_config import LoRAConfig

    peft_model = lora.apply_lora(torch_impl.load(checkpoint_dir), LoRAConfig(r=4, alpha=8, dropout=0.0))
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero (a no-op adapter); make it matter
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    adapter_dir = lora.save_adapter(peft_model, tmp_path / "adapter")

    common = ["--checkpoint", str(checkpoint_dir), "--max-new-tokens", "8", *SENTENCES]
    base = translate(capsys, *common)[1]
    adapted = translate(capsys, *common, "--adapter", str(adapter_dir))[1]
    assert adapted != base, "this adapter changes the model; the translations should show it"
    assert translate(capsys, *common, "--adapter", str(adapter_dir), "--framework", "jax")[1] == adapted
