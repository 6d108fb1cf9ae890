"""tools/split_shared.py: the reference rewrite the merger runs after every branch is merged.

Inputs here name the pre-split modules on purpose (the script never rewrites this file)."""

from __future__ import annotations

import pytest

from tools.split_shared import FOLDERS, MOVES, STAYS, rewrite

CASES = {
    "from shared import sampling": "from shared.decoding import sampling",
    "from shared import ModelConfig, presets  # why": "from shared import ModelConfig\nfrom shared.config import presets  # why",
    "    from shared import numerics as n": "    from shared.parity import numerics as n",
    "from shared.config import ModelConfig": "from shared.config.model_config import ModelConfig",
    "from shared.decoding import DecodeConfig": "from shared.decoding.search import DecodeConfig",
    "import shared.training_loop as loop": "import shared.training.loop as loop",
    'monkeypatch.setattr("shared.run_checkpoint._write_rng", f)': 'monkeypatch.setattr("shared.training.run_checkpoint._write_rng", f)',
    "see shared/checkpoint_paths.py and shared/sampling.choose_next": (
        "see shared/checkpoints/paths.py and shared/decoding/sampling.choose_next"
    ),
    # left alone: modules that do not move, and names that only start like a moved one
    "from shared.data.batching import Batch": "from shared.data.batching import Batch",
    "from shared.families.t5 import key_table": "from shared.families.t5 import key_table",
    "shared.training_loops, myshared.config, shared.configure": "shared.training_loops, myshared.config, shared.configure",
}


@pytest.mark.parametrize("before", sorted(CASES))
def test_rewrite_names_the_new_module_and_is_idempotent(before):
    after = rewrite(before)
    assert after == CASES[before]
    assert rewrite(after) == after, "a second run must change nothing"


def test_every_move_lands_in_a_declared_folder_and_no_two_collide():
    assert len(set(MOVES.values())) == len(MOVES)
    for old, new in MOVES.items():
        assert old.count(".") == 1, old
        folder = new.split(".")[1]
        # a new folder of the split, or a family package that owns the module (rope scaling: causal_lm)
        assert folder in FOLDERS or f"shared.{folder}" in STAYS, new
