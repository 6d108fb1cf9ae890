"""Gradient parity: d(masked cross-entropy)/d(every parameter) agrees between autograd and jax.grad."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jax_impl
from parity_tests import strategies as pst
from parity_tests.helpers import (
    ParityEnv,
    assert_all_close,
    assert_finite,
    jax_initial_params,
    jax_loss_and_grads,
    reference_loss_and_grads,
    torch_initial_tensors,
    torch_loss_and_grads,
    torch_model,
)
from shared.checkpoints.weight_table import param_specs


def unused_embedding_rows(config, batch: pst.Batch) -> dict[str, np.ndarray]:
    """{state-dict key: row indices} of embedding rows the loss cannot reach (their gradient is 0).

    A row is reached by a lookup of its id, or by the output projection when the table is tied to
    it; learned position rows >= max(S, T) are never looked up.
    """
    rows = {}

    def unused(vocab: int, *id_arrays: np.ndarray) -> np.ndarray:
        return np.setdiff1d(np.arange(vocab), np.concatenate([a.ravel() for a in id_arrays]))

    if config.tie_embeddings != "all":
        rows["src_embed.weight"] = unused(config.src_vocab_size, batch.src)
    if config.tie_embeddings == "none":
        rows["tgt_embed.weight"] = unused(config.tgt_vocab_size, batch.tgt_in)
    if config.positional == "learned":
        rows["pos_embed.weight"] = np.arange(max(batch.src.shape[1], batch.tgt_in.shape[1]), config.max_len)
    return rows


# A third of the profile's examples (was two thirds): each now also runs in float64, and every
# option value is run explicitly (test_gradients_for_every_option_value).
@settings(max_examples=max(3, settings.default.max_examples // 3))
@given(case=pst.parity_cases(), init_in=st.sampled_from(("torch", "jax")))
def test_gradients_of_every_parameter_agree(parity_env: ParityEnv, case: pst.ParityCase, init_in: str) -> None:
    """Same loss, and the same gradient for every parameter in param_specs (compared in torch layout).

    The weights come from torch's init or from jax_impl.init_params (drawn per example: the
    gradient programs are the costly part, and the converter is covered both ways in test_forward).
    """
    check_gradients(parity_env, case, init_in)


@pytest.mark.parametrize("config", pst.covering_configs(), ids=lambda c: f"{c.positional}-{c.tie_embeddings}-{c.norm_kind}-{c.activation}")
def test_gradients_for_every_option_value(parity_env: ParityEnv, config) -> None:
    """Every value of every option (pst.covering_configs), whatever the profile draws."""
    rng = np.random.default_rng(0)
    src, tgt_in, tgt_out = (rng.integers(0, 13, (2, 7)) for _ in range(3))
    check_gradients(parity_env, pst.ParityCase(config, seed=0, batch=pst.Batch(src, tgt_in, tgt_out)), "torch")


def check_gradients(env: ParityEnv, case: pst.ParityCase, init_in: str) -> None:
    """Loss and every parameter's gradient agree under the scale-aware bound; unused rows get none."""
    config, batch = case.config, case.batch
    if init_in == "torch":
        tensors = env.cast(torch_initial_tensors(config, case.seed))
        params = env.jax_put(jax_impl.params_from_state_dict(config, tensors))
    else:
        params = jax_initial_params(config, case.seed, env)
        tensors = jax_impl.state_dict_from_params(config, params)
    model = torch_model(config, tensors, env)

    torch_loss, torch_grads = torch_loss_and_grads(model, batch.src, batch.tgt_in, batch.tgt_out, env)
    jax_loss, jax_grads = jax_loss_and_grads(config, params, batch.src, batch.tgt_in, batch.tgt_out, env)
    (torch_loss64, torch_grads64), (jax_loss64, jax_grads64) = reference_loss_and_grads(
        config, tensors, batch.src, batch.tgt_in, batch.tgt_out, env
    )

    expected_keys = {spec.torch_key for spec in param_specs(config)}
    assert set(torch_grads) == expected_keys, f"torch parameters != param_specs: {set(torch_grads) ^ expected_keys}"
    assert set(jax_grads) == expected_keys
    context = f"{init_in} init, {env.device}/{env.precision}, {config}, batch={batch}"
    assert_finite({f"torch {k}": v for k, v in torch_grads.items()} | {f"jax {k}": v for k, v in jax_grads.items()}, context)
    assert_all_close("loss", {"loss": (torch_loss, jax_loss, torch_loss64, jax_loss64)}, env.precision, context)
    quads = {key: (torch_grads[key], jax_grads[key], torch_grads64[key], jax_grads64[key]) for key in sorted(expected_keys)}
    assert_all_close(f"gradients ({init_in} init)", quads, env.precision, context)

    for key, rows in unused_embedding_rows(config, batch).items():
        for stack, grads in (("torch", torch_grads), ("jax", jax_grads)):
            touched = rows[np.any(np.asarray(grads[key][rows], np.float64) != 0.0, axis=-1)]
            assert touched.size == 0, f"{stack}: rows {touched.tolist()} of {key} are never used but got a gradient ({context})"
