"""Split shared/ into folders that say what they hold, and rewrite every reference in the tree.

    python tools/split_shared.py            # from the repository root (or any folder inside it)
    python tools/split_shared.py --dry-run  # print what it would move and rewrite

Re-runnable and idempotent: a module already at its new place is skipped, and a reference already
rewritten is left alone, so it can run again after more branches are merged. It
  1. `git mv`s each module of MOVES to its folder (creating the folder's __init__.py, which
     re-exports nothing: importers name the module, so the import graph stays exact);
  2. rewrites every tracked text file: dotted module paths (imports, `mock.patch` strings, docs:
     `shared.training_loop` -> `shared.training.loop`, `shared.config.X` -> `shared.config.model_config.X`),
     `from shared import sampling` forms, and file paths (`shared/config.py` -> `shared/config/model_config.py`);
  3. lists modules left directly in shared/ that no folder claims (new files from other branches:
     add them to MOVES and run again).
The folders are layered (no cycle between them; .importlinter's acyclic_siblings contract checks it):
    config       ModelConfig and the presets (above families/)
    families     one package per model family, and their registry (already a folder)
    data         corpora, tokenizers, batching (already a folder)
    parity       what both stacks must compute alike: axes, shared numerics, mixed precision, tolerances
    checkpoints  weights and the files that hold them: weight table, init, checkpoints, adapters, HF/book import
    decoding     decoding settings, the generation config, sampling
    training     the train config, the loop, fine-tuning, run checkpoints, schedules, metrics, scale-out
json_config.py (the JSON-backed config base every layer uses) stays at the top.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

# {old module: new module}. Only modules directly in shared/ move.
MOVES: dict[str, str] = {
    "shared.config": "shared.config.model_config",
    "shared.presets": "shared.config.presets",
    "shared.axes": "shared.parity.axes",
    "shared.numerics": "shared.parity.numerics",
    "shared.mixed_precision": "shared.parity.mixed_precision",
    "shared.tolerances": "shared.parity.tolerances",
    "shared.weight_table": "shared.checkpoints.weight_table",
    "shared.init": "shared.checkpoints.init",
    "shared.lora_config": "shared.checkpoints.lora_config",
    "shared.checkpoint": "shared.checkpoints.checkpoint",
    "shared.checkpoint_paths": "shared.checkpoints.paths",
    "shared.checkpoint_average": "shared.checkpoints.average",
    "shared.optimizer_state": "shared.checkpoints.optimizer_state",
    "shared.adapter_io": "shared.checkpoints.adapter_io",
    "shared.adapter_checkpoint": "shared.checkpoints.adapter_checkpoint",
    "shared.hf_adapter": "shared.checkpoints.hf_adapter",
    "shared.hf_checkpoint": "shared.checkpoints.hf_checkpoint",
    "shared.book_import": "shared.checkpoints.book_import",
    "shared.atomic_output": "shared.checkpoints.atomic_output",
    "shared.safetensors_stream": "shared.checkpoints.safetensors_stream",
    "shared.rope_scaling": "shared.families.causal_lm.rope_scaling",
    "shared.decoding": "shared.decoding.search",
    "shared.generation": "shared.decoding.generation",
    "shared.sampling": "shared.decoding.sampling",
    "shared.train_config": "shared.training.train_config",
    "shared.training_loop": "shared.training.loop",
    "shared.finetune": "shared.training.finetune",
    "shared.run_checkpoint": "shared.training.run_checkpoint",
    "shared.schedules": "shared.training.schedules",
    "shared.interrupts": "shared.training.interrupts",
    "shared.metrics": "shared.training.metrics",
    "shared.metrics_log": "shared.training.metrics_log",
    "shared.sharding": "shared.training.sharding",
}
FOLDERS: dict[str, str] = {  # new folder -> its __init__.py docstring
    "config": "The model configuration: ModelConfig (model_config.py) and the named presets.",
    "parity": "What both stacks must compute alike: axis letters, shared numerics, mixed precision, the parity bound.",
    "checkpoints": "Weights and the files that hold them: the weight table, init, checkpoints, optimizer state,\n"
                   "LoRA adapters, and the Hugging Face / book importers.",
    "decoding": "Framework-free decoding: settings and batching, the generation config, sampling.",
    "training": "Training: the train config, the loop, fine-tuning, run checkpoints, schedules, metrics, scale-out.",
}
STAYS = {"shared", "shared.json_config", "shared.families", "shared.data"}  # not moved (already in place)
TEXT_SUFFIXES = {".py", ".md", ".toml", ".cfg", ".ini", ".txt", ".sh", ".yml", ".yaml", ".json", ".rst"}
TEXT_NAMES = {".importlinter", "run"}  # files without a suffix that name modules (.ci/run)
# Never rewritten: this script's table, and the test whose inputs are old names on purpose.
SKIP = {"tools/split_shared.py", "tests/test_split_shared.py"}


def repo_root() -> Path:
    out = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def module_path(module: str) -> Path:
    return Path(*module.split(".")).with_suffix(".py")


def new_children() -> dict[str, set[str]]:
    """{old module that became a folder: names of the new modules inside it} (shared.config -> model_config...)."""
    children: dict[str, set[str]] = {}
    for old in MOVES:
        for new in MOVES.values():
            if new.startswith(old + "."):
                children.setdefault(old, set()).add(new[len(old) + 1 :].split(".")[0])
    return children


# -- 1. moves ---------------------------------------------------------------------------------------
def move_files(root: Path, dry_run: bool) -> list[str]:
    done = []
    tracked = set(subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split())
    for folder, doc in FOLDERS.items():
        init = root / "shared" / folder / "__init__.py"
        if not init.exists():
            done.append(f"create {init.relative_to(root)}")
            if not dry_run:
                init.parent.mkdir(parents=True, exist_ok=True)
                init.write_text(f'"""{doc}"""\n')
                subprocess.run(["git", "add", str(init)], cwd=root, check=True)
    for old, new in MOVES.items():
        source, target = root / module_path(old), root / module_path(new)
        if not source.is_file():
            continue  # moved already (or removed by a branch)
        if target.exists():
            raise SystemExit(f"both {source.relative_to(root)} and {target.relative_to(root)} exist: merge them by hand")
        done.append(f"move {source.relative_to(root)} -> {target.relative_to(root)}")
        if dry_run:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if str(source.relative_to(root)) in tracked:
            subprocess.run(["git", "mv", str(source), str(target)], cwd=root, check=True)
        else:
            source.rename(target)
    return done


# -- 2. references ----------------------------------------------------------------------------------
def _dotted_pattern() -> re.Pattern[str]:
    names = sorted((old.split(".", 1)[1] for old in MOVES), key=len, reverse=True)
    return re.compile(r"(?<![\w.])shared\.(" + "|".join(map(re.escape, names)) + r")(?!\w)")


def _path_pattern() -> re.Pattern[str]:
    """shared/X.py, and shared/X.name (a path naming a function: shared/sampling.choose_next)."""
    names = sorted((old.split(".", 1)[1] for old in MOVES), key=len, reverse=True)
    return re.compile(r"(?<![\w/.])shared/(" + "|".join(map(re.escape, names)) + r")(?=\.\w)")


DOTTED, PATHS = _dotted_pattern(), _path_pattern()
FROM_SHARED = re.compile(r"^(?P<indent>[ \t]*)from shared import (?P<names>[\w, ]+?)(?P<tail>[ \t]*(#.*)?)$", re.M)
CHILDREN = new_children()


def rewrite(text: str) -> str:
    def dotted(match: re.Match[str]) -> str:
        old = f"shared.{match.group(1)}"
        rest = text[match.end() :]
        # Already the new folder: `shared.config.model_config`, or `from shared.config import model_config`
        child = re.match(r"\.(\w+)|\s+import\s+\(?\s*(\w+)", rest)
        if child and (child.group(1) or child.group(2)) in CHILDREN.get(old, ()):
            return match.group(0)
        return MOVES[old]

    def path(match: re.Match[str]) -> str:
        return module_path(MOVES[f"shared.{match.group(1)}"]).with_suffix("").as_posix()

    def from_shared(match: re.Match[str]) -> str:
        names = [n.strip() for n in match.group("names").split(",") if n.strip()]
        kept, lines = [], []
        for name in names:
            bare = name.split(" as ")[0].strip()
            alias = name.split(" as ")[1].strip() if " as " in name else bare
            new = MOVES.get(f"shared.{bare}")
            if new is None:
                kept.append(name)
                continue
            package, _, leaf = new.rpartition(".")
            lines.append(f"from {package} import {leaf}" + ("" if leaf == alias else f" as {alias}"))
        if not lines:
            return match.group(0)
        if kept:
            lines.insert(0, f"from shared import {', '.join(kept)}")
        indent = match.group("indent")
        lines[-1] += match.group("tail")
        return "\n".join(indent + line for line in lines)

    text = FROM_SHARED.sub(from_shared, text)
    text = DOTTED.sub(dotted, text)
    return PATHS.sub(path, text)


def rewrite_tree(root: Path, dry_run: bool) -> list[str]:
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    changed = []
    for name in files:
        path = root / name
        if name in SKIP or not path.is_file():
            continue
        if path.suffix not in TEXT_SUFFIXES and path.name not in TEXT_NAMES:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        new = rewrite(text)
        if new != text:
            changed.append(name)
            if not dry_run:
                path.write_text(new)
    return changed


# -- 3. what is left --------------------------------------------------------------------------------
def unplaced(root: Path) -> list[str]:
    left = []
    for path in sorted((root / "shared").glob("*.py")):
        module = f"shared.{path.stem}" if path.stem != "__init__" else "shared"
        if module not in STAYS and module not in MOVES.values():
            left.append(str(path.relative_to(root)))
    return left


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the moves and the files it would rewrite")
    args = parser.parse_args(argv)
    root = repo_root()
    moves = move_files(root, args.dry_run)
    changed = rewrite_tree(root, args.dry_run)
    for line in moves:
        print(line)
    print(f"{'would rewrite' if args.dry_run else 'rewrote'} {len(changed)} file(s)" + "".join(f"\n  {c}" for c in changed))
    left = unplaced(root)
    if left:
        print("left directly in shared/ (no folder claims them; add them to MOVES and run again):\n  " + "\n  ".join(left))
    return 0


if __name__ == "__main__":
    sys.exit(main())
