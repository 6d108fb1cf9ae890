"""PyTorch scale-out with torch.distributed under torchrun: DDP or FSDP2 (`fully_shard`).

    torchrun --nproc-per-node N -m twinformer.cli train --framework torch --strategy ddp|fsdp ...

Every rank runs the shared training loop on the same global batches (the shared sampler) and
trains on its rows of each (shared/training/sharding.shard_rows: all-PAD rows pad the batch to a multiple
of the world size). The loss is the single-device loss, the global token mean:
    loss_r = sum of rank r's token losses / global target count,    loss = sum_r loss_r
DDP and FSDP2 *average* gradients over ranks, so each rank backpropagates world * loss_r: the
average of world * grad(loss_r) is grad(sum_r loss_r). Clipping uses the global norm of the
synchronised gradient (FSDP2: the squares of each rank's shard, all-reduced).
Checkpoints: every rank gathers full tensors (torch.distributed.checkpoint.state_dict, full state
dict), rank 0 writes the canonical layout; the loop skips writing on the other ranks.
Decoding (the evaluations' BLEU/ROUGE): FSDP2 gathers the full weights into a plain model once per
evaluation and every rank decodes locally (DistributedTorchBackend.decode says why).
Dropout: each rank draws its own masks (rank 0 the single-device stream), so runs with dropout
are not bitwise the single-device run; the parity tests train without dropout.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from shared.config.model_config import ModelConfig
from shared.data.batching import Batch
from shared.checkpoints.optimizer_state import OptimizerState, hyperparams_of
from shared.training.sharding import check_strategy, shard_rows, torchrun_world
from shared.training.train_config import TrainConfig
from torch_impl.checkpoint import from_numpy
from torch_impl.families.transformer import set_attention_kernel
from torch_impl.numpy_bridge import to_numpy, to_torch
from torch_impl.layers import upcast_dtype
from torch_impl.training import TorchBackend, build_optimizer, decode_sources

FULL = StateDictOptions(full_state_dict=True)  # gathered, unsharded, on every rank


def init_process_group(device: str) -> tuple[int, int, int]:
    """Join torchrun's process group (gloo on CPUs, nccl on GPUs); (rank, world, local rank)."""
    if not dist.is_initialized() and "RANK" not in os.environ:
        raise ValueError("a torch strategy (ddp, fsdp) runs under torchrun: "
                         "torchrun --nproc-per-node N -m twinformer.cli train --framework torch --strategy ...")
    rank, world, local_rank = torchrun_world()
    use_cuda = device == "gpu" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)  # "cuda" below means this rank's GPU
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=10))
    return dist.get_rank(), dist.get_world_size(), local_rank


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a view: in-place ops write the DTensor), or the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


