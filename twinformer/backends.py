"""The framework choice: which stack's backend trains, fine-tunes and evaluates.

The training loop (shared/training/loop.py) and fine-tuning (shared/training/finetune.py) take a backend
factory and never import a stack; the commands pick the framework here and hand the factory down.
The stacks are imported inside the functions, so the one not chosen is never loaded (and
`--threads` is applied before either is).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.training.train_config import FRAMEWORKS

if TYPE_CHECKING:
    import numpy as np

    from shared.config.model_config import ModelConfig
    from shared.checkpoints.lora_config import LoRAConfig
    from shared.training.train_config import TrainConfig


def _unknown(framework: str) -> ValueError:
    return ValueError(f"unknown framework {framework!r}; expected one of {', '.join(FRAMEWORKS)}")


def make_backend(
    framework: str,
    model_config: "ModelConfig",
    train_config: "TrainConfig",
    total_steps: int,
    init_tensors: "dict[str, np.ndarray] | None" = None,
) -> Any:
    """A fresh single-device backend of the named framework (a shared.training.loop.BackendFactory)."""
    if framework == "torch":
        from torch_impl.training import TorchBackend as backend_class
    elif framework == "jax":
        from jax_impl.training import JaxBackend as backend_class
    else:
        raise _unknown(framework)
    return backend_class(model_config, train_config, total_steps, init_tensors)


def make_lora_backend(
    framework: str,
    model_config: "ModelConfig",
    train_config: "TrainConfig",
    total_steps: int,
    base_tensors: "dict[str, np.ndarray]",
    lora: "LoRAConfig",
    adapter_tensors: "dict[str, np.ndarray] | None" = None,
) -> Any:
    """A backend training only the adapter of `lora` on frozen base weights (fresh adapter unless
    given; a shared.training.finetune.LoRABackendFactory)."""
    if framework == "torch":
        from torch_impl.finetune import LoRATorchBackend as backend_class
    elif framework == "jax":
        from jax_impl.finetune import LoRAJaxBackend as backend_class
    else:
        raise _unknown(framework)
    return backend_class(model_config, train_config, total_steps, base_tensors, lora, adapter_tensors)


__all__ = ["make_backend", "make_lora_backend"]
