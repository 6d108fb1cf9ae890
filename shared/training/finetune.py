"""Fine-tuning a trained checkpoint, fully or with LoRA, through the pre-training loop.

    full   every weight trains from the base checkpoint's values (book ch5: AdamW, lr 2e-5, wd 0.01);
           checkpoints are ordinary training checkpoints (shared/training/run_checkpoint.py)
    lora   the base stays frozen; a backend that trains only the adapter (and modules_to_save)
           plugs into shared.training.loop.train (torch_impl/finetune.py, jax_impl/finetune.py);
           each checkpoint is itself a PEFT adapter directory plus the state to resume
           (shared/checkpoints/adapter_checkpoint.py), with rng / trainer_state / train_config / tokenizer
           as any training checkpoint

The base checkpoint's tokenizer and model config are reused as they are: a fine-tune never retrains
the tokenizer or changes the architecture. Moments are keyed by the PEFT adapter keys in torch
layout, so a LoRA run resumes in either framework, as pre-training runs do.
The caller (the CLI, twinformer/backends.py) chooses the framework's backends and hands them in:
nothing in shared/ imports torch or jax.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.checkpoints.adapter_base import FINETUNE_STATE_KEY, fingerprint
from shared.checkpoints.adapter_checkpoint import BASE_CONFIG_FILE, is_adapter_checkpoint
from shared.checkpoints.adapter_io import lora_config_from_peft, read_adapter_config
from shared.checkpoints.checkpoint import CheckpointError, load_checkpoint
from shared.checkpoints.paths import TRAINER_STATE_FILE, resolve
from shared.config.model_config import ConfigError, ModelConfig
from shared.data.model_tokenizer import has_model_tokenizer
from shared.checkpoints.lora_config import LoRAConfig, LoRAConfigError, format_parameter_report
from shared.training.train_config import TrainConfig
from shared.training.loop import BackendFactory, train
from shared.checkpoints.weight_table import param_specs

MODES = ("full", "lora")
STATE_KEY = FINETUNE_STATE_KEY  # the trainer_state.json entry naming the mode and the base checkpoint
RECIPE_SECTIONS = ("train", "lora")  # a fine-tuning recipe file: {"train": TrainConfig, "lora": LoRAConfig}


# -- recipe files -----------------------------------------------------------------------------------
def _read_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{what} {path} is not valid JSON: {error}") from error


def _is_recipe(data: Any) -> bool:
    return isinstance(data, dict) and bool(data) and set(data) <= set(RECIPE_SECTIONS)


def recipe_has_train(path: str | Path) -> bool:
    """Whether `path` is a fine-tuning recipe with a "train" section (usable without --config)."""
    data = _read_json(path, "LoRA config")
    return _is_recipe(data) and "train" in data


def read_train_config(path: str | Path) -> TrainConfig:
    """A TrainConfig JSON, or the "train" section of a fine-tuning recipe."""
    data = _read_json(path, "train config")
    if _is_recipe(data):
        if "train" not in data:
            raise ConfigError(f"{path} is a fine-tuning recipe without a 'train' section")
        data = data["train"]
    try:
        return TrainConfig.from_dict(data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error


def read_lora_config(path: str | Path) -> LoRAConfig:
    """A LoRAConfig JSON, PEFT's adapter_config.json, or the "lora" section of a fine-tuning recipe."""
    data = _read_json(path, "LoRA config")
    if _is_recipe(data):
        if "lora" not in data:
            raise LoRAConfigError(f"{path} is a fine-tuning recipe without a 'lora' section")
        data = data["lora"]
    if isinstance(data, dict) and "peft_type" in data:
        return lora_config_from_peft(data, str(path))
    try:
        return LoRAConfig.from_dict(data)
    except LoRAConfigError as error:
        raise LoRAConfigError(f"{path}: {error}") from error


# -- the base checkpoint ----------------------------------------------------------------------------
@dataclass
class Base:
    """The checkpoint a fine-tune starts from: its directory, model config, weights and their hash."""

    directory: Path
    model_config: ModelConfig
    tensors: dict[str, np.ndarray]
    sha256: str


def resolve_base(path: str | Path) -> Path:
    """A base checkpoint directory from any path the CLI accepts (shared/checkpoints/paths.py)."""
    return resolve(path, "model")


