"""JAX training: masked cross-entropy, the optax chain, a pure jitted step, the backend.

The math is the twin of torch_impl/training.py:
  loss  = mean over non-pad targets of softmax_cross_entropy(logits, smooth_labels(one_hot, a))
        = (1 - a) * nll + a * mean_v(-log p_v)      (torch's label_smoothing formula)
  tx    = [clip_by_global_norm] -> [L2: add_decayed_weights (adam)] -> scale_by_adam(b1, b2, eps)
          -> [add_decayed_weights (adamw)] -> scale_by_learning_rate(shared.training.schedules)
which is optax.adam / optax.adamw plus clipping (and torch.optim.Adam's L2 form of weight decay).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_impl.convert import params_from_state_dict, state_dict_from_params
from jax_impl.layers import upcast_dtype
from jax_impl.registry import init_params
from jax_impl.registry import build_model
from shared.config.model_config import ModelConfig
from shared.data.batching import Batch
from shared.families import family_of
from shared.parity.mixed_precision import compute_dtype
from shared.checkpoints.optimizer_state import OptimizerState, hyperparams_of
from shared.training.schedules import schedule_for
from shared.training.train_config import TrainConfig


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, pad_id: int, label_smoothing: float = 0.0) -> jax.Array:
    """logits (B, T, V), targets (B, T) -> mean (label-smoothed) cross-entropy over non-pad targets."""
    V = logits.shape[-1]
    labels = jax.nn.one_hot(targets, V, dtype=logits.dtype)  # (B, T, V)
    if label_smoothing:
        labels = optax.smooth_labels(labels, label_smoothing)  # (1 - a) * onehot + a / V
    per_token = optax.softmax_cross_entropy(logits, labels)  # (B, T)
    mask = (targets != pad_id).astype(per_token.dtype)
    return jnp.sum(per_token * mask) / jnp.sum(mask)


def build_optimizer(config: "TrainConfig | StepSpec", total_steps: int) -> optax.GradientTransformation:
    """The optax chain matching torch.optim.Adam/AdamW + clipping + the shared schedule (module doc)."""
    parts = []
    if config.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(config.clip_norm))
    if config.optimizer == "adam" and config.weight_decay:
        parts.append(optax.add_decayed_weights(config.weight_decay))  # L2: g + wd * p, before the moments
    b1, b2 = config.betas
    parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=config.eps, eps_root=0.0))
    if config.optimizer == "adamw" and config.weight_decay:
        parts.append(optax.add_decayed_weights(config.weight_decay))  # decoupled: lr * wd * p
    parts.append(optax.scale_by_learning_rate(schedule_for(config, total_steps, xp=jnp)))
    return optax.chain(*parts)


@dataclass(frozen=True)
class StepSpec:
    """The TrainConfig fields the compiled step depends on (hashable: equal specs share one jit)."""

    optimizer: str
    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    schedule: str
    warmup_steps: int
    min_lr: float
    clip_norm: float | None
    label_smoothing: float
    precision: str  # bf16-mixed runs the model's matmuls in bf16 (float32 params and optimizer state)
    attention: str

    @classmethod
    def of(cls, config: TrainConfig) -> "StepSpec":
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})


def step_functions(model_config: ModelConfig, spec: StepSpec, total_steps: int) -> tuple[Any, Any, Any]:
    """(optax tx, train step, eval step), pure and not yet jitted (jax_impl/sharding.py jits them
    with shardings)."""
    # bf16-mixed: the Flax twin of torch.autocast, explicit (shared/parity/mixed_precision.py)
    model = build_model(model_config, dtype=compute_dtype(spec.precision), attention=spec.attention)
    tx = build_optimizer(spec, total_steps)
    pad, smoothing = model_config.pad_id, spec.label_smoothing

    def model_inputs(batch: dict[str, jax.Array]) -> tuple[jax.Array, ...]:
        # an encoder-decoder reads (src, tgt_in); a decoder-only LM reads tgt_in (BOS + text, right-padded)
        if family_of(model_config).decoder_only:
            return batch["tgt_in"], batch["tgt_in"] != pad
        return batch["src"], batch["tgt_in"]

    def train_step(params, opt_state, batch: dict[str, jax.Array], rng: jax.Array):
        """Pure: (params, opt_state, batch, dropout key) -> (new params, new opt_state, metrics)."""

        def loss_fn(p):
            logits = model.apply(
                {"params": p}, *model_inputs(batch), deterministic=False, rngs={"dropout": rng}
            )  # (B, T, V), bf16 under bf16-mixed
            return masked_cross_entropy(logits.astype(upcast_dtype(logits.dtype)), batch["tgt_out"], pad, smoothing)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        grad_norm = optax.tree.norm(grads)
        # optax's bias correction computes python-float ** int32 count, which strict dtype
        # promotion (the parity tests' setting) rejects; the model above stays strict.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss, "grad_norm": grad_norm}

    def eval_step(params, batch: dict[str, jax.Array]):
        """(sum of per-token nll over non-pad targets, their count), dropout off."""
        logits = model.apply({"params": params}, *model_inputs(batch), deterministic=True)
        logits = logits.astype(upcast_dtype(logits.dtype))  # the loss in float32, also under bf16-mixed
        per_token = optax.softmax_cross_entropy_with_integer_labels(logits, batch["tgt_out"])  # (B, T)
        mask = batch["tgt_out"] != pad
        return jnp.sum(jnp.where(mask, per_token, 0.0)), jnp.sum(mask)

    return tx, train_step, eval_step


@functools.lru_cache(maxsize=16)
def _compiled(model_config: ModelConfig, spec: StepSpec, total_steps: int) -> tuple[Any, Any, Any, Any]:
    """(optax tx, jitted train step, jitted eval step, jitted tx.init) for one model and optimizer setting."""
    tx, train_step, eval_step = step_functions(model_config, spec, total_steps)
    # Donating params and optimizer state lets XLA update them in place (no second copy on device).
    # tx.init compiled as one program (eagerly it compiles one zeros op per parameter shape).
    return tx, jax.jit(train_step, donate_argnums=(0, 1)), jax.jit(eval_step), jax.jit(tx.init)


@functools.lru_cache(maxsize=16)
def _jitted_init(model_config: ModelConfig):
    """init_params compiled once per config (op-by-op dispatch is slower on every later call)."""
    return jax.jit(functools.partial(init_params, model_config))


def make_train_step(model_config: ModelConfig, config: TrainConfig, total_steps: int):
    """(optax tx, jitted step(params, opt_state, batch, rng) -> (params, opt_state, metrics))."""
    tx, step, _, _ = _compiled(model_config, StepSpec.of(config), total_steps)
    return tx, step


def batch_arrays(batch: Batch) -> dict[str, jax.Array]:
    return {name: jnp.asarray(getattr(batch, name), jnp.int32) for name in ("src", "tgt_in", "tgt_out")}


def _copy_to_device(tree: Any, device: jax.Device | None) -> Any:
    # jnp.array copies: a donated buffer must never alias a numpy array the caller still holds.
    return jax.tree_util.tree_map(lambda a: jax.device_put(jnp.array(a), device), tree)


def resolve_device(name: str) -> jax.Device | None:
    if name == "cpu":
        return jax.devices("cpu")[0]
    if name == "gpu":
        try:
            return jax.devices("gpu")[0]
        except RuntimeError as error:
            raise ValueError(f"device 'gpu' requested but JAX sees none: {error}") from error
    return None  # auto: JAX's default device


class JaxBackend:
    """Params + optax state + dropout key of a JAX run, driven by shared.training.loop."""

    framework = "jax"
    lora = None  # a LoRAConfig in fine-tuning backends that train adapters only (jax_impl/finetune.py)

    def __init__(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig,
        total_steps: int,
        init_tensors: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.model_config, self.train_config = model_config, train_config
        self.device = resolve_device(train_config.device)
        # Full float32 matmuls unless asked otherwise (pitfall 1): JAX's GPU default is TF32.
        self.precision = "highest" if train_config.matmul_precision == "float32" else "tensorfloat32"
        self.tx, self._train_step, self._eval_step, self._init_opt = _compiled(
            model_config, StepSpec.of(train_config), total_steps
        )
        self.schedule = schedule_for(train_config, total_steps)
        self.model = build_model(model_config, attention=train_config.attention)  # decoding: float32, also under bf16-mixed
        self.base_key = jax.random.PRNGKey(train_config.seed)
        init_key, self.dropout_key = jax.random.split(self.base_key)
        if init_tensors is None:
            params = _jitted_init(model_config)(init_key)
        else:
            params = params_from_state_dict(model_config, init_tensors)
        self.params = _copy_to_device(params, self.device)
        self.opt_state = _copy_to_device(self._init_opt(self.params), self.device)  # committed like params: no recompile at step 2
        self.step = 0

    def _count(self, step: int) -> jax.Array:
        return jax.device_put(np.asarray(step, np.int32), self.device)

    def _batch_arrays(self, batch: Batch) -> dict[str, jax.Array]:
        return batch_arrays(batch)  # a hook: the sharded backend pads and splits rows (jax_impl/sharding.py)

    def _context(self):
        return jax.default_matmul_precision(self.precision)

    # -- training ----------------------------------------------------------------------------------
    def train_step(self, batch: Batch) -> dict[str, Any]:
        """One update; the step's dropout key is fold_in(dropout_key, step), so a resume replays it."""
        rng = jax.random.fold_in(self.dropout_key, self.step)
        with self._context():
            self.params, self.opt_state, metrics = self._train_step(self.params, self.opt_state, self._batch_arrays(batch), rng)
        lr = float(self.schedule(self.step))
        self.step += 1
        return {**metrics, "lr": lr}

    # -- evaluation --------------------------------------------------------------------------------
    def eval_batch(self, batch: Batch) -> tuple[float, int]:
        with self._context():
            nll, count = self._eval_step(self.params, self._batch_arrays(batch))
        return float(nll), int(count)

    def decode(self, src: np.ndarray, max_new_tokens: int, num_beams: int = 1) -> np.ndarray:
        """src (B, S) -> ids (B, T_out), BOS excluded: greedy, or beam search with num_beams > 1."""
        from jax_impl.generate import generate
        from shared.decoding.generation import search_config

        with self._context():
            return generate(self.model, self.params, src, config=search_config(max_new_tokens, self.model_config.max_len, num_beams))


    # -- state in the neutral formats ---------------------------------------------------------------
    def model_tensors(self) -> dict[str, np.ndarray]:
        return state_dict_from_params(self.model_config, self.params)

    def optimizer_state(self) -> OptimizerState:
        mu = optax.tree_utils.tree_get(self.opt_state, "mu")
        nu = optax.tree_utils.tree_get(self.opt_state, "nu")
        return OptimizerState(
            step=self.step,
            exp_avg=state_dict_from_params(self.model_config, mu),
            exp_avg_sq=state_dict_from_params(self.model_config, nu),
            hyperparams=hyperparams_of(self.train_config),
        )

    def rng_state(self) -> dict[str, np.ndarray]:
        return {"jax_key": np.asarray(jax.random.key_data(self.base_key))}

    def restore(self, tensors: dict[str, np.ndarray], optimizer: OptimizerState, rng: dict[str, np.ndarray] | None) -> None:
        """Continue from a checkpoint (written by either stack): weights, Adam moments, counts, key."""
        self.params = _copy_to_device(params_from_state_dict(self.model_config, tensors), self.device)
        mu = _copy_to_device(params_from_state_dict(self.model_config, optimizer.exp_avg), self.device)
        nu = _copy_to_device(params_from_state_dict(self.model_config, optimizer.exp_avg_sq), self.device)
        self.opt_state = self._opt_state_with(self.params, mu, nu, optimizer.step)
        self.step = optimizer.step
        self._restore_key(rng)

    def _opt_state_with(self, params: Any, mu: Any, nu: Any, step: int) -> Any:
        """A fresh optax state for `params` with the given Adam moments and update counts."""
        opt_state = optax.tree_utils.tree_set(self._init_opt(params), mu=mu, nu=nu)
        # Both counts (scale_by_adam's bias correction, the schedule's position) are the step,
        # each its own buffer: donation rejects one buffer passed twice.
        return jax.tree_util.tree_map_with_path(
            lambda path, leaf: self._count(step) if path[-1] == jax.tree_util.GetAttrKey("count") else leaf,
            opt_state,
        )

    def _restore_key(self, rng: dict[str, np.ndarray] | None) -> None:
        """The checkpoint's JAX key, if it has one; the dropout stream then follows from it."""
        if rng is not None and "jax_key" in rng:
            self.base_key = jnp.asarray(rng["jax_key"], jnp.uint32)
        # A run started in torch keeps the seed's key: its dropout stream cannot be carried over.
        self.dropout_key = jax.random.split(self.base_key)[1]


__all__ = ["JaxBackend", "StepSpec", "batch_arrays", "build_optimizer", "make_train_step", "masked_cross_entropy"]
