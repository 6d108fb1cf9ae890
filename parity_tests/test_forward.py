"""Forward parity: logits and every module's output agree, with weights from either stack's init."""

from __future__ import annotations

from functools import partial

import jax
import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import jax_impl
from torch_impl.numpy_bridge import to_numpy
from parity_tests import strategies as pst
from parity_tests.helpers import (
    ParityEnv,
    assert_all_close,
    assert_finite,
    jax_forward_records,
    jax_initial_params,
    reference_forward_records,
    torch_forward_records,
    torch_initial_tensors,
    torch_model,
)

TORCH_ONLY_RECORDS = {"pos_encoding"}  # the sinusoid is a torch module but a constant in Flax


def check_forward(env: ParityEnv, case: pst.ParityCase, torch_tensors: dict, jax_params: dict, direction: str) -> None:
    """Both stacks record the same modules, each output within tolerance and finite."""
    config, batch = case.config, case.batch
    model = torch_model(config, torch_tensors, env)
    torch_logits, torch_records = torch_forward_records(model, batch.src, batch.tgt_in, env)
    jax_logits, jax_records = jax_forward_records(config, jax_params, batch.src, batch.tgt_in, env)
    (torch_logits64, torch_records64), (jax_logits64, jax_records64) = reference_forward_records(
        config, torch_tensors, batch.src, batch.tgt_in, env
    )

    assert set(torch_records) - TORCH_ONLY_RECORDS == set(jax_records), (
        f"module sets differ: torch only {sorted(set(torch_records) - set(jax_records))}, "
        f"jax only {sorted(set(jax_records) - set(torch_records))}"
    )
    quads = {"logits (returned)": (torch_logits, jax_logits, torch_logits64, jax_logits64)}
    for name, jax_outputs in jax_records.items():
        torch_outputs = torch_records[name]
        assert len(torch_outputs) == len(jax_outputs), f"{name}: called {len(torch_outputs)}x in torch, {len(jax_outputs)}x in jax"
        for call, quad in enumerate(zip(torch_outputs, jax_outputs, torch_records64[name], jax_records64[name], strict=True)):
            quads[f"{name}[{call}]"] = quad
    context = f"{direction}, {env.device}/{env.precision}, {config}, src={batch.src.tolist()}, tgt={batch.tgt_in.tolist()}"
    assert_finite({f"torch {n}": q[0] for n, q in quads.items()} | {f"jax {n}": q[1] for n, q in quads.items()}, context)
    assert_all_close(f"forward ({direction})", quads, env.precision, context)


