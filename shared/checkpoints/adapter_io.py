"""LoRA adapter directories in the Hugging Face PEFT format, read and written with numpy.

A directory holds `adapter_config.json` (PEFT's LoraConfig fields) and `adapter_model.safetensors`
with the keys PEFT 0.21's save_pretrained writes (adapter name stripped):
    base_model.model.<module path>.lora_A.weight   (r, in)
    base_model.model.<module path>.lora_B.weight   (out, r)
    base_model.model.<saved module path>.<leaf>    (PyTorch state-dict layout, for modules_to_save)
Both stacks use this one reader and writer, so an adapter moves between torch_impl, jax_impl and
`peft.PeftModel.from_pretrained` unchanged, and a round trip through both stacks is byte-identical.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from shared.checkpoints.adapter_base import check_adapter_on_checkpoint, check_adapter_on_tensors
from shared.checkpoints.checkpoint import FLOAT_DTYPES, CheckpointError, _atomic_write, read_tensors
from shared.config.model_config import ModelConfig
from shared.families import family_of
from shared.checkpoints.lora_config import LoRAConfig, LoRAConfigError, _module_paths, resolve_targets, saved_param_specs
from shared.checkpoints.paths import CheckpointPathError, resolve

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."  # PeftModel.base_model (LoraModel) .model (the wrapped Transformer)

# PEFT LoraConfig fields that would change the math; an adapter using any of them is refused
# rather than silently loaded as plain LoRA. Value: the setting that means "not used".
_UNSUPPORTED_PEFT_FIELDS: dict[str, Any] = {
    "use_dora": False,
    "fan_in_fan_out": False,
    "lora_bias": False,
    "rank_pattern": {},
    "alpha_pattern": {},
    "layers_to_transform": None,
    "layers_pattern": None,
    "layer_replication": None,
    "exclude_modules": None,
    "target_parameters": None,
    "trainable_token_indices": None,
    "alora_invocation_tokens": None,
    "use_qalora": False,
    "use_bdlora": None,
}


class AdapterError(CheckpointError):
    """An adapter directory that cannot be used with this model; lists every problem found."""


def lora_key(module: str, which: str) -> str:
    """('encoder.layers.0.self_attn.q_proj', 'A') -> the PEFT key of its lora_A weight."""
    return f"{KEY_PREFIX}{module}.lora_{which}.weight"


def saved_key(torch_key: str) -> str:
    """State-dict key of a modules_to_save parameter -> its PEFT key."""
    return KEY_PREFIX + torch_key


# -- adapter_config.json <-> LoRAConfig ----------------------------------------------------------
def peft_config_dict(lora: LoRAConfig, base_model_name_or_path: str | None = None) -> dict[str, Any]:
    """The adapter_config.json PEFT reads (its LoraConfig field names)."""
    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    return {
        "peft_type": "LORA",
        "task_type": None,  # a custom nn.Module: plain PeftModel, no task head
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": lora.r,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": targets,
        "use_rslora": lora.use_rslora,
        "modules_to_save": list(lora.modules_to_save) or None,
        "bias": lora.bias,
        "init_lora_weights": True,
        **_UNSUPPORTED_PEFT_FIELDS,
    }


def lora_config_from_peft(data: dict[str, Any], source: str = "adapter_config.json") -> LoRAConfig:
    """Read PEFT's adapter_config.json fields; refuse adapters that use features beyond plain LoRA."""
    if not isinstance(data, dict):
        raise AdapterError(f"{source}: expected a JSON object, got {type(data).__name__}")
    problems: list[str] = []
    if data.get("peft_type") != "LORA":
        problems.append(f"peft_type is {data.get('peft_type')!r}, expected 'LORA'")
    for name in ("r", "lora_alpha", "target_modules"):
        if name not in data:
            problems.append(f"missing field {name!r}")
    for name, unused in _UNSUPPORTED_PEFT_FIELDS.items():
        value = data.get(name, unused)
        if value not in (unused, None, False, {}, []):
            problems.append(f"{name}={value!r} is not supported (plain LoRA only)")
    if problems:
        raise AdapterError(f"{source} cannot be used ({len(problems)} problem(s)):\n  - " + "\n  - ".join(problems))
    targets = data["target_modules"]
    try:
        return LoRAConfig(
            r=data["r"],
            alpha=data["lora_alpha"],
            dropout=data.get("lora_dropout", 0.0),
            target_modules=targets if isinstance(targets, str) else tuple(targets or ()),
            use_rslora=data.get("use_rslora", False),
            modules_to_save=tuple(data.get("modules_to_save") or ()),
            bias=data.get("bias", "none"),
        )
    except LoRAConfigError as error:
        raise AdapterError(f"{source}: {error}") from error


