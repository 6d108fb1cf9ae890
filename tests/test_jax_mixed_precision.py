"""bf16-mixed training in jax_impl for the T5 and causal-LM families (once refused with an error):
the step runs, its matmuls compute in bfloat16 (bf16 logits), params and optimizer stay float32,
the loss is finite and the weights move."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_impl
from jax_impl.training import StepSpec, step_functions
from parity_tests.test_jax_generate import FAMILIES, peaked_tensors
from shared.training.train_config import TrainConfig
from shared.families import family_of


@pytest.mark.parametrize("name", ["t5", "gpt2", "llama"])
def test_a_bf16_mixed_training_step_runs(name):
    config = dataclasses.replace(FAMILIES[name], dropout=0.1, attention_dropout=0.1)  # the math path, dropout on
    spec = StepSpec.of(TrainConfig(precision="bf16-mixed"))
    tx, train_step, _ = step_functions(config, spec, total_steps=10)
    params = jax_impl.params_from_state_dict(config, peaked_tensors(config, 0, 1.0))
    rng = np.random.default_rng(0)
    tgt = rng.integers(3, config.tgt_vocab_size, (2, 6)).astype(np.int32)
    batch = {"src": jnp.asarray(rng.integers(3, config.src_vocab_size, (2, 5)), jnp.int32),
             "tgt_in": jnp.asarray(tgt), "tgt_out": jnp.asarray(np.roll(tgt, -1, axis=1))}
    mixed = jax_impl.build_model(config, dtype="bfloat16")
    inputs = (batch["tgt_in"],) if family_of(config).decoder_only else (batch["src"], batch["tgt_in"])
    assert jax.eval_shape(lambda p: mixed.apply({"params": p}, *inputs), params).dtype == jnp.bfloat16, "bf16 matmuls"
    new_params, opt_state, metrics = jax.jit(train_step)(params, tx.init(params), batch, jax.random.key(0))
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
    leaves = jax.tree_util.tree_leaves(new_params)
    assert {leaf.dtype for leaf in leaves} == {jnp.dtype(jnp.float32)}, "master weights stay float32"
    moved = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), params, new_params)
    assert any(jax.tree_util.tree_leaves(moved))
