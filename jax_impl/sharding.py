"""JAX scale-out with jax.sharding: a device Mesh, NamedShardings, and the train step jitted with
in/out shardings (no shard_map: XLA inserts the collectives from the shardings).

Mesh axes (shared/training/sharding.py): `data` replicates parameters and optimizer state (data parallel,
as torch DDP); `fsdp` shards them (fully sharded, as torch FSDP2). The batch is split by rows over
every mesh axis. The step is the single-device step (jax_impl/training.step_functions) unchanged:
the loss is sum(nll * mask) / sum(mask) over the whole padded global batch, so only the order of
the additions differs from one device.

Multi-host: start every process with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID
set (`initialize_distributed`); each process then runs the same loop on the same global batches,
`jax.devices()` lists every host's devices, and checkpoints are gathered to the canonical layout
and written by process 0 only.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jax_impl.convert import state_dict_from_params
from jax_impl.registry import init_params
from jax_impl.training import JaxBackend, StepSpec, step_functions
from shared.config.model_config import ModelConfig
from shared.data.batching import Batch
from shared.checkpoints.optimizer_state import OptimizerState, hyperparams_of
from shared.training.sharding import MeshSpec, pad_rows
from shared.training.train_config import TrainConfig

BATCH_FIELDS = ("src", "tgt_in", "tgt_out")


def initialize_distributed() -> None:
    """jax.distributed.initialize from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
    (multi-host); nothing when they are unset (one process sees all of its host's devices)."""
    if "JAX_COORDINATOR_ADDRESS" not in os.environ or jax.distributed.is_initialized():
        return
    missing = [name for name in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if name not in os.environ]
    if missing:
        raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not")
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]),
    )


def make_mesh(spec: MeshSpec) -> Mesh:
    """The first spec.num_devices of jax.devices() (all hosts) as a mesh with the spec's axes."""
    devices = jax.devices()
    if len(devices) < spec.num_devices:
        raise ValueError(
            f"mesh {spec} needs {spec.num_devices} devices but JAX sees {len(devices)} "
            f"({devices[0].platform}); on a CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N"
        )
    return Mesh(np.asarray(devices[: spec.num_devices]).reshape(spec.shape), spec.names)


def param_partition(shape: tuple[int, ...], fsdp_size: int) -> P:
    """Shard a parameter's largest axis divisible by the fsdp size over `fsdp`; replicate the rest.

    Replicated when no axis divides (or fsdp is 1): small vectors cost little, and an even split
    keeps every device's shard the same shape.
    """
    divisible = [axis for axis, n in enumerate(shape) if fsdp_size > 1 and n % fsdp_size == 0]
    if not divisible:
        return P()
    chosen = max(divisible, key=lambda axis: shape[axis])
    return P(*("fsdp" if axis == chosen else None for axis in range(len(shape))))


def _place(tree: Any, shardings: Any) -> Any:
    """Host values onto their shardings; works in multi-host runs too (every process holds the same values)."""

    def put(leaf, sharding):
        host = np.asarray(leaf)  # one copy per leaf, sliced per device below
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(put, tree, shardings)


def _to_host(tree: Any) -> Any:
    """Full arrays on this host: gathered across processes when some shards live on other hosts."""
    if jax.process_count() == 1:
        return tree
    return multihost_utils.process_allgather(tree, tiled=True)


