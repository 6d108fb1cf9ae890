"""PyTorch training: masked cross-entropy, Adam/AdamW, global-norm clipping, one step, the backend.

The math is the twin of jax_impl/training.py (see shared/training/loop.py for what both must share):
  loss  = mean over non-pad targets of (1 - a) * nll + a * mean_v(-log p_v)   (F.cross_entropy)
  clip  = g if |g| < c else (g / |g|) * c,  |g| = sqrt(sum of all squared grads)  (optax's rule)
  lr    = shared.training.schedules.learning_rate(step), written into each param group before the update
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shared.config.model_config import ModelConfig
from shared.data.batching import Batch
from shared.families import family_of
from shared.parity.mixed_precision import compute_dtype
from shared.checkpoints.optimizer_state import OptimizerState, hyperparams_of
from shared.training.schedules import schedule_for
from shared.training.train_config import TrainConfig
from torch_impl.checkpoint import from_numpy, state_dict_numpy
from torch_impl.layers import upcast_dtype
from torch_impl.families.transformer import set_attention_kernel
from torch_impl.registry import build_model
from torch_impl.numpy_bridge import to_numpy, to_torch


def masked_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, pad_id: int, label_smoothing: float = 0.0
) -> torch.Tensor:
    """logits (B, T, V), targets (B, T) -> mean (label-smoothed) cross-entropy over non-pad targets."""
    V = logits.shape[-1]
    return F.cross_entropy(
        logits.reshape(-1, V), targets.reshape(-1).long(), ignore_index=pad_id, label_smoothing=label_smoothing
    )


def global_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """sqrt(sum_i sum(g_i ** 2)) over all gradient tensors, as optax.global_norm computes it."""
    return torch.sqrt(sum(torch.sum(g * g) for g in grads))


def clip_by_global_norm_(grads: list[torch.Tensor], max_norm: float, norm: torch.Tensor) -> None:
    """In place: g <- (g / norm) * max_norm when norm >= max_norm (optax.clip_by_global_norm's rule).

    Not torch.nn.utils.clip_grad_norm_, which scales by max_norm / (norm + 1e-6) on every call;
    one rule in both stacks keeps clipped steps identical.
    """
    # No Python `if` on the norm: that would wait for the device every step. Dividing by 1 and
    # multiplying by 1 leaves an unclipped gradient bit-for-bit unchanged.
    clip = norm >= max_norm
    torch._foreach_div_(grads, torch.where(clip, norm, 1.0))
    torch._foreach_mul_(grads, torch.where(clip, max_norm, 1.0))


def build_optimizer(model: torch.nn.Module, config: TrainConfig, fused: bool | None = None) -> torch.optim.Optimizer:
    """torch.optim.Adam (weight_decay = L2 added to the gradient) or AdamW (decoupled decay).

    Only parameters with requires_grad join: frozen ones (a LoRA base) get no Adam moments.
    fused (default: when the parameters are on a GPU): the whole update in one kernel per
    parameter group; otherwise foreach, one multi-tensor kernel per update op instead of a Python
    loop over parameters (torch's CPU default). The same update rule either way
    (parity_tests/test_fast_paths.py).
    """
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    trainable = [p for p in model.parameters() if p.requires_grad]
    if fused is None:
        fused = bool(trainable) and all(p.device.type == "cuda" for p in trainable)
    implementation = {"fused": True} if fused else {"foreach": True}
    return cls(trainable, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay,
               **implementation)


def resolve_device(name: str) -> torch.device:
    if name == "gpu" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("device 'gpu' requested but torch sees no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


class TorchBackend:
    """Model + optimizer + RNG of a PyTorch run, driven by shared.training.loop (one update per call)."""

    framework = "torch"
    lora = None  # a LoRAConfig in fine-tuning backends that train adapters only (torch_impl/finetune.py)

    def __init__(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig,
        total_steps: int,
        init_tensors: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.model_config, self.train_config = model_config, train_config
        self.device = resolve_device(train_config.device)
        # Full float32 matmuls unless asked otherwise (pitfall 1): the JAX twin pins the same.
        torch.backends.cuda.matmul.allow_tf32 = train_config.matmul_precision == "tf32"
        torch.backends.cudnn.allow_tf32 = train_config.matmul_precision == "tf32"
        torch.manual_seed(train_config.seed)  # the init, then the dropout stream, follow from the seed
        self.model = self._make_model(init_tensors)
        self.model.to(self.device).train()
        self.forward = torch.compile(self.model) if train_config.torch_compile else self.model
        # bf16-mixed: float32 master weights, gradients and Adam moments; autocast runs the matmuls
        # in bf16 (shared/parity/mixed_precision.py lists what computes where; jax_impl does the same).
        self.autocast_dtype = getattr(torch, compute_dtype(train_config.precision) or "float32")
        self.mixed = compute_dtype(train_config.precision) is not None
        self.optimizer = build_optimizer(self.model, train_config)
        self.schedule = schedule_for(train_config, total_steps)
        self.step = 0

    def _make_model(self, init_tensors: dict[str, np.ndarray] | None) -> torch.nn.Module:
        """The module to train (a hook: fine-tuning backends wrap it), on the CPU, seeded RNG."""
        if init_tensors is None:
            model = build_model(self.model_config)
        else:
            # Copies: training updates the weights in place, and the caller's arrays (often the same
            # init handed to both stacks) must not change under it.
            model = from_numpy(self.model_config, {key: np.array(value, copy=True) for key, value in init_tensors.items()})
        return set_attention_kernel(model, self.train_config.attention)

    # -- training ----------------------------------------------------------------------------------
    def _tensors(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        as_long = lambda a: torch.as_tensor(a, dtype=torch.long, device=self.device)  # noqa: E731
        return as_long(batch.src), as_long(batch.tgt_in), as_long(batch.tgt_out)

    def _logits(self, model, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """(B, T, V): an encoder-decoder reads (src, tgt_in); a decoder-only LM reads tgt_in (BOS + text, right-padded)."""
        if family_of(self.model_config).decoder_only:
            return model(tgt_in, tgt_in != self.model_config.pad_id)
        return model(src, tgt_in)

    def train_step(self, batch: Batch) -> dict[str, Any]:
        """One update on one batch: loss, backward, clip, lr from the schedule, optimizer step."""
        src, tgt_in, tgt_out = self._tensors(batch)  # (B, S), (B, T), (B, T)
        self.model.train()
        with self._autocast():
            logits = self._logits(self.forward, src, tgt_in)  # (B, T, V), bf16 under bf16-mixed
        logits = logits.to(upcast_dtype(logits.dtype))  # the loss in float32, also under bf16-mixed
        loss = masked_cross_entropy(logits, tgt_out, self.model_config.pad_id, self.train_config.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        norm = global_norm(grads)
        lr = self._update(grads, norm)
        return {"loss": loss.detach(), "grad_norm": norm.detach(), "lr": lr}

    def _update(self, grads: list[torch.Tensor], norm: torch.Tensor) -> float:
        """Clip by the global norm, set the scheduled lr, take the optimizer step; returns the lr."""
        if self.train_config.clip_norm is not None:
            clip_by_global_norm_(grads, self.train_config.clip_norm, norm)
        lr = float(self.schedule(self.step))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.step += 1
        return lr

    # -- evaluation --------------------------------------------------------------------------------
    @torch.no_grad()
    def eval_batch(self, batch: Batch) -> tuple[float, int]:
        """(sum of per-token negative log-likelihood over non-pad targets, their count); dropout off."""
        src, tgt_in, tgt_out = self._tensors(batch)
        self.model.eval()
        with self._autocast():
            logits = self._logits(self.model, src, tgt_in)  # (B, T, V)
        logits = logits.to(upcast_dtype(logits.dtype))  # the loss in float32, also under bf16-mixed
        nll = F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=self.model_config.pad_id, reduction="sum")
        self.model.train()
        return float(nll), int((tgt_out != self.model_config.pad_id).sum())

    def _autocast(self):
        """torch.autocast to bf16 under bf16-mixed; a no-op context otherwise."""
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.mixed)

    def decode(self, src: np.ndarray, max_new_tokens: int, num_beams: int = 1) -> np.ndarray:
        """src (B, S) -> ids (B, T_out), BOS excluded: greedy, or beam search when num_beams > 1.

        Always float32 compute (also under bf16-mixed), as jax_impl's decoding: the same tokens.
        """
        return decode_sources(self.model, src, max_new_tokens, num_beams)


    # -- state in the neutral formats ---------------------------------------------------------------
    def model_tensors(self) -> dict[str, np.ndarray]:
        """A snapshot of the weights (copies: the live tensors keep training)."""
        return {key: np.array(value, copy=True) for key, value in state_dict_numpy(self.model).items()}

    def optimizer_state(self) -> OptimizerState:
        """Adam moments keyed by state-dict key; parameters never updated yet have zero moments."""
        exp_avg, exp_avg_sq = {}, {}
        for key, param in self.model.named_parameters():
            state = self.optimizer.state.get(param, {})
            zeros = np.zeros(tuple(param.shape), dtype=np.float32)
            exp_avg[key] = to_numpy(state["exp_avg"]).copy() if "exp_avg" in state else zeros
            exp_avg_sq[key] = to_numpy(state["exp_avg_sq"]).copy() if "exp_avg_sq" in state else zeros.copy()
        return OptimizerState(self.step, exp_avg, exp_avg_sq, hyperparams_of(self.train_config))

    def rng_state(self) -> dict[str, np.ndarray]:
        state = {"torch_cpu": torch.get_rng_state().numpy().copy()}
        if self.device.type == "cuda":
            state["torch_cuda"] = torch.cuda.get_rng_state(self.device).numpy().copy()
        return state

    def restore(
        self, tensors: dict[str, np.ndarray], optimizer: OptimizerState, rng: dict[str, np.ndarray] | None
    ) -> None:
        """Continue from a checkpoint (written by either stack): weights, Adam moments, step, RNG."""
        with torch.no_grad():
            for key, param in self.model.named_parameters():
                param.copy_(to_torch(tensors[key]))
        step_value = torch.tensor(float(optimizer.step), dtype=torch.float32)
        state = {}
        for index, (key, _) in enumerate(self.model.named_parameters()):
            state[index] = {
                "step": step_value.clone(),
                "exp_avg": to_torch(optimizer.exp_avg[key]).clone(),
                "exp_avg_sq": to_torch(optimizer.exp_avg_sq[key]).clone(),
            }
        self.optimizer.load_state_dict({"state": state, "param_groups": self.optimizer.state_dict()["param_groups"]})
        self.step = optimizer.step
        self._restore_rng(rng)

    def _restore_rng(self, rng: dict[str, np.ndarray] | None) -> None:
        """The checkpoint's torch RNG state, or one derived from (seed, step) for a run JAX started."""
        if rng is not None and "torch_cpu" in rng:
            torch.set_rng_state(torch.from_numpy(np.ascontiguousarray(rng["torch_cpu"])))
            if self.device.type == "cuda" and "torch_cuda" in rng:
                torch.cuda.set_rng_state(torch.from_numpy(np.ascontiguousarray(rng["torch_cuda"])), self.device)
        else:
            # A run started in JAX: its dropout stream cannot be carried over, so derive a fresh
            # one from (seed, step); runs without dropout are unaffected.
            torch.manual_seed(self.train_config.seed * 1_000_003 + self.step)


__all__ = [
    "decode_sources",
    "TorchBackend",
    "build_optimizer",
    "clip_by_global_norm_",
    "global_norm",
    "masked_cross_entropy",
]


def decode_sources(model: torch.nn.Module, src: np.ndarray, max_new_tokens: int, num_beams: int = 1) -> np.ndarray:
    """src (B, S) -> ids (B, T_out) through torch_impl.generate: greedy, or beam search when num_beams > 1
    (shared.decoding.generation.search_config, as jax_impl's backends)."""
    from shared.decoding.generation import search_config
    from torch_impl.generate import generate

    return generate(model, src, None, search_config(max_new_tokens, model.config.max_len, num_beams))
