"""Messages of the HF config translation that name the value refused (issue #18 item 8)."""

from __future__ import annotations

import pytest

from shared.config.model_config import ConfigError
from shared.config.model_config import ModelConfig

GPT2 = {"model_type": "gpt2", "vocab_size": 10, "n_embd": 8, "n_layer": 1, "n_head": 2, "n_positions": 16}


def test_a_null_pad_beside_a_null_eos_is_not_called_supported():
    with pytest.raises(ConfigError) as error:
        ModelConfig.from_hf({**GPT2, "bos_token_id": None, "eos_token_id": None, "pad_token_id": None})
    pad_line = next(line for line in str(error.value).splitlines() if "pad_token_id" in line)
    assert "or null is supported" not in pad_line
    assert pad_line.strip() == ("- pad_token_id=null pads with eos_token_id, which is None: give an integer "
                                "pad_token_id or eos_token_id")  # fmt: skip


def test_a_non_integer_pad_is_named_as_given():
    with pytest.raises(ConfigError, match=r"pad_token_id='0': an integer token id is supported"):
        ModelConfig.from_hf({**GPT2, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": "0"})


def test_the_parity_report_and_readme_carry_the_left_padding_note():
    from pathlib import Path

    from shared.parity.tolerances import Comparison
    from twinformer.parity_report import LEFT_PADDING_NOTE, LayerDiff, format_report

    comparison = Comparison(max_abs=0.0, limit=1e-6, own_error=1e-7, scale=1.0)
    report = format_report([LayerDiff("embed", (2, 3), comparison, 1e-16)], "float32")
    assert report.splitlines()[-1] == LEFT_PADDING_NOTE and "cumsum(mask) - 1" in LEFT_PADDING_NOTE
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    notes = readme.split("## Porting notes", 1)[1].split("\n## ", 1)[0]
    assert "position_ids=(mask.cumsum(-1) - 1)" in notes
