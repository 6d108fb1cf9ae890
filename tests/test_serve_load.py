"""benchmarks/serve_load.py runs end to end (a short window, the serial engine, torch) and reports a
well-formed row with no errors; the figures themselves are the README's, not a test's."""

from __future__ import annotations

import json

from benchmarks import serve_load


def test_load_benchmark_runs_and_reports(tmp_path, capsys):
    out = tmp_path / "load.json"
    code = serve_load.main(["--frameworks", "torch", "--engines", "serial", "--seconds", "2", "--clients", "2",
                            "--max-tokens", "4", "--json", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1 and rows[0]["errors"] == 0 and rows[0]["requests"] >= 2 and rows[0]["tokens"] >= 2
    assert rows[0]["ttft_p50"] <= rows[0]["latency_p50"]
    assert "| torch | serial | 2 |" in printed


def test_ratio_is_batching_over_serial_per_stack():
    rows = [{"framework": "torch", "engine": "batching", "tokens_per_s": 30.0},
            {"framework": "torch", "engine": "serial", "tokens_per_s": 10.0},
            {"framework": "jax", "engine": "serial", "tokens_per_s": 5.0}]  # fmt: skip
    assert serve_load.ratios(rows) == {"torch": 3.0}