def load_base(path: str | Path) -> Base:
    """Read a base checkpoint; it must carry the tokenizer it was trained with (a fine-tune reuses it)."""
    directory = resolve_base(path)
    model_config, tensors = load_checkpoint(directory)
    if not has_model_tokenizer(directory, model_config):
        raise FileNotFoundError(
            f"base checkpoint {directory} has no tokenizer: a fine-tune reuses the base's tokenizer "
            "and never trains a new one; save the training tokenizer into the checkpoint (Tokenizer.save)"
        )
    return Base(directory, model_config, tensors, fingerprint(tensors))


def finetune_config(config: TrainConfig, base: Base, notes: list[str] | None = None) -> TrainConfig:
    """The run's TrainConfig: the base's model config and weights; max_len capped at the base's range."""
    overrides: dict[str, Any] = {
        "model_preset": None, "model": base.model_config, "model_overrides": {}, "init_checkpoint": str(base.directory),
    }  # fmt: skip
    if config.max_len > base.model_config.max_len:
        overrides["max_len"] = base.model_config.max_len
        if notes is not None:
            notes.append(f"max_len {config.max_len} capped at the base model's max_len {base.model_config.max_len}")
    return config.replace(**overrides)


def resolve_adapter(path: str | Path) -> Path:
    """An adapter directory from itself, a LoRA checkpoint, or a LoRA run directory (its latest)."""
    return resolve(path, "adapter")


def base_of_lora_run(path: str | Path) -> Path | None:
    """The base checkpoint a LoRA fine-tuning run (or one of its checkpoints) started from; None otherwise."""
    try:
        directory = resolve(path, "training")
    except (CheckpointError, FileNotFoundError):
        return None
    if not is_adapter_checkpoint(directory):
        return None
    state = json.loads((directory / TRAINER_STATE_FILE).read_text()).get(STATE_KEY, {})
    if "base_checkpoint" not in state:
        raise CheckpointError(f"{directory} records no base checkpoint: give the base as --checkpoint, this as --adapter")
    return Path(state["base_checkpoint"])


# -- backends ---------------------------------------------------------------------------------------
# (framework, model_config, train_config, total_steps, base_tensors, lora, adapter_tensors=None) -> a
# backend training only the adapter of `lora` on frozen base weights (fresh adapter unless given):
# twinformer/backends.py make_lora_backend, or a test's own
LoRABackendFactory = Callable[..., Any]


def parameter_report(backend) -> str:
    """PEFT's 'trainable params: N || all params: M || trainable%: P' line for any backend."""
    if hasattr(backend, "parameter_report"):
        return backend.parameter_report()
    total = sum(int(np.prod(spec.torch_shape)) for spec in param_specs(backend.model_config))
    return format_parameter_report(total, total)  # full fine-tuning: every weight trains


# -- the run ----------------------------------------------------------------------------------------
@dataclass
class Plan:
    """What a fine-tuning call will do, resolved from the arguments and (on resume) the checkpoint."""

    mode: str
    base: Base | None  # None only when resuming a full fine-tune without --base (its weights are its own)
    config: TrainConfig | None  # None: the resumed checkpoint's
    lora: LoRAConfig | None
    resume: Path | None
    notes: list[str]
    recorded: dict[str, Any] | None = None  # the resumed run's trainer_state "finetune" entry

    def state(self) -> dict[str, Any]:
        """The trainer_state entry of this run: mode, and which base it started from."""
        if self.base is None:
            return dict(self.recorded)
        return {"mode": self.mode, "base_checkpoint": str(self.base.directory), "base_sha256": self.base.sha256}


def _read_resume_state(resume: str | Path) -> tuple[Path, dict[str, Any], str, LoRAConfig | None, ModelConfig]:
    directory = resolve(resume, "training")
    state = json.loads((directory / TRAINER_STATE_FILE).read_text()).get(STATE_KEY)
    if state is None:
        raise CheckpointError(
            f"{directory} is not a fine-tuning checkpoint (no '{STATE_KEY}' in {TRAINER_STATE_FILE}); "
            "continue pre-training runs with `twinformer train --resume`"
        )
    if is_adapter_checkpoint(directory):
        return directory, state, "lora", read_adapter_config(directory), ModelConfig.load(directory / BASE_CONFIG_FILE)
    return directory, state, "full", None, ModelConfig.load(directory / "config.json")


