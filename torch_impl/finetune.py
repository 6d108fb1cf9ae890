"""PyTorch LoRA fine-tuning: the pre-training backend with the model wrapped by PEFT.

Everything but the model is TorchBackend's: the same loss, clipping, schedule and optimizer, which
build_optimizer gives only the parameters with requires_grad (the adapter and modules_to_save;
PEFT freezes the base). Weights and Adam moments leave and enter in PEFT adapter keys
(`base_model.model.<module>.lora_A.weight`, torch layout), so a checkpoint is an adapter directory
and jax_impl/finetune.py resumes it.
"""

from __future__ import annotations

import numpy as np
import peft
import torch

from shared.checkpoints.adapter_io import expected_adapter_shapes
from shared.config.model_config import ModelConfig
from shared.checkpoints.lora_config import LoRAConfig
from shared.checkpoints.optimizer_state import OptimizerState, hyperparams_of
from shared.training.train_config import TrainConfig
from torch_impl import lora as torch_lora
from torch_impl.numpy_bridge import to_numpy, to_torch
from torch_impl.training import TorchBackend, decode_sources


def peft_key(parameter_name: str) -> str:
    """A PeftModel parameter name -> its key in adapter_model.safetensors (adapter name dropped).

    '...q_proj.lora_A.default.weight' -> '...q_proj.lora_A.weight';
    '...output_proj.modules_to_save.default.weight' -> '...output_proj.weight' (PEFT's own mapping).
    """
    return parameter_name.replace(".modules_to_save.default.", ".").replace(".default.", ".")


class LoRATorchBackend(TorchBackend):
    """Frozen base + trainable PEFT adapter, driven by shared.training.loop like TorchBackend."""

    def __init__(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig,
        total_steps: int,
        base_tensors: dict[str, np.ndarray],
        lora: LoRAConfig,
        adapter_tensors: dict[str, np.ndarray] | None = None,
    ) -> None:
        # bf16-mixed as in pre-training: TorchBackend's autocast; the frozen base and the adapter
        # stay float32 masters (parity_tests/test_torch_attention.py runs T5 and causal-LM steps)
        self.lora = lora
        self._initial_adapter = adapter_tensors
        super().__init__(model_config, train_config, total_steps, base_tensors)
        self.trainable = self._trainable_by_key()

    def _make_model(self, init_tensors: dict[str, np.ndarray] | None) -> peft.PeftModel:
        """The base model wrapped by PEFT: fresh adapter (A from the seeded torch RNG, B = 0) or the given one."""
        peft_model = torch_lora.apply_lora(super()._make_model(init_tensors), self.lora)
        if self._initial_adapter is not None:
            torch_lora.set_adapter_tensors(peft_model, self._initial_adapter)
        return peft_model

    def _trainable_by_key(self) -> dict[str, torch.nn.Parameter]:
        """{PEFT key: parameter} of everything the optimizer updates, in the optimizer's order."""
        named = {peft_key(n): p for n, p in self.model.named_parameters() if p.requires_grad}
        expected = expected_adapter_shapes(self.model_config, self.lora)
        if set(named) != set(expected):
            raise RuntimeError(
                f"PEFT's trainable parameters do not match the adapter keys: only in PEFT "
                f"{sorted(set(named) - set(expected))}, only expected {sorted(set(expected) - set(named))}"
            )
        return named

    @property
    def base_model(self) -> torch.nn.Module:
        """The Transformer with its LoRA-wrapped Linear layers (what decoding calls)."""
        return self.model.get_base_model()

    def parameter_report(self) -> str:
        return torch_lora.parameter_report(self.model)

    # -- decoding: the adapter active (unmerged), dropout off (eval_batch is TorchBackend's) ---------
    def decode(self, src: np.ndarray, max_new_tokens: int, num_beams: int = 1) -> np.ndarray:
        return decode_sources(self.base_model, src, max_new_tokens, num_beams)

    # -- state in the neutral formats (PEFT keys, torch layout) -------------------------------------
    def model_tensors(self) -> dict[str, np.ndarray]:
        """The adapter's tensors {PEFT key: array}, as adapter_model.safetensors holds them."""
        return {key: to_numpy(p.detach()).copy() for key, p in self.trainable.items()}

    def optimizer_state(self) -> OptimizerState:
        """Adam moments of the trainable tensors only, keyed by PEFT key (zero before the first update)."""
        exp_avg, exp_avg_sq = {}, {}
        for key, param in self.trainable.items():
            state = self.optimizer.state.get(param, {})
            zeros = np.zeros(tuple(param.shape), dtype=np.float32)
            exp_avg[key] = to_numpy(state["exp_avg"]).copy() if "exp_avg" in state else zeros
            exp_avg_sq[key] = to_numpy(state["exp_avg_sq"]).copy() if "exp_avg_sq" in state else zeros.copy()
        return OptimizerState(self.step, exp_avg, exp_avg_sq, hyperparams_of(self.train_config))

    def restore(
        self, tensors: dict[str, np.ndarray], optimizer: OptimizerState, rng: dict[str, np.ndarray] | None
    ) -> None:
        """Continue from a LoRA checkpoint (written by either stack): adapter, its Adam moments, step, RNG."""
        torch_lora.set_adapter_tensors(self.model, tensors)
        step_value = torch.tensor(float(optimizer.step), dtype=torch.float32)
        # The optimizer's parameter order is model.parameters() filtered to requires_grad, which is
        # the order of self.trainable (both walk named_parameters()).
        state = {
            index: {
                "step": step_value.clone(),
                "exp_avg": to_torch(optimizer.exp_avg[key]).clone().to(param.device),
                "exp_avg_sq": to_torch(optimizer.exp_avg_sq[key]).clone().to(param.device),
            }
            for index, (key, param) in enumerate(self.trainable.items())
        }
        self.optimizer.load_state_dict({"state": state, "param_groups": self.optimizer.state_dict()["param_groups"]})
        self.step = optimizer.step
        self._restore_rng(rng)


__all__ = ["LoRATorchBackend", "peft_key"]
