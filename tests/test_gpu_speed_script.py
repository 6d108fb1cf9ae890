"""benchmarks/gpu_speed.sh stays runnable: its CPU dry run (tiny sizes) writes every JSON and the markdown.

Timings are not checked (speed is reported, not asserted); the decode run must report the cached
and uncached tokens identical.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_speed_script_dry_run_writes_json_and_markdown(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path), "PYTHONPATH": str(ROOT)}
    subprocess.run(["bash", "benchmarks/gpu_speed.sh"], cwd=ROOT, env=env, check=True, timeout=600)
    log = (tmp_path / "session.log").read_text()
    for name in ("train-book-ch4-fp32", "train-100m-bf16", "decode-beam4"):
        assert f"{name} exit 0" in log, log
        report = json.loads((tmp_path / f"{name}.json").read_text())
        assert report["results"], name
    train = json.loads((tmp_path / "train-100m-bf16.json").read_text())
    assert set(train["matmul_peak_tflops_by_dtype"]) == {"float32", "bfloat16"}
    assert all(set(r["mfu"]) == {"float32", "bfloat16"} for r in train["results"].values())
    assert train["settings"]["attention"] == "fused" and train["settings"]["batch"] == 20 // 5  # by tokens
    decode = json.loads((tmp_path / "decode-beam4.json").read_text())["results"]
    assert decode["torch_cached"]["identical"] and decode["jax_cached"]["identical"]
    markdown = (tmp_path / "speed.md").read_text()
    assert markdown.count("| stack |") == 3 and "MFU vs bfloat16 peak" in markdown and "cached speed-up" in markdown