@functools.lru_cache(maxsize=8)
def _sharded_compiled(model_config: ModelConfig, spec: StepSpec, total_steps: int, mesh_spec: MeshSpec):
    """(param shardings, optimizer-state shardings, batch shardings, jitted train step, jitted eval step)
    for one model, optimizer setting and mesh; cached like jax_impl.training._compiled, so backends
    built again (a resume) reuse the compiled programs."""
    mesh = make_mesh(mesh_spec)
    replicated = NamedSharding(mesh, P())
    tx, train_step, eval_step = step_functions(model_config, spec, total_steps)
    param_shapes = jax.eval_shape(functools.partial(init_params, model_config), jax.random.PRNGKey(0))
    fsdp = mesh_spec.size("fsdp")
    param_shardings = jax.tree_util.tree_map(lambda p: NamedSharding(mesh, param_partition(p.shape, fsdp)), param_shapes)
    # Adam's moments follow their parameters; counts and other scalars are replicated.
    opt_shardings = optax.tree_utils.tree_map_params(
        tx, lambda _, sharding: sharding, jax.eval_shape(tx.init, param_shapes), param_shardings,
        transform_non_params=lambda _: replicated,
    )
    rows = NamedSharding(mesh, P(mesh_spec.names))  # (B, L): B split over every mesh axis
    batch_sharding = {name: rows for name in BATCH_FIELDS}
    step = jax.jit(
        train_step,
        in_shardings=(param_shardings, opt_shardings, batch_sharding, replicated),
        out_shardings=(param_shardings, opt_shardings, replicated),
        donate_argnums=(0, 1),
    )
    evaluate = jax.jit(eval_step, in_shardings=(param_shardings, batch_sharding), out_shardings=replicated)
    return param_shardings, opt_shardings, batch_sharding, step, evaluate


class ShardedJaxBackend(JaxBackend):
    """JaxBackend on a device mesh: parameters/optimizer state placed by NamedSharding, batches split
    by rows, the train step jitted with in/out shardings. Same contract (shared/training/loop.py)."""

    def __init__(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig,
        total_steps: int,
        init_tensors: dict[str, np.ndarray] | None = None,
        *,
        mesh: MeshSpec,
    ) -> None:
        super().__init__(model_config, train_config, total_steps, init_tensors)  # one device, then spread
        self.mesh_spec = mesh
        self.is_main_process = jax.process_index() == 0
        compiled = _sharded_compiled(model_config, StepSpec.of(train_config), total_steps, mesh)
        self.param_shardings, self.opt_shardings, self.batch_sharding, self._train_step, self._eval_step = compiled
        self._spread()

    def _spread(self) -> None:
        self.params = _place(self.params, self.param_shardings)
        self.opt_state = _place(self.opt_state, self.opt_shardings)

    def _batch_arrays(self, batch: Batch) -> dict[str, jax.Array]:
        """The global batch padded with all-PAD rows to a multiple of the mesh size (shared/training/sharding.py),
        one array per field sharded by rows."""
        padded = pad_rows(batch, self.mesh_spec.num_devices)
        return {
            name: _place(np.asarray(getattr(padded, name), np.int32), self.batch_sharding[name])  # (B', L)
            for name in BATCH_FIELDS
        }

    def restore(self, tensors, optimizer, rng) -> None:
        super().restore(tensors, optimizer, rng)  # full arrays on one device, from any layout
        self._spread()

    # -- state, gathered to the canonical layout ------------------------------------------------------
    def model_tensors(self) -> dict[str, np.ndarray]:
        return state_dict_from_params(self.model_config, _to_host(self.params))

    def optimizer_state(self) -> OptimizerState:
        opt_state = _to_host(self.opt_state)
        return OptimizerState(
            step=self.step,
            exp_avg=state_dict_from_params(self.model_config, optax.tree_utils.tree_get(opt_state, "mu")),
            exp_avg_sq=state_dict_from_params(self.model_config, optax.tree_utils.tree_get(opt_state, "nu")),
            hyperparams=hyperparams_of(self.train_config),
        )

    def any_process(self, flag: bool) -> bool:
        """True when `flag` is true on any process (one decision, e.g. a time budget, for all)."""
        if jax.process_count() == 1:
            return flag
        return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def make_sharded_backend_factory(mesh: MeshSpec):
    """A backend_factory for shared.training.loop.train that builds ShardedJaxBackends on `mesh`."""
    make_mesh(mesh)  # too few devices fails here, before any data is loaded

    def factory(framework, model_config, train_config, total_steps, init_tensors=None):
        if framework != "jax":
            raise ValueError(f"--mesh is the JAX way to scale; for torch use torchrun and --strategy (got {framework})")
        return ShardedJaxBackend(model_config, train_config, total_steps, init_tensors, mesh=mesh)

    return factory


__all__ = ["ShardedJaxBackend", "initialize_distributed", "make_mesh", "make_sharded_backend_factory", "param_partition"]