# Half the profile's examples: each now runs both stacks twice (float64 references), and every
# option value is run explicitly below (test_forward_for_every_option_value) whatever is drawn.
@settings(max_examples=max(3, settings.default.max_examples // 2))
@given(case=pst.parity_cases())
def test_forward_and_every_module_agree(parity_env: ParityEnv, case: pst.ParityCase) -> None:
    """Weights initialised in torch -> jax, and initialised in jax (init_params) -> torch."""
    config = case.config
    tensors = parity_env.cast(torch_initial_tensors(config, case.seed))
    params = parity_env.jax_put(jax_impl.params_from_state_dict(config, tensors))
    check_forward(parity_env, case, tensors, params, "torch init -> jax")

    params = jax_initial_params(config, case.seed, parity_env)
    tensors = jax_impl.state_dict_from_params(config, params)
    check_forward(parity_env, case, tensors, params, "jax init -> torch")


# -- every option value, and real sizes ----------------------------------------------------------------
def test_covering_configs_take_every_value_of_every_option() -> None:
    """The explicit configs below cover each option value, so no profile can miss one."""
    from dataclasses import fields

    from shared.config.model_config import ModelConfig

    configs = pst.covering_configs()
    for name, values in pst.OPTION_VALUES.items():
        assert {getattr(c, name) for c in configs} == set(values), name
    assert any(c.norm_kind == "layernorm" and c.norm_eps >= 1e-3 for c in configs)
    enum_fields = {"positional", "tie_embeddings", "norm_placement", "norm_kind", "activation"}
    assert enum_fields <= set(pst.OPTION_VALUES) and {f.name for f in fields(ModelConfig)} >= set(pst.OPTION_VALUES)


@pytest.mark.parametrize("config", pst.covering_configs(), ids=lambda c: f"{c.positional}-{c.tie_embeddings}-{c.norm_kind}-{c.activation}")
def test_forward_for_every_option_value(parity_env: ParityEnv, config) -> None:
    rng = np.random.default_rng(1)
    src, tgt = rng.integers(0, 13, (2, 9)), rng.integers(0, 13, (2, 7))
    case = pst.ParityCase(config, seed=1, batch=pst.Batch(src, tgt, tgt))
    tensors = parity_env.cast(torch_initial_tensors(config, case.seed))
    check_forward(parity_env, case, tensors, parity_env.jax_put(jax_impl.params_from_state_dict(config, tensors)), "torch init -> jax")


def real_size_tensors(case: pst.RealSizeCase) -> dict:
    """float32 weights of a real-size case from the init it names (default scales: no noise)."""
    import torch_impl
    from parity_tests.helpers import _jitted_init_params
    from shared.checkpoints.init import initial_tensors

    if case.init == "torch default":
        torch.manual_seed(case.seed)
        return torch_impl.state_dict_numpy(torch_impl.Transformer(case.config))
    if case.init == "jax default":
        params = _jitted_init_params(case.config, jax.random.key(case.seed, impl="rbg"))
        return jax_impl.state_dict_from_params(case.config, params)
    if case.init == "shared":
        return initial_tensors(case.config, case.seed)
    return torch_initial_tensors(case.config, case.seed)


@settings(max_examples=pst.real_size_limits().examples)
@given(case=pst.real_size_cases())
@example(case=pst.large_default_init_case())
def test_forward_at_real_sizes(parity_env: ParityEnv, case: pst.RealSizeCase) -> None:
    """Real widths, depths, vocabularies, lengths and init scales (logits up to ~100): every module within its bound."""
    tensors = parity_env.cast(real_size_tensors(case))
    params = parity_env.jax_put(jax_impl.params_from_state_dict(case.config, tensors))
    check_forward(parity_env, pst.ParityCase(case.config, case.seed, case.batch), tensors, params, f"{case.init} init")


# -- dropout: off unless asked for ------------------------------------------------------------------
@partial(jax.jit, static_argnums=0)
def _jitted_apply(model, params, src, tgt, rng):
    return model.apply({"params": params}, src, tgt, rngs=None if rng is None else {"dropout": rng})


def _dropout_apply(config, params, src, tgt, rng=None) -> np.ndarray:
    """Logits (B, T, V) of a plain apply, with a dropout rng when one is given."""
    return np.asarray(_jitted_apply(jax_impl.Transformer(config), params, src, tgt, rng))


@settings(max_examples=max(2, settings.default.max_examples // 4))
@given(case=pst.parity_cases(max_layers=1, dropout=st.sampled_from((0.2, 0.5))))
def test_dropout_is_off_by_default_and_on_with_an_rng(parity_env: ParityEnv, case: pst.ParityCase) -> None:
    """Flax apply without a dropout RNG and torch eval() are deterministic; training mode is not."""
    config, batch, env = case.config, case.batch, parity_env
    tensors = env.cast(torch_initial_tensors(config, case.seed))
    params = env.jax_put(jax_impl.params_from_state_dict(config, tensors))
    src, tgt = env.jax_put((batch.src, batch.tgt_in))

    first, second = _dropout_apply(config, params, src, tgt), _dropout_apply(config, params, src, tgt)
    assert np.array_equal(first, second), "Flax apply without a dropout rng is not deterministic"
    key = jax.device_put(jax.random.key(case.seed), env.jax_device)
    dropped = _dropout_apply(config, params, src, tgt, key)
    assert not np.array_equal(first, dropped), "a dropout rng with dropout > 0 changed nothing"
    assert np.array_equal(dropped, _dropout_apply(config, params, src, tgt, key)), "same dropout rng, different output"

    model = torch_model(config, tensors, env)
    assert not model.training
    with torch.no_grad():
        eval_outputs = [model(env.torch_ids(batch.src), env.torch_ids(batch.tgt_in)) for _ in range(2)]
        assert torch.equal(*eval_outputs), "torch eval() forward is not deterministic"
        torch.manual_seed(case.seed)
        train_output = model.train()(env.torch_ids(batch.src), env.torch_ids(batch.tgt_in))
    assert not torch.equal(train_output, eval_outputs[0]), "torch train() with dropout > 0 changed nothing"
    # and the deterministic outputs of the two stacks agree (dropout rates must not leak into eval)
    (torch_logits64, _), (jax_logits64, _) = reference_forward_records(config, tensors, batch.src, batch.tgt_in, env)
    quad = (to_numpy(eval_outputs[0]), first, torch_logits64, jax_logits64)
    assert_all_close("forward (dropout config, eval)", {"logits": quad}, env.precision, str(config))


def test_torch_load_returns_eval_mode(tmp_path, parity_env: ParityEnv) -> None:
    import torch_impl
    from shared.config.model_config import ModelConfig

    config = ModelConfig.from_preset("tiny", dropout=0.3, num_encoder_layers=1, num_decoder_layers=1)
    torch_impl.save(torch_impl.Transformer(config), tmp_path)
    assert not torch_impl.load(tmp_path, device=parity_env.torch_device).training