# -- tensors ---------------------------------------------------------------------------------------
def expected_adapter_shapes(config: ModelConfig, lora: LoRAConfig) -> dict[str, tuple[int, ...]]:
    """{PEFT key: PyTorch shape} of every tensor an adapter for this model and config holds."""
    shapes: dict[str, tuple[int, ...]] = {}
    for target in resolve_targets(config, lora):
        shapes[lora_key(target.module, "A")] = (lora.r, target.in_features)
        shapes[lora_key(target.module, "B")] = (target.out_features, lora.r)
    for spec in saved_param_specs(config, lora):
        shapes[saved_key(spec.torch_key)] = spec.torch_shape
    return shapes


def check_adapter_tensors(
    config: ModelConfig, lora: LoRAConfig, tensors: dict[str, np.ndarray], source: str
) -> None:
    """Fail with every problem at once unless `tensors` is exactly the adapter `lora` implies."""
    try:
        expected = expected_adapter_shapes(config, lora)
    except LoRAConfigError as error:
        raise AdapterError(f"{source}: the adapter config does not fit the base model: {error}") from error
    problems: list[str] = []
    for key, shape in expected.items():
        if key not in tensors:
            problems.append(f"missing key {key}: expected shape {shape}")
            continue
        found = tuple(tensors[key].shape)
        if found == shape:
            continue
        message = f"shape mismatch for {key}: expected {shape}, found {found}"
        if key.endswith(".lora_A.weight") and len(found) == 2 and found[0] != lora.r:
            message += f" (rank {found[0]} in the file, r={lora.r} in the config)"
        elif key.endswith(".lora_B.weight") and len(found) == 2 and found[1] != lora.r:
            message += f" (rank {found[1]} in the file, r={lora.r} in the config)"
        else:
            message += " (was the adapter trained on a base model of another size?)"
        problems.append(message)
    modules = _module_paths(config)
    for key in tensors:
        if key in expected:
            continue
        module = key.removeprefix(KEY_PREFIX).rsplit(".", 1)[0].removesuffix(".lora_A").removesuffix(".lora_B")
        if not key.startswith(KEY_PREFIX):
            problems.append(f"unexpected key {key}: PEFT adapter keys start with {KEY_PREFIX!r}")
        elif module not in modules:
            problems.append(f"unknown module in {key}: the base model has no module {module!r}")
        else:
            problems.append(f"unexpected key {key}: {module!r} is neither a LoRA target nor in modules_to_save")
    for key, tensor in tensors.items():
        if np.dtype(tensor.dtype) not in FLOAT_DTYPES.values():
            problems.append(f"dtype of {key}: expected a float dtype, found {tensor.dtype}")
    if problems:
        raise AdapterError(
            f"{source} does not fit the base model ({len(problems)} problem(s)):\n  - " + "\n  - ".join(problems)
        )


# -- directories -----------------------------------------------------------------------------------
def save_adapter(
    directory: str | Path,
    config: ModelConfig,
    lora: LoRAConfig,
    tensors: dict[str, np.ndarray],
    base_model_name_or_path: str | None = None,
) -> Path:
    """Write adapter_config.json + adapter_model.safetensors (checked against the model first)."""
    directory = Path(directory)
    tensors = {key: np.ascontiguousarray(value) for key, value in tensors.items()}
    check_adapter_tensors(config, lora, tensors, "the adapter to save")
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(peft_config_dict(lora, base_model_name_or_path), indent=2, sort_keys=True) + "\n"
    # PEFT writes metadata {"format": "pt"}; transformers/PEFT readers expect it.
    _atomic_write(directory / ADAPTER_WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    _atomic_write(directory / ADAPTER_CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))
    return directory


