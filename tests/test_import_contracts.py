"""The import structure (.importlinter): the CLI above the stacks above shared/, the stacks
independent, shared/ free of torch / jax / flax / optax and of either stack, and no cycle among
the modules of any package. import-linter (a dev dependency) checks them on the installed tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    # A fresh interpreter in the checkout: the packages it analyses are this tree's, whatever is installed.
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
