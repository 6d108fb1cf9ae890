"""LoRA adapters of causal_lm models in the layout PEFT writes over transformers' models.

Our adapters (shared/checkpoints/adapter_io.py) are keyed by our module paths
(`base_model.model.layers.0.self_attn.c_attn.lora_A.weight`); an adapter that
`peft.PeftModel.from_pretrained(GPT2LMHeadModel...)` reads is keyed by HF's
(`base_model.model.transformer.h.0.attn.c_attn.lora_A.weight`). The tensors are the same: lora_A
(r, in) and lora_B (out, r) whatever the base layer is, because PEFT keeps A and B as Linear layers
also on GPT-2's Conv1D and sets fan_in_fan_out=True to transpose only the merged delta. So this
module renames keys and target names (the family's module table) and sets fan_in_fan_out, nothing
else: a round trip is byte-equal.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from shared.checkpoints.adapter_io import (
    ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, KEY_PREFIX, AdapterError, check_adapter_tensors,
    lora_config_from_peft, peft_config_dict,
)
from shared.checkpoints.checkpoint import _atomic_write, read_tensors
from shared.config.model_config import ModelConfig
from shared.families.causal_lm import is_gpt2, module_table
from shared.checkpoints.lora_config import LoRAConfig


def _leaf_names(config: ModelConfig) -> dict[str, set[str]]:
    """{our Linear leaf name: {HF leaf names}} (GPT-2: o_proj and down_proj are both c_proj)."""
    names: dict[str, set[str]] = {}
    for ours, hf in module_table(config).items():
        names.setdefault(ours.rsplit(".", 1)[-1], set()).add(hf.rsplit(".", 1)[-1])
    return names


def _rename_targets(lora: LoRAConfig, mapping: dict[str, set[str]], direction: str) -> tuple[str, ...]:
    if isinstance(lora.target_modules, str):
        raise AdapterError(f"a regex target_modules ({lora.target_modules!r}) cannot be renamed {direction}; list the names")
    unknown = [name for name in lora.target_modules if name not in mapping]
    if unknown:
        raise AdapterError(f"target modules {unknown} have no counterpart {direction}; known: {sorted(mapping)}")
    return tuple(sorted({new for name in lora.target_modules for new in mapping[name]}))


def _rename_keys(tensors: dict[str, np.ndarray], modules: dict[str, str], source: str) -> dict[str, np.ndarray]:
    renamed, problems = {}, []
    for key, value in tensors.items():
        body = key.removeprefix(KEY_PREFIX)
        module, _, suffix = body.partition(".lora_")
        if not key.startswith(KEY_PREFIX) or not suffix or module not in modules:
            problems.append(f"{key}: not a LoRA weight of a module this model has")
            continue
        renamed[f"{KEY_PREFIX}{modules[module]}.lora_{suffix}"] = value
    if problems:
        raise AdapterError(f"{source} ({len(problems)} problem(s)):\n  - " + "\n  - ".join(problems))
    return renamed


def _conv1d_only(config: ModelConfig, lora: LoRAConfig) -> bool:
    """GPT-2's adapters sit on Conv1D layers (fan_in_fan_out); its lm_head is a plain Linear."""
    if not is_gpt2(config):
        return False
    if "lm_head" in lora.target_modules:
        raise AdapterError("a GPT-2 adapter mixing lm_head (Linear) with Conv1D layers needs per-layer fan_in_fan_out")
    return True


def save_hf_adapter(directory: str | Path, config: ModelConfig, lora: LoRAConfig, tensors: dict[str, np.ndarray],
                    base_model_name_or_path: str | None = None) -> Path:
    """Write our adapter (our keys) as the directory PEFT reads over the transformers model."""
    if lora.modules_to_save:
        raise AdapterError("modules_to_save are not translated to the transformers layout yet")
    check_adapter_tensors(config, lora, tensors, "the adapter to save")
    hf_lora = lora.replace(target_modules=_rename_targets(lora, {k: v for k, v in _leaf_names(config).items()}, "in transformers"))
    data = peft_config_dict(hf_lora, base_model_name_or_path) | {"fan_in_fan_out": _conv1d_only(config, lora)}
    hf_tensors = {k: np.ascontiguousarray(v) for k, v in _rename_keys(tensors, module_table(config), "the adapter").items()}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    from safetensors.numpy import save_file

    _atomic_write(directory / ADAPTER_WEIGHTS_FILE, lambda tmp: save_file(hf_tensors, tmp, metadata={"format": "pt"}))
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    _atomic_write(directory / ADAPTER_CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))
    return directory


def load_hf_adapter(directory: str | Path, config: ModelConfig) -> tuple[LoRAConfig, dict[str, np.ndarray]]:
    """Read a PEFT adapter saved over transformers' GPT-2 / Llama: (our LoRAConfig, our-keyed tensors)."""
    path = Path(directory) / ADAPTER_CONFIG_FILE
    if not path.is_file():
        raise AdapterError(f"{path} not found: an adapter directory holds {ADAPTER_CONFIG_FILE} and {ADAPTER_WEIGHTS_FILE}")
    data = json.loads(path.read_text())
    if is_gpt2(config):  # PEFT sets it on Conv1D layers itself; the A and B tensors do not depend on it
        if not data.get("fan_in_fan_out", False):
            raise AdapterError(f"{path}: a GPT-2 (Conv1D) adapter has fan_in_fan_out true, found false")
        data = data | {"fan_in_fan_out": False}
    hf_lora = lora_config_from_peft(data, str(path))
    if hf_lora.modules_to_save:
        raise AdapterError(f"{path}: modules_to_save are not translated from the transformers layout yet")
    inverse: dict[str, set[str]] = {}
    for ours, hf_names in _leaf_names(config).items():
        for hf in hf_names:
            inverse.setdefault(hf, set()).add(ours)
    lora = hf_lora.replace(target_modules=_rename_targets(hf_lora, inverse, "in twinformer"))
    ours_of = {hf: ours for ours, hf in module_table(config).items()}
    tensors = _rename_keys(read_tensors(Path(directory) / ADAPTER_WEIGHTS_FILE), ours_of, str(directory))
    check_adapter_tensors(config, lora, tensors, str(directory))
    return lora, tensors