def read_adapter_config(directory: str | Path) -> LoRAConfig:
    path = Path(directory) / ADAPTER_CONFIG_FILE
    if not path.is_file():
        raise AdapterError(
            f"{path} not found: an adapter directory holds {ADAPTER_CONFIG_FILE} and {ADAPTER_WEIGHTS_FILE}"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise AdapterError(f"{path} is not valid JSON: {error}") from error
    return lora_config_from_peft(data, str(path))


def load_adapter(
    directory: str | Path,
    config: ModelConfig,
    *,
    base: str | Path | None = None,
    base_tensors: Callable[[], dict] | None = None,
    force: bool = False,
) -> tuple[LoRAConfig, dict[str, np.ndarray]]:
    """Read and check an adapter against the base model's config: (LoRAConfig, {key: array}).

    `directory` is found by the one path rule (shared/checkpoints/paths.py, kind "adapter"): an
    adapter directory (ours or PEFT's), a LoRA checkpoint, a LoRA run (its latest checkpoint), or a
    directory holding one in adapter/. An adapter PEFT trained on the Hugging Face model of this
    family (keys and target_modules in HF's names, e.g. the book's FLAN-T5 adapter on
    `SelfAttention.q`) is renamed to ours first. An adapter made for a model of another size is
    refused with a first line naming both sizes (then every misfit tensor). Given the base (`base`: its checkpoint directory, hash
    cached; or `base_tensors()`: its weights in memory), the base hash the adapter recorded is
    checked (shared/checkpoints/adapter_base.py; `force` turns a mismatch into a warning).
    """
    if not Path(directory).exists():
        raise AdapterError(f"adapter directory {directory} does not exist")
    try:
        directory = resolve(directory, "adapter")
    except CheckpointPathError as error:  # the same message as --adapter's, as an AdapterError
        raise AdapterError(str(error)) from error
    lora = read_adapter_config(directory)
    tensors = read_tensors(directory / ADAPTER_WEIGHTS_FILE)
    try:
        lora, tensors = from_hf_names(config, lora, tensors, str(directory))
        check_adapter_tensors(config, lora, tensors, str(directory / ADAPTER_WEIGHTS_FILE))
    except AdapterError as error:
        if (sizes := size_mismatch(config, tensors)) is not None:
            raise AdapterError(f"{directory} does not fit this model: {sizes}\n{error}") from error
        raise
    if base is not None:
        check_adapter_on_checkpoint(directory, base, force)
    elif base_tensors is not None:
        check_adapter_on_tensors(directory, base_tensors, force)
    return lora, tensors


def size_mismatch(config: ModelConfig, tensors: dict[str, np.ndarray]) -> str | None:
    """"adapter was trained on 12 layers of d_model 768; this model has 2 layers of d_model 64", or
    None when the adapter's layer count and width agree with the model's (or cannot be told).

    Layers: the highest layer index in the adapter's module paths, plus one. Width: the input size
    most of its lora_A matrices share (attention and FFN-in targets read the d_model-wide stream)."""
    indices = [int(part) for key in tensors for part in _adapter_module(key).split(".") if part.isdigit()]
    widths = Counter(int(v.shape[1]) for k, v in tensors.items() if k.endswith(".lora_A.weight") and v.ndim == 2)
    if not indices or not widths:
        return None
    layers, width = max(indices) + 1, widths.most_common(1)[0][0]
    ours = max(config.num_encoder_layers, config.num_decoder_layers)
    if (layers, width) == (ours, config.d_model):
        return None
    return (f"adapter was trained on {layers} layers of d_model {width}; this model has {ours} layers of "
            f"d_model {config.d_model}")  # fmt: skip


def from_hf_names(
    config: ModelConfig, lora: LoRAConfig, tensors: dict[str, np.ndarray], source: str
) -> tuple[LoRAConfig, dict[str, np.ndarray]]:
    """Rename an adapter made on the HF model (PEFT keys on HF module paths) to our module paths.

    Adapters already in our names, and those of families without an HF mapping, pass unchanged.
    The module renames come from the family's HF key table; target_modules names from its
    `linear_names` (T5: q -> q_proj, o -> out_proj, lm_head -> output_proj), so PEFT's suffix
    matching selects the same layers on both sides.
    """
    mapping = family_of(config).hf
    if mapping is None:
        return lora, tensors
    hf_to_ours = {hf.removesuffix(".weight"): ours.removesuffix(".weight")
                  for ours, hf in mapping.key_table(config).items()}
    modules = {_adapter_module(key) for key in tensors}
    if not modules or not modules <= set(hf_to_ours) or modules & set(_module_paths(config)):
        return lora, tensors  # ours already (or a misfit, which check_adapter_tensors reports)
    problems = []
    if isinstance(lora.target_modules, str):
        problems.append(f"target_modules is a regex ({lora.target_modules!r}); only name lists are renamed")
    else:
        problems += [f"target module {name!r} has no twinformer name (known: {', '.join(sorted(mapping.linear_names))})"
                     for name in lora.target_modules if name not in mapping.linear_names]
    if lora.modules_to_save:
        problems.append(f"modules_to_save {list(lora.modules_to_save)} on HF names are not supported")
    if problems:
        raise AdapterError(f"{source}: this HF-named adapter cannot be renamed:\n  - " + "\n  - ".join(problems))
    renamed = lora.replace(target_modules=tuple(mapping.linear_names[name] for name in lora.target_modules))
    return renamed, {
        KEY_PREFIX + hf_to_ours[_adapter_module(key)] + key.removeprefix(KEY_PREFIX + _adapter_module(key)): value
        for key, value in tensors.items()
    }


def to_hf_names(
    config: ModelConfig, lora: LoRAConfig, tensors: dict[str, np.ndarray]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """An adapter of ours -> (adapter_config.json dict, tensors) on the HF model's names, for
    `peft.PeftModel.from_pretrained(<transformers model>, directory)` (the inverse of from_hf_names)."""
    mapping = family_of(config).hf
    if mapping is None:
        raise AdapterError(f"the {config.family} family has no Hugging Face mapping")
    check_adapter_tensors(config, lora, tensors, "the adapter to export")
    problems = []
    if isinstance(lora.target_modules, str):
        problems.append(f"target_modules is a regex ({lora.target_modules!r}); only name lists are renamed")
    ours_to_hf_leaf = {ours: hf for hf, ours in mapping.linear_names.items()}
    if not isinstance(lora.target_modules, str):
        problems += [f"target module {name!r} has no HF name" for name in lora.target_modules if name not in ours_to_hf_leaf]
    if lora.modules_to_save:
        problems.append("modules_to_save cannot be exported to HF names")
    if problems:
        raise AdapterError("the adapter cannot be exported:\n  - " + "\n  - ".join(problems))
    ours_to_hf = {ours.removesuffix(".weight"): hf.removesuffix(".weight") for ours, hf in mapping.key_table(config).items()}
    renamed = {
        KEY_PREFIX + ours_to_hf[_adapter_module(key)] + key.removeprefix(KEY_PREFIX + _adapter_module(key)): value
        for key, value in tensors.items()
    }
    hf_config = peft_config_dict(lora.replace(target_modules=tuple(ours_to_hf_leaf[n] for n in lora.target_modules)))
    hf_config["task_type"] = "SEQ_2_SEQ_LM"  # PeftModelForSeq2SeqLM on T5ForConditionalGeneration
    return hf_config, renamed


def save_adapter_hf(directory: str | Path, config: ModelConfig, lora: LoRAConfig, tensors: dict[str, np.ndarray]) -> Path:
    """Write an adapter of ours on the HF model's names (see to_hf_names)."""
    hf_config, renamed = to_hf_names(config, lora, tensors)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    renamed = {key: np.ascontiguousarray(value) for key, value in renamed.items()}
    _atomic_write(directory / ADAPTER_WEIGHTS_FILE, lambda tmp: save_file(renamed, tmp, metadata={"format": "pt"}))
    text = json.dumps(hf_config, indent=2, sort_keys=True) + "\n"
    _atomic_write(directory / ADAPTER_CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))
    return directory


def _adapter_module(key: str) -> str:
    """'base_model.model.<module>.lora_A.weight' -> '<module>'."""
    return key.removeprefix(KEY_PREFIX).rsplit(".", 2)[0]
