"""TrainConfig.precision (float32 | tf32 | bf16-mixed) and the mixed-precision policy table."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config.model_config import ConfigError
from shared.parity.mixed_precision import MIXED_POLICY, TRAIN_PRECISIONS, mixed_output_dtype
from shared.training.train_config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def test_precision_values_and_the_matmul_precision_they_pin():
    assert {p: TrainConfig(precision=p).matmul_precision for p in TRAIN_PRECISIONS} == {
        "float32": "float32", "tf32": "tf32", "bf16-mixed": "float32",
    }  # fmt: skip
    with pytest.raises(ConfigError, match="unknown precision 'bf16'; expected one of float32, tf32, bf16-mixed"):
        TrainConfig(precision="bf16")


def test_a_config_written_before_the_rename_still_loads():
    """Run directories and recipes from before bf16-mixed say matmul_precision."""
    old = TrainConfig().to_dict()
    del old["precision"]
    old["matmul_precision"] = "tf32"
    assert TrainConfig.from_dict(old).precision == "tf32"


def test_the_gpu_recipe_trains_in_bf16_mixed():
    assert TrainConfig.load(REPO / "configs" / "multi30k-best.json").precision == "bf16-mixed"


def test_policy_output_dtypes():
    """Matmul outputs (and what wraps them) are bf16; the stream, norms and embeddings float32."""
    assert {op.output for op in MIXED_POLICY} <= {"bfloat16", "float32", "input dtype", "stream"}
    bf16 = ["logits", "decoder.layers.0.cross_attn.v_proj", "encoder.layers.1.ffn", "encoder.layers.0.dropout",
            "decoder.layers.0.self_attn.attn_dropout", "output_proj"]  # fmt: skip
    f32 = ["src_embed", "embed_dropout", "encoder.layers.0", "encoder.layers.0.ffn_norm", "decoder.final_norm", "encoder"]
    assert [mixed_output_dtype(n) for n in bf16] == ["bfloat16"] * len(bf16)
    assert [mixed_output_dtype(n) for n in f32] == ["float32"] * len(f32)