def plan(
    *,
    base: str | Path | None = None,
    mode: str | None = None,
    lora: LoRAConfig | None = None,
    config: TrainConfig | None = None,
    resume: str | Path | None = None,
) -> Plan:
    """Check the arguments together (every problem listed) and resolve base, mode and configs."""
    problems: list[str] = []
    if mode is not None and mode not in MODES:
        problems.append(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if mode == "lora" and lora is None:
        problems.append("LoRA fine-tuning needs a LoRA config")
    if mode == "full" and lora is not None:
        problems.append("a LoRA config was given for full fine-tuning")
    if resume is None:
        if mode is None:
            problems.append("choose the kind of fine-tuning: LoRA (--lora CONFIG) or full (--full)")
        if base is None:
            problems.append("give the base checkpoint to fine-tune (--base DIR)")
        if config is None:
            problems.append("give the fine-tuning train config (--config FILE: corpus, languages, steps, lr)")
        if problems:
            raise ConfigError("cannot start fine-tuning:\n  - " + "\n  - ".join(problems))
        loaded = load_base(base)
        notes: list[str] = []
        return Plan(mode, loaded, finetune_config(config, loaded, notes), lora, None, notes)

    directory, state, saved_mode, saved_lora, saved_config = _read_resume_state(resume)
    if mode is not None and mode != saved_mode:
        problems.append(f"{directory} is a {saved_mode} fine-tuning run; cannot resume it as {mode}")
    if lora is not None and saved_lora is not None and lora != saved_lora:
        diffs = [f"{k}: checkpoint {v!r}, given {lora.to_dict()[k]!r}" for k, v in saved_lora.to_dict().items() if lora.to_dict()[k] != v]
        problems.append("the LoRA config differs from the checkpoint's: " + "; ".join(diffs))
    if config is not None and base is None and saved_mode == "full":
        problems.append("a new --config on resume needs --base too (its max_len is checked against the base model)")
    if problems:
        raise ConfigError("cannot resume fine-tuning:\n  - " + "\n  - ".join(problems))
    if saved_mode == "full" and base is None:  # a full run carries its own weights: no base needed
        return Plan(saved_mode, None, None, None, directory, [], state)
    loaded = load_base(base if base is not None else state["base_checkpoint"])
    found: list[str] = []
    if loaded.model_config != saved_config:
        found.append(f"{loaded.directory} holds another model than the run's base ({BASE_CONFIG_FILE} differs)")
    elif loaded.sha256 != state.get("base_sha256"):
        found.append(
            f"the weights of {loaded.directory} differ from the base this run was trained on "
            f"({state.get('base_checkpoint')}, sha256 {str(state.get('base_sha256'))[:12]}..., found {loaded.sha256[:12]}...)"
        )
    if found and saved_mode == "lora":  # a full run carries its own weights: the base only matters to LoRA
        raise CheckpointError("cannot resume the LoRA run on this base:\n  - " + "\n  - ".join(found))
    notes = []
    return Plan(saved_mode, loaded, None if config is None else finetune_config(config, loaded, notes),
                saved_lora, directory, notes, state)  # fmt: skip


def finetune(
    framework: str,
    run_dir: str | Path,
    *,
    base: str | Path | None = None,
    mode: str | None = None,
    lora: LoRAConfig | None = None,
    config: TrainConfig | None = None,
    resume: str | Path | None = None,
    total_steps: int | None = None,
    stop_at: int | None = None,
    progress: bool = True,
    report: Callable[[str], Any] = print,
    overwrite: bool = False,
    backend_factory: BackendFactory,
    lora_backend_factory: LoRABackendFactory,
):
    """Fine-tune `base` (full or LoRA) with the pre-training loop, or resume a fine-tuning run.

    backend_factory builds full-weight backends (as for shared.training.loop.train),
    lora_backend_factory adapter-only ones; the caller picks both for the framework
    (twinformer/backends.py). Returns shared.training.loop.TrainResult; the parameter report goes
    to `report` at the start.
    """
    p = plan(base=base, mode=mode, lora=lora, config=config, resume=resume)
    for note in p.notes:
        report(f"note: {note}")

    def factory(framework_, model_config, train_config, steps, init_tensors):
        if p.base is not None and model_config != p.base.model_config:
            raise CheckpointError(f"the run's model config differs from the base checkpoint's ({p.base.directory})")
        if p.mode == "lora":
            backend = lora_backend_factory(framework_, model_config, train_config, steps, p.base.tensors, p.lora)
        else:
            backend = backend_factory(framework_, model_config, train_config, steps, init_tensors)
        report(f"{p.mode} fine-tuning ({framework_}): {parameter_report(backend)}")
        return backend

    state = {STATE_KEY: p.state()}
    return train(
        p.config, framework, run_dir, resume=p.resume, total_steps=total_steps, stop_at=stop_at,
        progress=progress, backend_factory=factory, extra_trainer_state=state, overwrite=overwrite,
    )  # fmt: skip
