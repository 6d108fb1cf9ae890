"""`twinformer parity --against hf`: a clean port exits 0; each planted porting bug exits 1 and the
report names the module where it first shows."""

from __future__ import annotations

import numpy as np
import pytest

from shared.checkpoints.checkpoint import save_checkpoint
from shared.config.model_config import ModelConfig
from shared.checkpoints.hf_checkpoint import load_hf
from twinformer.cli import main

# tied (so an untied port is a bug), multi-head (q and k have one shape), llama3-scaled past 32 tokens
CONFIG = ModelConfig.from_preset(
    "llama-small", d_model=32, num_heads=4, num_kv_heads=4, d_ff=48, num_decoder_layers=2, src_vocab_size=97,
    tgt_vocab_size=97, max_len=256, tie_embeddings="tgt_out", norm_eps=1e-6,
    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 32},
)
PROMPT = ["--prompt-len", "160"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from parity_tests.causal_lm_helpers import hf_model

    directory = tmp_path_factory.mktemp("hf")
    hf_model(CONFIG, seed=0).save_pretrained(directory)
    return directory


def _swap_q_k(config: ModelConfig, tensors: dict) -> tuple[ModelConfig, dict]:
    q, k = "layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight"
    return config, {**tensors, q: tensors[k], k: tensors[q]}


def _untied(config: ModelConfig, tensors: dict) -> tuple[ModelConfig, dict]:
    head = np.random.default_rng(1).normal(0, 0.1, tensors["embed_tokens.weight"].shape).astype(np.float32)
    return config.replace(tie_embeddings="none"), {**tensors, "lm_head.weight": head}


PLANTED = {  # bug -> (port, the module that must be named)
    "wrong rope theta": (lambda c, t: (c.replace(rope_theta=500000.0), t), "layers.0.self_attn.o_proj"),
    "rope scaling dropped": (lambda c, t: (c.replace(rope_scaling=None), t), "layers.0.self_attn.o_proj"),
    "q and k swapped": (_swap_q_k, "layers.0.self_attn.q_proj"),
    "untied head that should be tied": (_untied, "lm_head"),
    "norm eps 1e-5 for 1e-6": (lambda c, t: (c.replace(norm_eps=1e-5), t), "layers.0.attn_norm"),
}


def test_a_clean_port_exits_0_with_every_module_within_its_bound(hf_dir, capsys) -> None:
    assert main(["parity", "--against", "hf", str(hf_dir), *PROMPT]) == 0
    out = capsys.readouterr().out
    assert "all 27 module outputs within their bounds" in out  # 2 layers x 12, embed, final norm, logits (tied: no head)
    assert out.count("top-1 agreement 1.0000") == 2


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_a_planted_porting_bug_is_named_where_it_first_shows(hf_dir, tmp_path, capsys, bug: str) -> None:
    plant, expected = PLANTED[bug]
    config, tensors = plant(*load_hf(hf_dir))
    save_checkpoint(tmp_path / "port", config, tensors)
    assert main(["parity", "--against", "hf", str(hf_dir), "--checkpoint", str(tmp_path / "port"), *PROMPT]) == 1
    out = capsys.readouterr().out
    assert f"first module where our stacks part from transformers: {expected}\n" in out, out[-600:]
