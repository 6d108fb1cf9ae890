"""Decoding: torch and jax generate the same tokens, stop per row at EOS, sample only from the top k.

Axis letters: B batch, S source length, N max new tokens, V target vocabulary.

Near-ties. Greedy decoding is an argmax, and the two stacks' logits differ by float32 rounding
(bounded by the cpu/float32 row of shared.tolerances). When the best two logits of a step are
closer than twice that bound, either stack may legitimately pick either token, and the rest of
that row may then diverge. So each row is compared exactly up to its first such near-tie step
(judged on an independent reference's logits), and completely when it has none; the test also
asserts that near-ties stay rare (at most one row cut per example: with logits of order one and a
bound of ~4e-5, a step is a near-tie with probability ~1e-4).
"""

from __future__ import annotations

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
from jax_impl.decoding import generate as jax_generate
from shared.config import ModelConfig
from shared.data.special_tokens import BOS_ID, EOS_ID, PAD_ID
from shared.decoding import (
    DecodeConfig,
    banned_ids,
    length_buckets,
    pad_sources,
    padding_rows,
    trim_at_eos,
)
from shared.tolerances import tolerance
from shared.weight_table import param_specs
from torch_impl.decoding import generate as torch_generate
from twinformer.cli import main as cli_main

jax.config.update("jax_default_matmul_precision", "highest")  # parity compares full float32

TOL = tolerance("cpu", "float32")  # the float32 bound; `on_device` swaps in the run's own row
NIGHTLY = os.environ.get("HYPOTHESIS_PROFILE") == "nightly"
# Each example compiles a fresh jitted decoder (new config, new shapes): keep the count small.
def few(ci_examples: int) -> settings:
    return settings(max_examples=8 * ci_examples if NIGHTLY else ci_examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- random tiny models ----------------------------------------------------------------------------
@st.composite
def tiny_models(draw):
    """A random tiny torch model (eval mode) and its converted Flax params."""
    heads = draw(st.sampled_from([1, 2, 4]))
    tie = draw(st.sampled_from(["none", "tgt_out", "all"]))
    src_vocab = draw(st.integers(8, 24))
    config = ModelConfig(
        src_vocab_size=src_vocab,
        tgt_vocab_size=src_vocab if tie == "all" else draw(st.integers(8, 24)),
        d_model=heads * draw(st.sampled_from([2, 4, 8])),
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
    global TOL
    if parity_env.precision != "float32":
        pytest.skip("token-for-token decoding checks need float32 logits; under tf32/bfloat16 near-ties "
                    "are too frequent for identical tokens to be expected")
    TOL = parity_env.tol
    return model.to(parity_env.torch_device), parity_env.jax_put(params)


def near_tie(logits: np.ndarray) -> np.ndarray:
    """(..., V) -> (...) True where the top-2 gap is within twice the float32 parity bound."""
    top2 = np.sort(logits, axis=-1)[..., -2:]
    bound = TOL.atol + TOL.rtol * np.abs(top2[..., 1])
    return top2[..., 1] - top2[..., 0] <= 2 * bound


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
    decode = DecodeConfig(max_new_tokens=steps)

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
    k1 = DecodeConfig(max_new_tokens=steps, strategy="top_k", k=1, temperature=data.draw(st.sampled_from([0.5, 2.0])))
    generator = torch.Generator(model_device(model)).manual_seed(0)
    np.testing.assert_array_equal(torch_generate(model, src, k1, generator), ours_torch)


def test_default_max_new_tokens_is_max_len_minus_one():
    config = ModelConfig.from_preset("tiny", max_len=12, tgt_vocab_size=9)
    assert DecodeConfig().steps(config) == 11
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
@pytest.mark.parametrize("decode_kind", ["greedy", "top_k=1"])
@pytest.mark.parametrize("src, steps, expected", HANDMADE_CASES)
def test_eos_stopping_and_padding_on_a_handmade_model(framework, decode_kind, src, steps, expected):
    model, params = handmade_model()
    src = np.array(src, dtype=np.int32)
    if decode_kind == "greedy":
        decode = DecodeConfig(max_new_tokens=steps)
    else:  # k = 1 keeps only the argmax, whatever the temperature
        decode = DecodeConfig(max_new_tokens=steps, strategy="top_k", k=1, temperature=0.3)
    if framework == "torch":
        out = torch_generate(model, torch.as_tensor(src), decode, torch.Generator().manual_seed(0))
    else:
        out = jax_generate(jax_impl.Transformer(model.config), params, src, decode, jax.random.key(0))
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
            assert step[token] >= kth - 2 * (TOL.atol + TOL.rtol * abs(kth)), (
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
    sample = DecodeConfig(max_new_tokens=steps, strategy="top_k", k=k, temperature=temperature)

    torch_ids = torch_generate(model, src, sample, torch.Generator(model_device(model)).manual_seed(seed))
    jax_ids = jax_generate(jax_model, params, src, sample, jax.random.key(seed))
    assert_samples_from_top_k(model, src, torch_ids, k, steps, "torch")
    assert_samples_from_top_k(model, src, jax_ids, k, steps, "jax")
    # The same seed gives the same samples.
    again = torch.Generator(model_device(model)).manual_seed(seed)
    np.testing.assert_array_equal(torch_generate(model, src, sample, again), torch_ids)
    np.testing.assert_array_equal(jax_generate(jax_model, params, src, sample, jax.random.key(seed)), jax_ids)


# -- shared pieces -------------------------------------------------------------------------------------
def test_decode_config_lists_every_problem():
    with pytest.raises(ValueError) as error:
        DecodeConfig(max_new_tokens=0, strategy="beam", k=0, temperature=0.0)
    message = str(error.value)
    for fragment in ("max_new_tokens", "strategy 'beam'", "k must", "temperature"):
        assert fragment in message
    config = ModelConfig.from_preset("tiny", max_len=8)
    with pytest.raises(ValueError, match="exceeds the model's max_len - 1 = 7"):
        DecodeConfig(max_new_tokens=8).steps(config)
    assert DecodeConfig(k=1000).top_k(67) == 67


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
    from shared.lora_config import LoRAConfig

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
