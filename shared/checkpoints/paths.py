"""Which checkpoint directory a path names: the one rule every `twinformer` command follows.

A user may point any command at
    RUN_DIR                          a run directory: its newest checkpoint (RUN_DIR/checkpoints/latest)
    RUN_DIR/checkpoints              the same
    RUN_DIR/checkpoints/latest       the same (the pointer file itself)
    RUN_DIR/checkpoints/step_XXXXXXX a training checkpoint
    any checkpoint directory         merged (`merge`), averaged (`average`), converted (`convert`)
and gets the checkpoint directory, or an error that says what the path is and what was expected:
a path that does not exist gives "PATH does not exist".

Three kinds of directory are asked for:
    model     full weights (config.json + model.safetensors): translate, evaluate, parity, merge --base, ...
    training  a resumable training checkpoint (trainer_state.json): train/finetune --resume
    adapter   a LoRA adapter (adapter_config.json): --adapter, and the stacks' `load_adapter` in Python;
              also a directory holding one in adapter/ (what `export --to hf --adapter` writes)
A LoRA fine-tuning checkpoint is both "training" and "adapter" (it holds no full weights).
Nothing here reads weights; no torch, no jax.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from shared.checkpoints.checkpoint import CheckpointError

CHECKPOINTS = "checkpoints"
LATEST = "latest"
TRAINER_STATE_FILE = "trainer_state.json"
TRAIN_CONFIG_FILE = "train_config.json"
MODEL_CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"  # PEFT's name (shared/checkpoints/adapter_io.py)
ADAPTER_SUBDIR = "adapter"  # where `export --to hf --adapter` puts the adapter beside the model
# What makes a checkpoint directory usable on its own beside its weights: the tokenizer it was
# trained with (translate, evaluate) and its train config (the corpus and languages evaluate
# defaults to). merge and average copy them from their inputs (copy_companions).
# A translation checkpoint's tokenizer is tokenizer.json (+ source_tokenizer.json for a per-language
# pair); a T5 one is tokenizer.json or SentencePiece's spiece.model (shared/data/t5_tokenizer.py).
TOKENIZER_FILES = ("tokenizer.json", "source_tokenizer.json", "spiece.model")
COMPANION_FILES = ("tokenizer.json", "source_tokenizer.json", TRAIN_CONFIG_FILE)
_STEP_DIR = re.compile(r"^step_(\d{7,})$")
KINDS = ("model", "training", "adapter")


class CheckpointPathError(CheckpointError):
    """A path that names no checkpoint of the kind asked for (the message says what it is)."""


class CheckpointNotFound(CheckpointPathError, FileNotFoundError):
    """A path that does not exist."""


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def is_step_dir_name(name: str) -> bool:
    return _STEP_DIR.match(name) is not None


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories of a run, oldest first (temporary directories excluded)."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint `latest` names, or None when the run has saved none."""
    pointer = checkpoint_root(run_dir) / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    path = checkpoint_root(run_dir) / name
    if not _STEP_DIR.match(name) or not path.is_dir():
        raise CheckpointPathError(f"{pointer} names {name!r}, which is not a checkpoint directory in {path.parent}")
    return path


def is_run_dir(path: str | Path) -> bool:
    """Whether `path` holds a run's checkpoints (a `latest` pointer or step directories)."""
    return (checkpoint_root(path) / LATEST).is_file() or bool(list_checkpoints(path))


def follow(path: str | Path) -> Path:
    """The checkpoint directory a run directory, its checkpoints/ folder or its `latest` file names;
    any other existing directory as it is. "PATH does not exist" when it does not."""
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFound(f"{path} does not exist")
    if path.is_file():
        if path.name == LATEST and path.resolve().parent.name == CHECKPOINTS:  # resolved: `latest` given alone
            return _latest_or_fail(path.resolve().parent.parent)
        raise CheckpointPathError(f"{path} is a file; {_expected()}")
    if _holds_checkpoint(path):
        return path
    full = path.resolve()  # "." or ".." name no folder
    if full.name == CHECKPOINTS and ((full / LATEST).is_file() or list_checkpoints(full.parent)):
        return _latest_or_fail(full.parent)
    if checkpoint_root(path).is_dir():
        return _latest_or_fail(path)
    return path  # resolve() says what is missing


def _latest_or_fail(run_dir: Path) -> Path:
    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise CheckpointPathError(f"run directory {run_dir} has no checkpoint yet ({CHECKPOINTS}/{LATEST} is missing)")
    return latest


