"""Keeps benchmarks/generate_speed_jax.py runnable: a tiny-shape run (its own token assertions hold).

Speed is reported by the benchmark, never asserted here.
"""

from __future__ import annotations

from benchmarks.generate_speed_jax import main


def test_tiny_run_reports_every_figure():
    figures = main(["--tiny", "--rounds", "1", "--new-tokens", "4", "--t5-new-tokens", "3", "--t5-source", "5"])
    assert set(figures["gpt2_tokens_per_s"]) == {"jax", "hf_cached", "hf_uncached"}
    assert figures["t5_beam4_speedup"] > 0 and figures["gpt2_jax_over_hf_cached"] > 0
