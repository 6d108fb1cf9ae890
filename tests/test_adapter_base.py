"""Adapters on the wrong base (#18 item 3) and the one path rule for adapters (#18 item 7).

An adapter that recorded its base's sha256 (a LoRA fine-tuning checkpoint) is refused on other
weights of the same shape, in one line naming both hashes and --force, by the commands and by both
stacks' `load_adapter`; --force applies it anyway; an adapter without a recorded hash (PEFT's) is
accepted. The fingerprint of a checkpoint is cached and recomputed when its weights change. An
adapter for a model of another size names the layer counts and widths. `load_adapter` in both
stacks takes every path `--adapter` takes (a LoRA run, its checkpoint, a PEFT directory, a
directory holding adapter/), and a wrong one lists what was looked for.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import jax_impl
import torch_impl
from jax_impl import lora as jax_lora
from shared.checkpoints import adapter_base
from shared.checkpoints.adapter_base import AdapterBaseMismatch, checkpoint_fingerprint, fingerprint
from shared.checkpoints.adapter_io import AdapterError, load_adapter
from shared.checkpoints.checkpoint import load_checkpoint
from shared.checkpoints.lora_config import LoRAConfig
from shared.config.model_config import ModelConfig
from torch_impl import lora as torch_lora
from twinformer.cli import main as twinformer

CONFIG = ModelConfig(src_vocab_size=10, tgt_vocab_size=10, d_model=8, num_heads=2, d_ff=8,
                     num_encoder_layers=1, num_decoder_layers=1, max_len=8)  # fmt: skip
LORA = LoRAConfig(r=2, alpha=4, dropout=0.0, target_modules=("q_proj", "v_proj"))

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TWINFORMER_CACHE", str(tmp_path / "cache"))


def save_base(directory: Path, seed: int, config: ModelConfig = CONFIG) -> Path:
    torch.manual_seed(seed)
    return torch_impl.save(torch_impl.build_model(config), directory)


def save_trained_adapter(directory: Path, base: Path, record_hash: bool = True, lora: LoRAConfig = LORA) -> Path:
    """An adapter (B moved off zero) saved as a LoRA checkpoint does: with the base's fingerprint in
    trainer_state.json, computed as shared/training/finetune.py's load_base computes it."""
    peft_model = torch_lora.apply_lora(torch_impl.load(base), lora)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.5)
    torch_lora.save_adapter(peft_model, directory)
    if record_hash:
        state = {"finetune": {"mode": "lora", "base_checkpoint": str(base),
                              "base_sha256": fingerprint(load_checkpoint(base)[1])}}  # fmt: skip
        (directory / "trainer_state.json").write_text(json.dumps(state))
    return directory


@pytest.fixture
def dirs(tmp_path):
    base, other = save_base(tmp_path / "base", 0), save_base(tmp_path / "other", 1)
    return base, other, save_trained_adapter(tmp_path / "adapter", base)


# -- the recorded base hash -------------------------------------------------------------------------
def test_merge_refuses_another_base_in_one_line_and_force_overrides(dirs, tmp_path, capsys) -> None:
    base, other, adapter = dirs
    expected, found = checkpoint_fingerprint(base)[:16], checkpoint_fingerprint(other)[:16]
    for framework in ("torch", "jax"):
        out = tmp_path / f"merged-{framework}"
        assert twinformer(["merge", "--base", str(other), "--adapter", str(adapter), "--out", str(out),
                           "--framework", framework]) == 2  # fmt: skip
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and expected in error and found in error and "--force" in error, error
        assert not out.exists()
        assert twinformer(["merge", "--base", str(other), "--adapter", str(adapter), "--out", str(out),
                           "--framework", framework, "--force"]) == 0  # fmt: skip
        assert "warning (--force)" in capsys.readouterr().err and (out / "model.safetensors").is_file()
        assert twinformer(["merge", "--base", str(base), "--adapter", str(adapter), "--out", str(tmp_path / f"ok-{framework}"),
                           "--framework", framework]) == 0  # fmt: skip