def _holds_checkpoint(path: Path) -> bool:
    return any((path / name).is_file() for name in (MODEL_CONFIG_FILE, TRAINER_STATE_FILE, ADAPTER_CONFIG_FILE))


def resolve(path: str | Path, kind: str = "model") -> Path:
    """The checkpoint directory of `kind` (KINDS) that `path` names; an error that says why not."""
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; expected one of {', '.join(KINDS)}")
    directory = follow(path)
    shown = str(path) if Path(path) == directory else f"{path} ({directory})"
    has = {name: (directory / name).is_file() for name in (MODEL_CONFIG_FILE, WEIGHTS_FILE, TRAINER_STATE_FILE,
                                                           ADAPTER_CONFIG_FILE)}  # fmt: skip
    if kind == "model":
        if has[MODEL_CONFIG_FILE] and has[WEIGHTS_FILE]:
            return directory
        if has[ADAPTER_CONFIG_FILE]:
            raise CheckpointPathError(
                f"{shown} is a LoRA adapter, not a model checkpoint: give its base checkpoint, with this "
                "as --adapter (or merge it first: `twinformer merge`)"
            )
        missing = [n for n in (MODEL_CONFIG_FILE, WEIGHTS_FILE) if not has[n]]
        raise CheckpointPathError(f"{shown} is not a checkpoint: {' and '.join(missing)} missing ({_expected()})")
    if kind == "training":
        if has[TRAINER_STATE_FILE]:
            return directory
        what = "a weights-only checkpoint (merged, averaged or converted)" if has[MODEL_CONFIG_FILE] else "no checkpoint"
        raise CheckpointPathError(
            f"{shown} is {what}, not a training checkpoint ({TRAINER_STATE_FILE} missing): only a run "
            f"directory or one of its {CHECKPOINTS}/step_XXXXXXX directories can be resumed"
        )
    if has[ADAPTER_CONFIG_FILE]:
        return directory
    if (directory / ADAPTER_SUBDIR / ADAPTER_CONFIG_FILE).is_file():  # `export --adapter` writes HF_DIR/adapter
        return directory / ADAPTER_SUBDIR
    looked = {directory / ADAPTER_CONFIG_FILE: "an adapter directory or LoRA checkpoint",
              directory / ADAPTER_SUBDIR / ADAPTER_CONFIG_FILE: "an export's adapter"}  # fmt: skip
    if directory == Path(path):  # not followed from a run: it could have been one
        looked[checkpoint_root(directory) / LATEST] = "a LoRA run"
    raise CheckpointPathError(f"{shown} holds no {ADAPTER_CONFIG_FILE}, so it is not an adapter; looked for "
                              + ", ".join(f"{where} ({what})" for where, what in looked.items()) + ": none exists")


def _expected() -> str:
    return (f"expected a run directory, a {CHECKPOINTS}/step_XXXXXXX directory, or a directory holding "
            f"{MODEL_CONFIG_FILE} and {WEIGHTS_FILE}")  # fmt: skip


def copy_companions(out: str | Path, tokenizer_from: list[str | Path], train_config_from: list[str | Path]) -> list[str]:
    """Copy into `out` the tokenizer from the first of `tokenizer_from` that has one, and the train
    config from the first of `train_config_from` that has one; returns the names copied.

    The tokenizer files go together, from one source (a per-language pair must not be mixed with a
    joint one).
    """
    out = Path(out)
    copied = []
    tokenizer_source = next(
        (Path(s) for s in tokenizer_from if any((Path(s) / name).is_file() for name in TOKENIZER_FILES)), None
    )
    if tokenizer_source is not None:
        for name in TOKENIZER_FILES:
            (out / name).unlink(missing_ok=True)
            if (tokenizer_source / name).is_file():
                shutil.copyfile(tokenizer_source / name, out / name)
                copied.append(name)
    config_source = next((Path(s) for s in train_config_from if (Path(s) / TRAIN_CONFIG_FILE).is_file()), None)
    if config_source is not None:
        shutil.copyfile(config_source / TRAIN_CONFIG_FILE, out / TRAIN_CONFIG_FILE)
        copied.append(TRAIN_CONFIG_FILE)
    return copied


__all__ = [
    "CHECKPOINTS", "COMPANION_FILES", "CheckpointNotFound", "CheckpointPathError", "LATEST", "checkpoint_root",
    "copy_companions", "follow", "is_run_dir", "latest_checkpoint", "list_checkpoints", "resolve", "step_dir_name",
]  # fmt: skip
