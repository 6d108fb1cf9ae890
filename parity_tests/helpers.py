"""Shared plumbing of the parity tests: the device/precision environment, weights, both forwards.

Everything that runs a model takes a `ParityEnv`, so the same test runs on CPU or GPU and in
float32, TF32 or bfloat16 without change (`--device`, `--precision`; see conftest.py).
"""

from __future__ import annotations

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
from shared.config import ModelConfig
from shared.tolerances import Tolerance, excess
from torch_impl.numpy_bridge import to_numpy

# Every parameter gets N(0, NOISE^2) added, so norm scales/biases and output biases are not the
# 1/0 they start at (a swapped scale and bias, or a dropped bias, would otherwise go unnoticed).
NOISE = 0.1


@dataclass(frozen=True)
class ParityEnv:
    """Where and in which precision both stacks run, and the tolerance row that applies."""

    device: str  # "cpu" | "gpu"
    precision: str  # "float32" | "tf32" | "bfloat16"
    tol: Tolerance
    torch_device: torch.device
    jax_device: jax.Device

    @property
    def weight_dtype(self) -> np.dtype:
        """Parameters are float32 (float32/tf32 runs) or bfloat16, the same bits in both stacks."""
        return np.dtype(ml_dtypes.bfloat16) if self.precision == "bfloat16" else np.dtype(np.float32)

    def cast(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {key: value.astype(self.weight_dtype) for key, value in tensors.items()}

    def torch_ids(self, ids: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(ids, dtype=torch.long, device=self.torch_device)

    def jax_put(self, tree):
        """Place arrays (a pytree; int ids become int32, JAX's default int) on the JAX device."""
        return jax.device_put(
            jax.tree_util.tree_map(lambda x: x.astype(np.int32) if np.issubdtype(x.dtype, np.integer) else x, tree),
            self.jax_device,
        )


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


# -- loss and gradients ------------------------------------------------------------------------------
def torch_masked_xent(logits: torch.Tensor, targets: torch.Tensor, pad_id: int) -> torch.Tensor:
    """mean over non-pad targets of -log softmax(logits)[target]; 0 when every target is pad."""
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")  # (B*T,)
    keep = (targets.flatten() != pad_id).float()
    return (nll * keep).sum() / keep.sum().clamp(min=1.0)


def jax_masked_xent(logits: jax.Array, targets: jax.Array, pad_id: int) -> jax.Array:
    """The same loss as torch_masked_xent, through optax."""
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)  # (B, T)
    keep = (targets != pad_id).astype(jnp.float32)
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


# -- comparison and measurement ----------------------------------------------------------------------
@dataclass
class Worst:
    """The largest differences seen for one property over all examples of a run."""

    excess: float = 0.0
    max_abs: float = 0.0
    max_rel: float = 0.0
    where: str = ""
    count: int = 0


MEASUREMENTS: dict[str, Worst] = defaultdict(Worst)  # property name -> worst seen (printed at the end)


def compare(prop: str, name: str, torch_value: np.ndarray, jax_value: np.ndarray, tol: Tolerance) -> float:
    """Record the differences of one array pair under `prop` and return their excess (<= 1 agrees)."""
    a = np.asarray(torch_value, dtype=np.float64)
    b = np.asarray(jax_value, dtype=np.float64)
    over = excess(a, b, tol)  # also checks the shapes match
    diff = np.abs(a - b)
    worst = MEASUREMENTS[prop]
    worst.count += 1
    worst.max_abs = max(worst.max_abs, float(diff.max(initial=0.0)))
    # relative to |torch| where that is not tiny: a relative error of a near-zero value says nothing
    worst.max_rel = max(worst.max_rel, float((diff / np.maximum(np.abs(a), 1e-3)).max(initial=0.0)))
    if over > worst.excess:
        worst.excess, worst.where = over, name
    return over


def assert_all_close(prop: str, pairs: dict[str, tuple[np.ndarray, np.ndarray]], tol: Tolerance, context: str) -> None:
    """Every pair within tolerance; the failure message names every pair that is not, worst first."""
    excesses = {name: compare(prop, name, a, b, tol) for name, (a, b) in pairs.items()}
    bad = sorted(((e, n) for n, e in excesses.items() if not e <= 1.0), reverse=True)
    if bad:
        lines = [
            f"{name}: excess {e:.3g} (max |torch - jax| = "
            f"{np.abs(np.asarray(pairs[name][0], np.float64) - np.asarray(pairs[name][1], np.float64)).max():.3e})"
            for e, name in bad
        ]
        raise AssertionError(
            f"{len(bad)} of {len(pairs)} arrays differ beyond atol={tol.atol:g} rtol={tol.rtol:g} "
            f"({context}):\n  " + "\n  ".join(lines)
        )


def assert_finite(arrays: dict[str, np.ndarray], context: str) -> None:
    bad = [name for name, a in arrays.items() if not np.all(np.isfinite(np.asarray(a, np.float64)))]
    assert not bad, f"non-finite values ({context}) in: {', '.join(bad)}"


def format_measurements() -> str:
    if not MEASUREMENTS:
        return ""
    width = max(len(p) for p in MEASUREMENTS)
    lines = [f"{'property':<{width}}  {'arrays':>6}  {'max abs':>9}  {'max rel':>9}  {'excess':>7}  worst at"]
    for prop, w in sorted(MEASUREMENTS.items()):
        lines.append(f"{prop:<{width}}  {w.count:>6}  {w.max_abs:9.2e}  {w.max_rel:9.2e}  {w.excess:7.3f}  {w.where}")
    return "\n".join(lines)
