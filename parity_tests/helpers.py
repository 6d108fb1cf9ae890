"""Shared plumbing of the parity tests: the device/precision environment, weights, both forwards.

Everything that runs a model takes a `ParityEnv`, so the same test runs on CPU or GPU and in
float32, TF32 or bfloat16 without change (`--device`, `--precision`; see conftest.py).

Every cross-stack comparison goes through `compare`/`assert_all_close`, which take both stacks'
outputs in the precision under test AND in float64 (same weights, same inputs): the float64 runs
measure each stack's own rounding error, from which shared.parity.tolerances.compare_stacks derives the
bound (scale-aware, see the derivation there).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import torch
import torch.nn.functional as F
from flax.traverse_util import flatten_dict, unflatten_dict

import jax_impl
import torch_impl
from jax_impl.intermediates import forward_with_intermediates
from shared.config.model_config import ModelConfig
from jax_impl.layers import upcast_dtype
from shared.parity.tolerances import Comparison, compare_stacks
from torch_impl.numpy_bridge import to_numpy

# Every parameter gets N(0, NOISE^2) added, so norm scales/biases and output biases are not the
# 1/0 they start at (a swapped scale and bias, or a dropped bias, would otherwise go unnoticed).
NOISE = 0.1


@dataclass(frozen=True)
class ParityEnv:
    """Where and in which precision both stacks run (the precision picks the bound's unit roundoff)."""

    device: str  # "cpu" | "gpu"
    precision: str  # "float32" | "tf32" | "bfloat16"
    torch_device: torch.device
    jax_device: jax.Device

    @property
    def weight_dtype(self) -> np.dtype:
        """Parameters are float32 (float32/tf32 runs) or bfloat16, the same bits in both stacks."""
        return np.dtype(ml_dtypes.bfloat16) if self.precision == "bfloat16" else np.dtype(np.float32)

    def cast(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {key: value.astype(self.weight_dtype) for key, value in tensors.items()}

    def reference(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Exact float64 copies of (already rounded) weights, for the reference runs."""
        return {key: np.asarray(value).astype(np.float64) for key, value in tensors.items()}

    def torch_ids(self, ids: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(ids, dtype=torch.long, device=self.torch_device)

    def jax_put(self, tree):
        """Place arrays (a pytree; int ids become int32, JAX's default int) on the JAX device.

        float64 arrays keep their dtype only inside `x64()`.
        """
        return jax.device_put(
            jax.tree_util.tree_map(lambda x: x.astype(np.int32) if np.issubdtype(x.dtype, np.integer) else x, tree),
            self.jax_device,
        )


def x64(tensors_or_params) -> contextlib.AbstractContextManager:
    """JAX's x64 mode while float64 values are in play (a float64 reference run), else nothing."""
    leaves = jax.tree_util.tree_leaves(tensors_or_params)
    return jax.enable_x64() if any(np.dtype(leaf.dtype) == np.float64 for leaf in leaves) else contextlib.nullcontext()


# -- weights -----------------------------------------------------------------------------------------
def torch_initial_tensors(config: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """torch_impl's own (default PyTorch) init from `seed`, plus noise on every tensor: float32."""
    torch.manual_seed(seed)
    model = torch_impl.Transformer(config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(NOISE * torch.randn(parameter.shape, generator=generator))
    return torch_impl.state_dict_numpy(model)


def jax_initial_params(config: ModelConfig, seed: int, env: ParityEnv) -> dict:
    """jax_impl.init_params from `seed`, plus noise on every leaf, on env's device and dtype.

    init_params runs under jit (one compile) rather than op by op (one compile per op and shape),
    with an "rbg" key (XLA's RngBitGenerator compiles in about half the time of threefry); the
    noise is drawn in numpy for the same reason.
    """
    key = jax.device_put(jax.random.key(seed, impl="rbg"), env.jax_device)
    params = _jitted_init_params(config, key)
    rng = np.random.default_rng(seed)
    flat = {
        path: (np.asarray(leaf) + NOISE * rng.standard_normal(leaf.shape)).astype(env.weight_dtype)
        for path, leaf in flatten_dict(params).items()
    }
    return env.jax_put(unflatten_dict(flat))


_jitted_init_params = jax.jit(jax_impl.init_params, static_argnums=0)


def torch_model(config: ModelConfig, tensors: dict[str, np.ndarray], env: ParityEnv) -> torch_impl.Transformer:
    return torch_impl.from_numpy(config, tensors).to(env.torch_device).eval()


# -- forward passes ------------------------------------------------------------------------------------
def torch_forward_records(model: torch_impl.Transformer, src: np.ndarray, tgt: np.ndarray, env: ParityEnv):
    """(logits, {module name: [outputs]}) as numpy, from forward hooks."""
    from torch_impl.intermediates import capture_intermediates

    with torch.no_grad(), capture_intermediates(model) as records:
        logits = model(env.torch_ids(src), env.torch_ids(tgt))
    return to_numpy(logits), {name: [to_numpy(o) for o in outs] for name, outs in records.items()}


@partial(jax.jit, static_argnums=0)
def _jax_forward_records(model: jax_impl.Transformer, params, src, tgt):
    return forward_with_intermediates(model, params, src, tgt)


def jax_forward_records(config: ModelConfig, params: dict, src: np.ndarray, tgt: np.ndarray, env: ParityEnv):
    """(logits, {module name: [outputs]}) as numpy, from one jitted Flax apply."""
    logits, records = _jax_forward_records(jax_impl.build_model(config), params, *env.jax_put((src, tgt)))
    return np.asarray(logits), {name: [np.asarray(o) for o in outs] for name, outs in records.items()}


def reference_forward_records(config: ModelConfig, tensors: dict[str, np.ndarray], src, tgt, env: ParityEnv):
    """Both stacks' float64 runs on `tensors` (any dtype, converted exactly): (torch, jax) each (logits, records)."""
    reference = env.reference(tensors)
    torch_run = torch_forward_records(torch_model(config, reference, env), src, tgt, env)
    with jax.enable_x64():
        params = env.jax_put(jax_impl.params_from_state_dict(config, reference))
        jax_run = jax_forward_records(config, params, src, tgt, env)
    return torch_run, jax_run


# -- loss and gradients ------------------------------------------------------------------------------
def torch_masked_xent(logits: torch.Tensor, targets: torch.Tensor, pad_id: int) -> torch.Tensor:
    """mean over non-pad targets of -log softmax(logits)[target]; 0 when every target is pad."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # float32 for 16-bit, float64 stays
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")  # (B*T,)
    keep = (targets.flatten() != pad_id).to(logits.dtype)
    return (nll * keep).sum() / keep.sum().clamp(min=1.0)


def jax_masked_xent(logits: jax.Array, targets: jax.Array, pad_id: int) -> jax.Array:
    """The same loss as torch_masked_xent, through optax."""
    logits = logits.astype(upcast_dtype(logits.dtype))  # float32 for 16-bit, float64 stays
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # (B, T)
    keep = (targets != pad_id).astype(logits.dtype)
    return jnp.sum(nll * keep) / jnp.maximum(jnp.sum(keep), 1.0)


def torch_loss_and_grads(model: torch_impl.Transformer, src, tgt_in, tgt_out, env: ParityEnv):
    """(loss, {state-dict key: gradient}) from autograd, as numpy in the PyTorch layout."""
    model.zero_grad(set_to_none=True)
    loss = torch_masked_xent(model(env.torch_ids(src), env.torch_ids(tgt_in)), env.torch_ids(tgt_out), model.config.pad_id)
    loss.backward()
    # A parameter the loss does not reach (the encoder, when there are no decoder layers) has
    # grad None in torch and an exact zero in jax: the true gradient is zero.
    grads = {name: to_numpy(torch.zeros_like(p) if p.grad is None else p.grad) for name, p in model.named_parameters()}
    return float(loss.detach()), grads


@partial(jax.jit, static_argnums=0)
def _jax_loss_and_grads(model: jax_impl.Transformer, params, src, tgt_in, tgt_out):
    def loss_fn(p):
        return jax_masked_xent(model.apply({"params": p}, src, tgt_in), tgt_out, model.config.pad_id)

    return jax.value_and_grad(loss_fn)(params)


def jax_loss_and_grads(config: ModelConfig, params: dict, src, tgt_in, tgt_out, env: ParityEnv):
    """(loss, {state-dict key: gradient}) from jax.grad, converted to the PyTorch layout."""
    loss, grads = _jax_loss_and_grads(jax_impl.build_model(config), params, *env.jax_put((src, tgt_in, tgt_out)))
    return float(loss), jax_impl.state_dict_from_params(config, grads)


def reference_loss_and_grads(config: ModelConfig, tensors: dict[str, np.ndarray], src, tgt_in, tgt_out, env: ParityEnv):
    """Both stacks' float64 (loss, grads) on `tensors` (any dtype, converted exactly): (torch, jax)."""
    reference = env.reference(tensors)
    torch_run = torch_loss_and_grads(torch_model(config, reference, env), src, tgt_in, tgt_out, env)
    with jax.enable_x64():
        params = env.jax_put(jax_impl.params_from_state_dict(config, reference))
        jax_run = jax_loss_and_grads(config, params, src, tgt_in, tgt_out, env)
    return torch_run, jax_run


# -- float64 twins of training runs -------------------------------------------------------------------
def float64_backend(framework: str, model_config, train_config, steps: int, init):
    """A backend_factory for shared.training.loop.train that trains in float64 (call train inside jax.enable_x64()).

    A fresh run starts from `init` converted exactly; a resumed run's starting weights are
    overwritten by the checkpoint, so any float64 weights do.
    """
    from shared.checkpoints.init import initial_tensors
    from twinformer.backends import make_backend

    start = init if init is not None else initial_tensors(model_config, train_config.seed)
    return make_backend(framework, model_config, train_config, steps, {k: np.asarray(v, np.float64) for k, v in start.items()})


def float64_checkpoint_copy(checkpoint, directory):
    """An exact float64 copy of a (float32) training checkpoint: weights and Adam moments; the rest as is."""
    import dataclasses

    from shared.training.run_checkpoint import load_run_checkpoint, save_run_checkpoint

    loaded = load_run_checkpoint(checkpoint)
    as64 = lambda tensors: {k: np.asarray(v, np.float64) for k, v in tensors.items()}  # noqa: E731
    moments = dataclasses.replace(loaded.optimizer, exp_avg=as64(loaded.optimizer.exp_avg), exp_avg_sq=as64(loaded.optimizer.exp_avg_sq))
    return save_run_checkpoint(
        directory, step=loaded.step, model_config=loaded.model_config, tensors=as64(loaded.tensors), optimizer=moments,
        rng=loaded.rng, trainer_state=loaded.trainer_state, train_config=loaded.train_config, tokenizer=loaded.tokenizer(),
    )  # fmt: skip


# -- comparison and measurement ----------------------------------------------------------------------
@dataclass
class Worst:
    """The largest ratio (difference / bound) seen for one property over all examples of a run."""

    ratio: float = 0.0
    max_abs: float = 0.0  # at the worst ratio
    limit: float = 0.0  # the bound there
    largest_abs: float = 0.0  # over all arrays of the property
    where: str = ""
    count: int = 0


MEASUREMENTS: dict[str, Worst] = defaultdict(Worst)  # property name -> worst seen (printed at the end)


def compare(prop: str, name: str, torch_low, jax_low, torch_f64, jax_f64, precision: str) -> Comparison:
    """Compare one array across the stacks under the scale-aware bound, and record it under `prop`.

    torch_low/jax_low: the outputs in the precision under test; torch_f64/jax_f64: the same stack's
    outputs from a float64 run on the same weights and inputs (each stack's own rounding error).
    """
    result = compare_stacks(torch_low, jax_low, torch_f64, jax_f64, precision)  # also checks shapes
    worst = MEASUREMENTS[prop]
    worst.count += 1
    worst.largest_abs = max(worst.largest_abs, result.max_abs)
    if result.ratio >= worst.ratio:
        worst.ratio, worst.max_abs, worst.limit, worst.where = result.ratio, result.max_abs, result.limit, name
    return result


Quad = tuple  # (torch_low, jax_low, torch_f64, jax_f64)


def assert_all_close(prop: str, quads: dict[str, Quad], precision: str, context: str) -> None:
    """Every array within its bound; the failure message names every one that is not, worst first."""
    results = {name: compare(prop, name, *quad, precision) for name, quad in quads.items()}
    bad = sorted(((r.ratio, n) for n, r in results.items() if not r.ok), reverse=True)
    if bad:
        lines = [
            f"{name}: ratio {ratio:.3g} (max |torch - jax| {results[name].max_abs:.3e}, bound {results[name].limit:.3e}, "
            f"own rounding error {results[name].own_error:.3e}, scale {results[name].scale:.3g})"
            for ratio, name in bad
        ]
        raise AssertionError(f"{len(bad)} of {len(quads)} arrays differ beyond their bound ({precision}; {context}):\n  " + "\n  ".join(lines))


def assert_finite(arrays: dict[str, np.ndarray], context: str) -> None:
    bad = [name for name, a in arrays.items() if not np.all(np.isfinite(np.asarray(a, np.float64)))]
    assert not bad, f"non-finite values ({context}) in: {', '.join(bad)}"


def format_measurements() -> str:
    if not MEASUREMENTS:
        return ""
    width = max(len(p) for p in MEASUREMENTS)
    lines = [f"{'property':<{width}}  {'arrays':>6}  {'largest':>9}  {'diff@worst':>10}  {'bound':>9}  {'ratio':>6}  worst at"]
    for prop, w in sorted(MEASUREMENTS.items()):
        lines.append(
            f"{prop:<{width}}  {w.count:>6}  {w.largest_abs:9.2e}  {w.max_abs:10.2e}  {w.limit:9.2e}  {w.ratio:6.3f}  {w.where}"
        )
    return "\n".join(lines)
