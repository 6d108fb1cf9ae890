"""Keeps benchmarks/ runnable: a 2-step run of the throughput script on a tiny model, and the FLOP count.

Structure and counts are checked, never timings (speed is reported by the benchmark, not asserted).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import torch_impl
from benchmarks.reference_nn_transformer import ReferenceNNTransformer
from benchmarks.train_throughput import (
    STACKS,
    forward_matmul_flops,
    main,
    synthetic_batch,
    training_matmul_flops,
)
from shared.config.model_config import ModelConfig

# nn.Transformer-compatible (the book-ch4 recipe) but tiny; odd sizes so no two axes coincide.
TINY = {"d_model": 16, "num_heads": 2, "d_ff": 24, "src_vocab_size": 37, "tgt_vocab_size": 41,
        "num_encoder_layers": 1, "num_decoder_layers": 1}


def tiny_config(**overrides) -> ModelConfig:
    return ModelConfig.from_preset("book-ch4", **{**TINY, **overrides})


def test_throughput_script_writes_every_number_for_every_stack(tmp_path):
    out = tmp_path / "bench.json"
    argv = ["--set", *(f"{k}={v}" for k, v in TINY.items()), "--batch", "3", "--src-len", "5",
            "--tgt-len", "4", "--steps", "2", "--warmup", "1", "--peak-sizes", "32", "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())

    assert set(report) >= {"machine", "settings", "model", "workload", "flops", "matmul_peak_tflops", "results"}
    assert report["model"]["config"] == tiny_config().to_dict()
    assert report["flops"]["training_per_step"] == 3 * sum(report["flops"]["forward_by_part"].values())
    assert set(report["matmul_peak_tflops"]) == {"torch", "jax"}
    assert set(report["results"]) == set(STACKS)
    tokens = report["workload"]["target_tokens_per_step"]
    assert 0 < tokens <= 3 * 4
    for name, result in report["results"].items():
        assert len(result["step_times_s"]) == 2, name
        assert all(t > 0 for t in result["step_times_s"]), name
        assert math.isclose(result["tokens_per_s"], tokens / result["median_step_s"]), name
        assert math.isclose(result["model_tflops"],
                            report["flops"]["training_per_step"] / result["median_step_s"] / 1e12), name
        assert math.isclose(result["vs_matmul_peak"], result["model_tflops"] / result["matmul_peak_tflops"]), name
        assert math.isfinite(result["first_loss"]) and math.isfinite(result["last_loss"]), name
    assert report["results"]["reference"]["vs_reference"] == 1.0
    ratio = report["results"]["torch_impl"]["tokens_per_s"] / report["results"]["reference"]["tokens_per_s"]
    assert math.isclose(report["results"]["torch_impl"]["vs_reference"], ratio)


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize("model_class", [torch_impl.Transformer, ReferenceNNTransformer])
def test_analytic_flops_match_torch_flop_counter(model_class):
    """The explicit per-part count equals what torch counts for forward, and forward+backward = 3x."""
    config = tiny_config(num_encoder_layers=2)
    batch = synthetic_batch(config, batch=4, src_len=7, tgt_len=5)
    src, tgt_in = (torch.from_numpy(batch[k]).long() for k in ("src", "tgt_in"))
    model = model_class(config).train()
    with FlopCounterMode(display=False) as forward_only:
        model(src, tgt_in)
    with FlopCounterMode(display=False) as forward_backward:
        model(src, tgt_in).sum().backward()
    assert forward_only.get_total_flops() == sum(forward_matmul_flops(config, 4, 7, 5).values())
    assert forward_backward.get_total_flops() == training_matmul_flops(config, 4, 7, 5)


def test_synthetic_batch_is_padded_shifted_and_reproducible():
    config = tiny_config()
    batch = synthetic_batch(config, batch=16, src_len=9, tgt_len=8, seed=3)
    again = synthetic_batch(config, batch=16, src_len=9, tgt_len=8, seed=3)
    assert all(np.array_equal(batch[k], again[k]) for k in batch)
    assert batch["src"].shape == (16, 9) and batch["tgt_in"].shape == batch["tgt_out"].shape == (16, 8)
    pad = config.pad_id
    assert (batch["src"] == pad).any() and (batch["tgt_out"] == pad).any()  # some padding
    assert (batch["src"][:, 0] != pad).all()  # no empty sentence
    # teacher forcing: tgt_out is tgt_in shifted left by one, with EOS where tgt_in's words end
    np.testing.assert_array_equal(batch["tgt_in"][:, 1:][batch["tgt_out"][:, 1:] != pad],
                                  batch["tgt_out"][:, :-1][batch["tgt_out"][:, 1:] != pad])
    assert np.array_equal(batch["tgt_in"] == pad, batch["tgt_out"] == pad)


def test_reference_lists_every_config_it_cannot_express():
    with pytest.raises(ValueError) as error:
        ReferenceNNTransformer(tiny_config(norm_kind="book", bias=False, activation="gelu_tanh"))
    message = str(error.value)
    assert "norm_kind" in message and "bias" in message and "activation" in message


def test_gpu_parity_script_dry_run_writes_the_table(tmp_path):
    """benchmarks/gpu_parity.py --dry-run: the same steps on the CPU (tiny selection), one markdown table."""
    from benchmarks.gpu_parity import main as gpu_parity

    assert gpu_parity(["--dry-run", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "gpu_parity.md").read_text()
    for row in ("| forward (torch init -> jax) | float32 |", "| forward (torch init -> jax) | bfloat16 |",
                "| twinformer parity --preset tiny (exit 0) | float32 |", "| twinformer parity --preset tiny (exit 0) | bfloat16 |"):
        assert row in table, table
    assert "suite float32: exit 0" in table and "presets: exit 0" in table


def test_generate_speed_runs_at_toy_sizes_with_identical_tokens(capsys):
    """benchmarks/generate_speed.py end to end at toy sizes: exit 0 = every run's tokens identical
    (both stacks, transformers cached and uncached, T5 beam cached and uncached)."""
    from benchmarks import generate_speed

    assert generate_speed.main(["--tiny", "--new-tokens", "8", "--beam-tokens", "4", "--source", "6", "--rounds", "1"]) == 0
    runs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["identical"] for r in runs] == [True, True]
    assert set(runs[0]["tokens_per_s"]) == {"torch_impl", "jax_impl", "hf_cached", "hf_uncached"}
