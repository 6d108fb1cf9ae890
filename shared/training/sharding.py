"""Scale-out, framework-neutral part: the mesh / strategy settings and the one rule that splits a batch.

Both stacks scale with their own engines (jax_impl/sharding.py: jax.sharding Mesh + NamedSharding +
jit in/out shardings; torch_impl/distributed.py: torch.distributed DDP or FSDP2 `fully_shard`
under torchrun). What must be the same in both lives here, so a sharded run does the math of the
single-device run:

Batches. Every process runs the shared sampler (shared/data/batching.py) and so holds the same
*global* batch, the one the single-device run trains on at that step. A data-parallel group of N
ranks splits it by rows (`shard_rows`):
  - rows are padded up to a multiple of N with all-PAD rows (source, decoder input and targets all
    PAD_ID): a PAD target carries no loss and no gradient, and a fully padded attention row is a
    uniform softmax, never NaN (shared/parity/numerics.py), so padding rows change nothing;
  - rank r takes rows [r * B/N, (r+1) * B/N) of the padded batch; every shard keeps the global
    batch's padded widths S and T (one shape on every rank: one compile, no ragged collectives);
  - the loss stays the global token mean: each rank sums its tokens' (label-smoothed) NLL and
    divides by the *global* non-pad target count (`Batch.num_tokens` of the global batch), and the
    gradients are summed over ranks. So  loss = sum over all ranks' tokens / global count,
    exactly the single-device loss; only the order of the additions changes.
JAX does the same split implicitly: the padded global batch is one array sharded by rows over the
mesh's batch axes, and the unchanged loss formula (sum / count over the whole batch) is computed
by XLA with cross-device reductions.

Checkpoints are gathered to the canonical layout on save (full tensors, torch layout, one
model.safetensors + optimizer.safetensors): a checkpoint does not know how many devices wrote it,
so it resumes on any device count and in either framework. Only the main process writes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from shared.data.batching import Batch
from shared.data.special_tokens import PAD_ID

# JAX mesh axes: "data" replicates the parameters (data parallel, as DDP), "fsdp" shards them (and
# the optimizer state) across its devices (fully sharded, as FSDP2). The batch is split over both.
MESH_AXES = ("data", "fsdp")
# torch strategies under torchrun.
STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class MeshSpec:
    """A device mesh as `data=4`, `fsdp=4` or `data=2,fsdp=2` (axis sizes; their product = devices)."""

    axes: tuple[tuple[str, int], ...]

    @classmethod
    def parse(cls, text: str) -> "MeshSpec":
        axes: list[tuple[str, int]] = []
        for part in text.split(","):
            name, sep, size = part.strip().partition("=")
            if not sep or name not in MESH_AXES or not size.strip().isdigit() or int(size) < 1:
                raise ValueError(
                    f"bad mesh {text!r}: expected AXIS=SIZE[,AXIS=SIZE] with AXIS in {', '.join(MESH_AXES)} "
                    f"and SIZE a positive integer (e.g. data=4, fsdp=4, data=2,fsdp=2)"
                )
            if name in dict(axes):
                raise ValueError(f"bad mesh {text!r}: axis {name!r} given twice")
            axes.append((name, int(size)))
        return cls(tuple(axes))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.axes)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(size for _, size in self.axes)

    @property
    def num_devices(self) -> int:
        return math.prod(self.shape)

    def size(self, axis: str) -> int:
        return dict(self.axes).get(axis, 1)

    def __str__(self) -> str:
        return ",".join(f"{name}={size}" for name, size in self.axes)


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    return strategy


def pad_rows(batch: Batch, multiple: int) -> Batch:
    """The batch with all-PAD rows appended so that B is a multiple of `multiple` (module doc).

    Padding rows have index -1; num_tokens (the loss normaliser) is unchanged: they hold no target.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be positive, got {multiple}")
    extra = -len(batch.indices) % multiple
    if extra == 0:
        return batch

    def grow(a: np.ndarray) -> np.ndarray:  # (B, L) -> (B + extra, L)
        return np.concatenate([a, np.full((extra, a.shape[1]), PAD_ID, dtype=a.dtype)])

    return Batch(
        src=grow(batch.src),
        tgt_in=grow(batch.tgt_in),
        tgt_out=grow(batch.tgt_out),
        indices=np.concatenate([batch.indices, np.full(extra, -1, dtype=batch.indices.dtype)]),
        num_tokens=batch.num_tokens,
    )


def shard_rows(batch: Batch, rank: int, world: int) -> Batch:
    """Rank `rank`'s rows of the global batch padded to a multiple of `world` (module doc).

    Its num_tokens is the shard's own count; the loss normaliser is the global batch's num_tokens.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside a group of {world}")
    padded = pad_rows(batch, world)
    rows = len(padded.indices) // world
    part = slice(rank * rows, (rank + 1) * rows)
    tgt_out = padded.tgt_out[part]  # (B / world, T)
    return Batch(
        src=padded.src[part],  # (B / world, S)
        tgt_in=padded.tgt_in[part],
        tgt_out=tgt_out,
        indices=padded.indices[part],
        num_tokens=int(np.count_nonzero(tgt_out != PAD_ID)),
    )


def torchrun_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the variables torchrun sets; (0, 1, 0) outside torchrun."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


def run_layout(framework: str, mesh: str | None, strategy: str | None) -> dict[str, object]:
    """What a run trains on, as recorded in its trainer state and summary and printed at its start:
    {"framework", "mesh" (JAX) or "strategy" (torch) when scaled out, "devices", "processes"}.
    Each framework reads its own setting (a config may hold both); the other one is ignored."""
    if framework == "jax" and mesh is not None:
        spec = MeshSpec.parse(mesh)
        processes = int(os.environ.get("JAX_NUM_PROCESSES", 1))  # jax_impl/sharding.initialize_distributed
        return {"framework": framework, "mesh": str(spec), "devices": spec.num_devices, "processes": processes}
    world = torchrun_world()[1]
    if framework == "torch" and strategy is not None:
        return {"framework": framework, "strategy": strategy, "devices": world, "processes": world}
    return {"framework": framework, "devices": 1, "processes": 1}


def describe_layout(layout: dict[str, object]) -> str:
    """The layout as one line: "jax on mesh data=4: 4 devices, 1 process"."""
    devices, processes = layout["devices"], layout["processes"]
    how = f"mesh {layout['mesh']}" if "mesh" in layout else f"{layout['strategy']}" if "strategy" in layout else "one device"
    count = f"{devices} device{'s' * (devices != 1)}, {processes} process{'es' * (processes != 1)}"
    return f"{layout['framework']} on {how}: {count}"


class NullMetricsLog:
    """The metrics log of a process that does not write (every process but the main one)."""

    def write(self, record) -> None:
        pass

    def truncate_after(self, step: int) -> None:
        pass
