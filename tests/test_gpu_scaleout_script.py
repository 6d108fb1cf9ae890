"""benchmarks/gpu_scaleout.sh stays runnable: a CPU dry run (gloo ranks, JAX host devices), 4 steps.

Only the stages that need the launchers are run (torchrun with 2 ranks, a JAX mesh resuming the
torch checkpoint, the comparison); tests/test_scale_out.py checks the numbers of every layout.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "model_overrides": {"d_model": 16, "num_heads": 2, "d_ff": 32, "num_encoder_layers": 1, "num_decoder_layers": 1,
                        "dropout": 0.0, "attention_dropout": 0.0, "embedding_dropout": 0.0, "max_len": 16},
    "vocab_size": 48, "batch_size": 8, "max_len": 16, "pad_to_multiple": 16, "bleu_sentences": 0,
}  # fmt: skip


def test_cpu_dry_run_of_the_gpu_scaleout_script(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "DEVICE": "cpu", "NGPU": "2", "CONFIG": str(config), "STEPS": "4",
           "STAGES": "torch-single torch-ddp jax-fsdp-from-torch-ddp"}
    done = subprocess.run(["bash", "benchmarks/gpu_scaleout.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = (out / "session.log").read_text() if (out / "session.log").is_file() else ""
    assert done.returncode == 0, log + done.stdout + done.stderr
    for stage in ("torch-single", "torch-ddp", "jax-fsdp-from-torch-ddp"):
        assert f"== {stage} exit 0" in log, (out / f"{stage}.log").read_text()[-3000:]
    result = json.loads((out / "scaleout.json").read_text())
    assert set(result) == {"torch-ddp", "jax-fsdp-from-torch-ddp"}
    assert result["torch-ddp"]["steps_compared"] == 4 and result["jax-fsdp-from-torch-ddp"]["steps_compared"] == 2
    assert all(row["reference"] == "torch-single" for row in result.values())
