"""Fresh-interpreter checks: no torch/jax import; tokenizer training same across processes."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from shared.data import load_corpus, train_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import hashlib, importlib, pkgutil, sys
import shared
for module in pkgutil.walk_packages(shared.__path__, "shared."):  # every module of shared/
    importlib.import_module(module.name)
from shared.data import load_corpus, train_tokenizer
tok = train_tokenizer(load_corpus("toy", "train"), vocab_size=200)
print(hashlib.sha256(tok._tgt.to_str(pretty=True).encode()).hexdigest())
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "jax", "jaxlib", "flax")))
"""


def test_fresh_process_imports_no_framework_and_trains_identically() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    digest, frameworks = result.stdout.split("\n")[:2]
    assert frameworks == "[]", f"shared/ pulled in {frameworks}"
    # Rust hash maps are seeded per process, so same-process determinism alone would not prove this.
    here = train_tokenizer(load_corpus("toy", "train"), vocab_size=200)
    assert digest == hashlib.sha256(here._tgt.to_str(pretty=True).encode()).hexdigest()