def test_serve_refuses_another_base_before_loading_the_model(dirs, capsys) -> None:
    base, other, adapter = dirs
    assert twinformer(["serve", "--checkpoint", str(other), "--adapter", f"lora={adapter}", "--port", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and checkpoint_fingerprint(other)[:16] in error and "--force" in error, error


def test_export_refuses_another_base_and_writes_nothing(tmp_path, capsys) -> None:
    from parity_tests.t5_reference import random_tensors
    from parity_tests.test_t5_lora import BOOK_LORA, CONFIG as T5
    from shared.checkpoints.checkpoint import save_checkpoint

    base, other = (save_checkpoint(tmp_path / name, T5, random_tensors(T5, seed)) for name, seed in (("base", 1), ("other", 2)))
    adapter = save_trained_adapter(tmp_path / "adapter", base, lora=BOOK_LORA)
    out = tmp_path / "hf"
    assert twinformer(["export", "--to", "hf", str(other), str(out), "--adapter", str(adapter)]) == 2
    error = capsys.readouterr().err
    assert checkpoint_fingerprint(other)[:16] in error and "--force" in error and not out.exists()
    assert twinformer(["export", "--to", "hf", str(other), str(out), "--adapter", str(adapter), "--force"]) == 0
    assert twinformer(["export", "--to", "hf", str(base), str(tmp_path / "hf2"), "--adapter", str(adapter)]) == 0
    assert (tmp_path / "hf2" / "adapter" / "adapter_config.json").is_file()


def test_python_api_of_both_stacks_checks_the_base(dirs) -> None:
    base, other, adapter = dirs
    with pytest.raises(AdapterBaseMismatch, match="force"):
        torch_lora.load_adapter(torch_impl.load(other), adapter)  # hashed in memory
    with pytest.raises(AdapterBaseMismatch):
        torch_lora.load_adapter(torch_impl.load(base), adapter, base=other)  # the named base
    torch_lora.load_adapter(torch_impl.load(base), adapter)
    torch_lora.load_adapter(torch_impl.load(other), adapter, force=True)
    _, other_params = jax_impl.load(other)
    with pytest.raises(AdapterBaseMismatch):
        jax_lora.load_adapter(adapter, CONFIG, params=other_params)
    with pytest.raises(AdapterBaseMismatch):
        jax_lora.load_adapter(adapter, CONFIG, base=other)
    jax_lora.load_adapter(adapter, CONFIG, params=jax_impl.load(base)[1])
    jax_lora.load_adapter(adapter, CONFIG, base=other, force=True)


def test_an_adapter_without_a_recorded_hash_is_accepted_unchecked(dirs, tmp_path) -> None:
    base, other, _ = dirs
    peft_dir = save_trained_adapter(tmp_path / "peft", base, record_hash=False)  # as PEFT's save_pretrained
    torch_lora.load_adapter(torch_impl.load(other), peft_dir)
    jax_lora.load_adapter(peft_dir, CONFIG, base=other)


def test_the_fingerprint_is_cached_until_the_weights_change(dirs, monkeypatch) -> None:
    base, other, _ = dirs
    calls = []
    real = adapter_base.fingerprint
    monkeypatch.setattr(adapter_base, "fingerprint", lambda tensors: calls.append(1) or real(tensors))
    first = checkpoint_fingerprint(base)
    assert checkpoint_fingerprint(base) == first and len(calls) == 1  # the second from the cache
    assert first == fingerprint(load_checkpoint(base)[1])  # what fine-tuning records
    shutil.copyfile(other / "model.safetensors", base / "model.safetensors")  # same size, new bytes
    assert checkpoint_fingerprint(base) == checkpoint_fingerprint(other) != first and len(calls) == 3


# -- another size ----------------------------------------------------------------------------------
def test_the_books_flan_t5_adapter_on_a_smaller_t5_names_both_sizes() -> None:
    from shared.config.presets import PRESETS
    from shared.data.data_dirs import search_dirs

    book = next((d / "flan-t5-base_lora" for d in search_dirs("tweetsum") if (d / "flan-t5-base_lora").is_dir()), None)
    if book is None:
        pytest.skip("the book's ch5 adapter is not here (set TWINFORMER_TWEETSUM_DIR to the book-ch5 folder)")
    small = PRESETS["flan-t5-base"].replace(num_encoder_layers=2, num_decoder_layers=2, d_model=64, num_heads=2,
                                            head_size=32, d_ff=128)  # fmt: skip
    with pytest.raises(AdapterError) as error:
        load_adapter(book, small)
    first = str(error.value).splitlines()[0]
    assert first.endswith("adapter was trained on 12 layers of d_model 768; this model has 2 layers of d_model 64"), first


def test_adapter_of_another_size_names_layers_and_width(tmp_path) -> None:
    small = CONFIG.replace(num_encoder_layers=2, num_decoder_layers=2, d_model=12, d_ff=12, num_heads=2)
    adapter = save_trained_adapter(tmp_path / "adapter", save_base(tmp_path / "big", 0, small), record_hash=False)
    for load in (lambda: load_adapter(adapter, CONFIG), lambda: torch_lora.load_adapter(torch_impl.build_model(CONFIG), adapter)):
        with pytest.raises(AdapterError) as error:
            load()
        first = str(error.value).splitlines()[0]
        assert first.endswith("adapter was trained on 2 layers of d_model 12; this model has 1 layers of d_model 8"), first


# -- one path rule ---------------------------------------------------------------------------------
def test_load_adapter_takes_every_path_adapter_takes(dirs, tmp_path) -> None:
    base, _, adapter = dirs
    run = tmp_path / "run"
    shutil.copytree(adapter, run / "checkpoints" / "step_0000006")
    (run / "checkpoints" / "latest").write_text("step_0000006\n")
    exported = tmp_path / "exported"
    shutil.copytree(adapter, exported / "adapter")
    (exported / "config.json").write_text("{}")
    peft_dir = tmp_path / "peft"
    peft_model = torch_lora.apply_lora(torch_impl.load(base), LORA)
    peft_model.save_pretrained(peft_dir)  # PEFT's own writer
    expected = load_adapter(adapter, CONFIG)[1]
    for path in (run, run / "checkpoints", run / "checkpoints" / "step_0000006", exported, adapter):
        torch_tensors = torch_lora.adapter_tensors(torch_lora.load_adapter(torch_impl.load(base), path))
        _, jax_adapters = jax_lora.load_adapter(path, CONFIG, base=base)
        jax_tensors = jax_lora.tensors_from_adapters(CONFIG, LORA, jax_adapters)
        for key, value in expected.items():
            assert np.array_equal(torch_tensors[key], value) and np.array_equal(jax_tensors[key], value), (path, key)
    torch_lora.load_adapter(torch_impl.load(base), peft_dir)
    jax_lora.load_adapter(peft_dir, CONFIG)


def test_a_wrong_adapter_path_lists_what_was_looked_for(dirs, tmp_path, capsys) -> None:
    base, _, _ = dirs
    empty = tmp_path / "empty"
    empty.mkdir()
    looked = [str(empty / "adapter_config.json"), str(empty / "checkpoints" / "latest"),
              str(empty / "adapter" / "adapter_config.json")]  # fmt: skip
    for load in (lambda: torch_lora.load_adapter(torch_impl.load(base), empty), lambda: jax_lora.load_adapter(empty, CONFIG)):
        with pytest.raises(AdapterError) as error:
            load()
        assert all(path in str(error.value) for path in looked), str(error.value)
    assert twinformer(["merge", "--base", str(base), "--adapter", str(empty), "--out", str(tmp_path / "m")]) == 2
    error = capsys.readouterr().err
    assert all(path in error for path in looked), error
