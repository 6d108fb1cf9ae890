"""JAX LoRA fine-tuning: a pure jitted step that differentiates the adapter pytree only.

    step(adapters, opt_state, base_params, batch, key) -> (adapters', opt_state', metrics)

The base params are a plain, non-differentiated argument (never donated, never updated); the optax
chain is jax_impl.training's, applied to the adapter pytree, so Adam moments exist for the adapter
(and modules_to_save) only. Weights and moments leave and enter in PEFT adapter keys, torch layout
(jax_impl.lora.tensors_from_adapters), so a checkpoint is an adapter directory torch resumes.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_impl import lora as jax_lora
from jax_impl.convert import params_from_state_dict
from jax_impl.layers import upcast_dtype
from jax_impl.registry import build_model
from jax_impl.training import (
    JaxBackend,
    StepSpec,
    _copy_to_device,
    batch_arrays,
    build_optimizer,
    masked_cross_entropy,
    resolve_device,
)
from shared.config.model_config import ModelConfig
from shared.data.batching import Batch
from shared.checkpoints.lora_config import LoRAConfig
from shared.parity.mixed_precision import compute_dtype
from shared.checkpoints.optimizer_state import OptimizerState, hyperparams_of
from shared.training.schedules import schedule_for
from shared.training.train_config import TrainConfig


@functools.lru_cache(maxsize=16)
def _compiled(model_config: ModelConfig, lora: LoRAConfig, spec: StepSpec, total_steps: int) -> tuple[Any, ...]:
    """(jitted train step, jitted eval step, jitted tx.init, jitted merge) for one model, adapter and optimizer."""
    model = build_model(model_config, dtype=compute_dtype(spec.precision))  # bf16-mixed: bf16 matmuls, float32 masters
    tx = build_optimizer(spec, total_steps)
    pad, smoothing = model_config.pad_id, spec.label_smoothing

    def train_step(adapters, opt_state, base_params, batch: dict[str, jax.Array], rng: jax.Array):
        """Pure: (adapters, opt_state, frozen base, batch, dropout key) -> (adapters', opt_state', metrics)."""

        def loss_fn(a):
            logits = jax_lora.lora_apply(
                model, base_params, a, lora, batch["src"], batch["tgt_in"], rngs={"dropout": rng}, deterministic=False
            )  # (B, T, V), bf16 under bf16-mixed
            return masked_cross_entropy(logits.astype(upcast_dtype(logits.dtype)), batch["tgt_out"], pad, smoothing)

        loss, grads = jax.value_and_grad(loss_fn)(adapters)  # grads: the adapter pytree's shape only
        grad_norm = optax.tree.norm(grads)
        with jax.numpy_dtype_promotion("standard"):  # optax's bias correction (jax_impl/training.py)
            updates, opt_state = tx.update(grads, opt_state, adapters)
        return optax.apply_updates(adapters, updates), opt_state, {"loss": loss, "grad_norm": grad_norm}

    def eval_step(adapters, base_params, batch: dict[str, jax.Array]):
        """(sum of per-token nll over non-pad targets, their count), dropout off."""
        logits = jax_lora.lora_apply(model, base_params, adapters, lora, batch["src"], batch["tgt_in"], deterministic=True)
        logits = logits.astype(upcast_dtype(logits.dtype))  # the loss in float32, also under bf16-mixed
        per_token = optax.softmax_cross_entropy_with_integer_labels(logits, batch["tgt_out"])  # (B, T)
        mask = batch["tgt_out"] != pad
        return jnp.sum(jnp.where(mask, per_token, 0.0)), jnp.sum(mask)

    def init_opt(adapters):
        with jax.numpy_dtype_promotion("standard"):
            return tx.init(adapters)

    merge = functools.partial(jax_lora.merge, lora=lora)
    return jax.jit(train_step, donate_argnums=(0, 1)), jax.jit(eval_step), jax.jit(init_opt), jax.jit(merge)


class LoRAJaxBackend(JaxBackend):
    """Frozen base params + trainable adapter pytree, driven by shared.training.loop like JaxBackend."""

    def __init__(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig,
        total_steps: int,
        base_tensors: dict[str, np.ndarray],
        lora: LoRAConfig,
        adapter_tensors: dict[str, np.ndarray] | None = None,
    ) -> None:
        # JaxBackend.__init__ is not called: it would build Adam moments for every base weight.
        self.model_config, self.train_config, self.lora = model_config, train_config, lora
        self.device = resolve_device(train_config.device)
        self.precision = "highest" if train_config.matmul_precision == "float32" else "tensorfloat32"
        self._train_step, self._eval_step, self._init_opt, self._merge = _compiled(
            model_config, lora, StepSpec.of(train_config), total_steps
        )
        self.schedule = schedule_for(train_config, total_steps)
        self.model = build_model(model_config)
        self.base_key = jax.random.PRNGKey(train_config.seed)
        init_key, self.dropout_key = jax.random.split(self.base_key)  # as JaxBackend: init, then dropout
        self.base_params = _copy_to_device(params_from_state_dict(model_config, base_tensors), self.device)
        if adapter_tensors is None:
            adapters = jax_lora.init_adapters(model_config, lora, self.base_params, init_key)
        else:
            adapters = jax_lora.adapters_from_tensors(model_config, lora, adapter_tensors)
        self.adapters = _copy_to_device(adapters, self.device)
        self.opt_state = self._init_opt(self.adapters)
        self.step = 0

    def parameter_report(self) -> str:
        return jax_lora.parameter_report(self.base_params, self.adapters)

    # -- training ----------------------------------------------------------------------------------
    def train_step(self, batch: Batch) -> dict[str, Any]:
        """One adapter update; dropout key fold_in(dropout_key, step) as JaxBackend (a resume replays it)."""
        rng = jax.random.fold_in(self.dropout_key, self.step)
        with self._context():
            self.adapters, self.opt_state, metrics = self._train_step(
                self.adapters, self.opt_state, self.base_params, batch_arrays(batch), rng
            )
        lr = float(self.schedule(self.step))
        self.step += 1
        return {**metrics, "lr": lr}

    # -- evaluation --------------------------------------------------------------------------------
    def eval_batch(self, batch: Batch) -> tuple[float, int]:
        with self._context():
            nll, count = self._eval_step(self.adapters, self.base_params, batch_arrays(batch))
        return float(nll), int(count)

    def decode(self, src: np.ndarray, max_new_tokens: int, num_beams: int = 1) -> np.ndarray:
        """Ids (B, T_out) from the merged weights W + scaling * B @ A (no dropout: the same function)."""
        from jax_impl.generate import generate
        from shared.decoding.generation import search_config

        with self._context():
            merged = self._merge(self.base_params, self.adapters)
            return generate(self.model, merged, src, config=search_config(max_new_tokens, self.model_config.max_len, num_beams))

    # -- state in the neutral formats (PEFT keys, torch layout) -------------------------------------
    def _tensors(self, tree: Any) -> dict[str, np.ndarray]:
        return {k: np.array(v) for k, v in jax_lora.tensors_from_adapters(self.model_config, self.lora, tree).items()}

    def model_tensors(self) -> dict[str, np.ndarray]:
        """The adapter's tensors {PEFT key: array}, as adapter_model.safetensors holds them."""
        return self._tensors(self.adapters)

    def optimizer_state(self) -> OptimizerState:
        mu = optax.tree_utils.tree_get(self.opt_state, "mu")
        nu = optax.tree_utils.tree_get(self.opt_state, "nu")
        return OptimizerState(self.step, self._tensors(mu), self._tensors(nu), hyperparams_of(self.train_config))

    def restore(self, tensors: dict[str, np.ndarray], optimizer: OptimizerState, rng: dict[str, np.ndarray] | None) -> None:
        """Continue from a LoRA checkpoint (written by either stack): adapter, its Adam moments, counts, key."""
        as_tree = lambda t: _copy_to_device(jax_lora.adapters_from_tensors(self.model_config, self.lora, t), self.device)
        self.adapters = as_tree(tensors)
        self.opt_state = self._opt_state_with(self.adapters, as_tree(optimizer.exp_avg), as_tree(optimizer.exp_avg_sq), optimizer.step)
        self.step = optimizer.step
        self._restore_key(rng)


__all__ = ["LoRAJaxBackend"]