@contextlib.contextmanager
def _no_view_warning():
    """FSDP2 warns when a root method returns a view (the (B, T, D) @ (D, V) projection does): an
    in-place op on it would skip the backward hook. Nothing here modifies logits in place."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module")
        yield


class DistributedTorchBackend(TorchBackend):
    """TorchBackend whose model is wrapped in DDP or sharded by FSDP2; same contract (shared/training/loop.py)."""

    def __init__(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig,
        total_steps: int,
        init_tensors: dict[str, np.ndarray] | None = None,
        *,
        strategy: str,
    ) -> None:
        if train_config.torch_compile:
            raise ValueError("--strategy with torch_compile is not supported yet; train without torch_compile")
        self.strategy = check_strategy(strategy)
        self._plain: tuple[int, torch.nn.Module] | None = None  # (step, gathered model) for decoding
        self.rank, self.world, _ = init_process_group(train_config.device)
        self.is_main_process = self.rank == 0
        super().__init__(model_config, train_config, total_steps, init_tensors)  # same init on every rank
        if strategy == "ddp":
            device_ids = [torch.cuda.current_device()] if self.device.type == "cuda" else None  # this rank's GPU
            self.forward = DistributedDataParallel(self.model, device_ids=device_ids)
        else:
            # One FSDP unit per layer (its weights are gathered just before its forward) and the root
            # for the rest (embeddings, tied or not, final norms).
            for stack in (self.model.encoder, self.model.decoder):
                for layer in stack.layers:
                    fully_shard(layer)
            fully_shard(self.model)  # training and eval_batch call forward; decoding uses decode_model
            self.forward = self.model
        # After sharding: FSDP2 replaces the parameters by DTensors, the optimizer must hold those.
        self.optimizer = build_optimizer(self.model, train_config)
        self._seed_dropout()

    def _seed_dropout(self) -> None:
        """Rank 0 keeps the single-device dropout stream; the others draw their own."""
        if self.rank:
            torch.manual_seed(self.train_config.seed * 1_000_003 + 7919 * self.rank + self.step)

    # -- training ----------------------------------------------------------------------------------
    def train_step(self, batch: Batch) -> dict[str, Any]:
        """One update on this rank's rows of the global batch (module doc for the loss scaling)."""
        self._plain = None  # the gathered decoding copy is stale after this update: free its memory
        shard = shard_rows(batch, self.rank, self.world)
        src, tgt_in, tgt_out = self._tensors(shard)  # (B / world, S), (B / world, T), (B / world, T)
        self.model.train()
        with _no_view_warning(), self._autocast():
            logits = self._logits(self.forward, src, tgt_in)  # (B / world, T, V), bf16 under bf16-mixed
        logits = logits.to(upcast_dtype(logits.dtype))  # the loss in float32, also under bf16-mixed
        V = logits.shape[-1]
        token_loss_sum = F.cross_entropy(
            logits.reshape(-1, V), tgt_out.reshape(-1), ignore_index=self.model_config.pad_id,
            label_smoothing=self.train_config.label_smoothing, reduction="sum",
        )
        local_loss = token_loss_sum / batch.num_tokens  # this rank's share of the global token mean
        self.optimizer.zero_grad(set_to_none=True)
        (local_loss * self.world).backward()  # DDP/FSDP2 average: world * mean = sum over ranks
        grads = [_local(p.grad) for p in self.model.parameters() if p.grad is not None]
        norm = self._global_norm(grads)
        lr = self._update(grads, norm)  # clip, scheduled lr, optimizer step: as on one device
        loss = local_loss.detach().clone()
        dist.all_reduce(loss)  # sum over ranks: the global token mean
        return {"loss": loss, "grad_norm": norm.detach(), "lr": lr}

    def _global_norm(self, local_grads: list[torch.Tensor]) -> torch.Tensor:
        """sqrt of the sum of squares of the whole gradient (DDP: every rank holds all of it;
        FSDP2: each holds a shard, so the shards' sums are all-reduced)."""
        squares = torch.stack([torch.sum(g * g) for g in local_grads]).sum()
        if self.strategy == "fsdp":
            dist.all_reduce(squares)
        return torch.sqrt(squares)

    def decode(self, src: np.ndarray, max_new_tokens: int, num_beams: int = 1) -> np.ndarray:
        """As on one device; every rank decodes the same sources, with no collective while decoding.

        DDP: the wrapped module is a plain model. FSDP2: its layers hold DTensor shards and the
        incremental decoder calls submodules (cross-attention keys/values, one cached step) that
        FSDP2's hooks never see, so they would meet unsharded activations ("mixed torch.Tensor and
        DTensor"). Instead every rank gathers the full weights once per evaluation into a plain
        model (decode_model) and decodes locally: no per-step all-gathers (a decode step is a few
        matmuls, the gathers would dominate), no rank waiting in a collective while another decodes
        a longer bucket, and the tokens are the single-device ones.
        """
        return decode_sources(self.decode_model(), src, max_new_tokens, num_beams)

    def decode_model(self) -> torch.nn.Module:
        """A plain (unsharded) model holding this step's weights: the model itself under DDP; under
        FSDP2 the full state dict gathered on every rank (a collective: each rank calls it at the
        same step), built once per step and dropped at the next update."""
        if self.strategy == "ddp":
            return self.model
        if self._plain is None or self._plain[0] != self.step:
            self._plain = None  # free the old copy before gathering the new one
            model = from_numpy(self.model_config, self.model_tensors()).to(self.device).eval()
            self._plain = (self.step, set_attention_kernel(model, self.train_config.attention))
        return self._plain[1]

    # -- state in the neutral formats, gathered ------------------------------------------------------
    def model_tensors(self) -> dict[str, np.ndarray]:
        return {key: to_numpy(value) for key, value in get_model_state_dict(self.model, options=FULL).items()}

    def optimizer_state(self) -> OptimizerState:
        """Adam moments keyed by state-dict key (full tensors); parameters not yet updated have zeros."""
        state = get_optimizer_state_dict(self.model, self.optimizer, options=FULL)["state"]  # keyed by FQN
        exp_avg, exp_avg_sq = {}, {}
        for key, param in self.model.named_parameters():  # a tied weight once, as TorchBackend does
            moments = state.get(key, {})
            zeros = np.zeros(tuple(param.shape), dtype=np.float32)  # a DTensor's shape is the full shape
            exp_avg[key] = to_numpy(moments["exp_avg"]).copy() if "exp_avg" in moments else zeros
            exp_avg_sq[key] = to_numpy(moments["exp_avg_sq"]).copy() if "exp_avg_sq" in moments else zeros.copy()
        return OptimizerState(self.step, exp_avg, exp_avg_sq, hyperparams_of(self.train_config))

    def restore(self, tensors: dict[str, np.ndarray], optimizer: OptimizerState, rng: dict[str, np.ndarray] | None) -> None:
        """Full tensors (any layout, either stack) scattered to this rank's shards."""
        set_model_state_dict(self.model, {key: to_torch(tensors[key]) for key in self.model.state_dict()}, options=FULL)
        step = torch.tensor(float(optimizer.step), dtype=torch.float32)
        groups = get_optimizer_state_dict(self.model, self.optimizer, options=FULL)["param_groups"]
        set_optimizer_state_dict(
            self.model,
            self.optimizer,
            {
                "state": {
                    key: {"step": step.clone(), "exp_avg": to_torch(optimizer.exp_avg[key]),
                          "exp_avg_sq": to_torch(optimizer.exp_avg_sq[key])}
                    for key, _ in self.model.named_parameters()
                },
                "param_groups": groups,
            },
            options=FULL,
        )
        self.step = optimizer.step
        self._restore_rng(rng)
        self._seed_dropout()

    def any_process(self, flag: bool) -> bool:
        """True when `flag` is true on any rank (one decision, e.g. a time budget, for all)."""
        value = torch.tensor(int(flag), device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())


def make_distributed_backend_factory(strategy: str):
    """A backend_factory for shared.training.loop.train that builds DistributedTorchBackends."""
    check_strategy(strategy)

    def factory(framework, model_config, train_config, total_steps, init_tensors=None):
        if framework != "torch":
            raise ValueError(f"--strategy is the torch way to scale; for JAX use --mesh (got {framework})")
        return DistributedTorchBackend(model_config, train_config, total_steps, init_tensors, strategy=strategy)

    return factory


__all__ = ["DistributedTorchBackend", "init_process_group", "make_distributed_backend_factory"]
