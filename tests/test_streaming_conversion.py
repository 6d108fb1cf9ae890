"""`convert --from hf` / `export --to hf` stream tensor by tensor: sharded read, sharded write with
its index, dtypes kept, byte-equal round trips, and peak memory of about one tensor.

Memory is measured with tracemalloc (numpy registers its buffers with it), which counts the bytes
Python and numpy allocate, deterministically and whatever the machine: a planted "read every tensor
first" must break the same bound, so the bound has teeth. Real-size resident memory (RSS) is
measured by benchmarks/convert_memory.py.
"""

from __future__ import annotations

import json
import tracemalloc

import ml_dtypes
import numpy as np
import pytest
import torch

import shared.checkpoints.checkpoint
import shared.checkpoints.hf_checkpoint
from shared.checkpoints.checkpoint import load_checkpoint
from shared.config.model_config import ModelConfig
from shared.checkpoints.hf_checkpoint import HF_INDEX_FILE, parse_size, read_hf_tensors, shard_plan
from shared.checkpoints.safetensors_stream import LazyTensor, lazy_tensors, load
from twinformer.cli import main

# 8 layers so the whole model (~2.9 MB in bf16) is many times its largest tensor (128 KiB)
CONFIG = ModelConfig.from_preset(
    "llama-small", d_model=128, num_heads=4, num_kv_heads=2, d_ff=256, num_decoder_layers=8, src_vocab_size=512,
    tgt_vocab_size=512, max_len=32, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
)
SHARD = "300KB"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """transformers' own bf16 LlamaForCausalLM, saved by save_pretrained in 300 KB shards."""
    from parity_tests.causal_lm_helpers import hf_model

    directory = tmp_path_factory.mktemp("hf")
    hf_model(CONFIG, seed=0).to(torch.bfloat16).save_pretrained(directory, max_shard_size=SHARD)
    assert (directory / HF_INDEX_FILE).is_file() and not (directory / "model.safetensors").exists()
    return directory


def _largest_tensor(tensors: dict) -> int:
    return max(t.nbytes for t in tensors.values())


def test_sharded_hf_round_trip_keeps_bf16_and_every_byte(hf_dir, tmp_path) -> None:
    import transformers

    assert main(["convert", "--from", "hf", str(hf_dir), str(tmp_path / "ckpt")]) == 0
    config, ours = load_checkpoint(tmp_path / "ckpt")
    assert config == CONFIG
    assert {value.dtype for value in ours.values()} == {np.dtype(ml_dtypes.bfloat16)}  # not widened

    assert main(["export", "--to", "hf", str(tmp_path / "ckpt"), str(tmp_path / "out"), "--max-shard-size", SHARD]) == 0
    index = json.loads((tmp_path / "out" / HF_INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((tmp_path / "out" / name).is_file() for name in shards)
    for name in shards:  # each shard holds what the index says, within the size (one tensor may exceed it alone)
        tensors = lazy_tensors(tmp_path / "out" / name)
        assert set(tensors) == {key for key, shard in index["weight_map"].items() if shard == name}
        assert len(tensors) == 1 or sum(t.nbytes for t in tensors.values()) <= parse_size(SHARD)
    before, after = read_hf_tensors(hf_dir), read_hf_tensors(tmp_path / "out")
    assert set(after) == set(before)
    for key, value in after.items():
        assert value.dtype == before[key].dtype and value.tobytes() == before[key].tobytes(), key
    assert index["metadata"]["total_size"] == sum(value.nbytes for value in after.values())

    original = transformers.LlamaForCausalLM.from_pretrained(hf_dir).eval()
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert reloaded.dtype == torch.bfloat16
    ids = torch.as_tensor(np.random.default_rng(0).integers(0, 512, (2, 24)))
    with torch.no_grad():
        assert torch.equal(original(ids).logits, reloaded(ids).logits)


def test_default_shard_size_writes_one_file_and_dtype_casts_on_request(hf_dir, tmp_path) -> None:
    assert main(["convert", "--from", "hf", str(hf_dir), str(tmp_path / "ckpt"), "--dtype", "float32"]) == 0
    _, ours = load_checkpoint(tmp_path / "ckpt")
    assert {value.dtype for value in ours.values()} == {np.dtype(np.float32)}
    assert main(["export", "--to", "hf", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file() and not (tmp_path / "out" / HF_INDEX_FILE).exists()
    exported = read_hf_tensors(tmp_path / "out")
    for key, value in read_hf_tensors(hf_dir).items():  # bf16 -> float32 is exact
        assert np.array_equal(exported[key], value.astype(np.float32)), key


def test_a_checkpoint_mixing_dtypes_is_refused_unless_a_dtype_is_asked_for(hf_dir, tmp_path, capsys) -> None:
    from safetensors.numpy import save_file

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "config.json").write_text((hf_dir / "config.json").read_text())
    tensors = read_hf_tensors(hf_dir)
    norms = [key for key in tensors if key.endswith("norm.weight")]
    save_file({key: value.astype(np.float32) if key in norms else value for key, value in tensors.items()},
              str(mixed / "model.safetensors"))  # float32 norms beside bf16 weights, as some checkpoints hold
    assert main(["convert", "--from", "hf", str(mixed), str(tmp_path / "refused")]) == 2
    message = capsys.readouterr().err
    assert "dtype mismatch for layers.0.attn_norm.weight: expected bfloat16" in message and "final_norm" in message
    assert main(["convert", "--from", "hf", str(mixed), str(tmp_path / "ckpt"), "--dtype", "bfloat16"]) == 0
    _, ours = load_checkpoint(tmp_path / "ckpt")
    assert {value.dtype for value in ours.values()} == {np.dtype(ml_dtypes.bfloat16)}


def test_both_stacks_load_a_lazy_checkpoint_bit_for_bit(hf_dir, tmp_path) -> None:
    import jax_impl
    import torch_impl
    from flax.traverse_util import flatten_dict
    from torch_impl.numpy_bridge import to_numpy

    assert main(["convert", "--from", "hf", str(hf_dir), str(tmp_path / "ckpt")]) == 0
    _, tensors = load_checkpoint(tmp_path / "ckpt")
    model = torch_impl.load(tmp_path / "ckpt")
    for key, value in model.state_dict().items():
        assert to_numpy(value).tobytes() == tensors[key].tobytes(), key
    _, params = jax_impl.load(tmp_path / "ckpt")
    assert jax_impl.state_dict_from_params(CONFIG, params).keys() == tensors.keys()
    for key, value in jax_impl.state_dict_from_params(CONFIG, params).items():
        assert np.asarray(value).tobytes() == tensors[key].tobytes(), key
    assert len(flatten_dict(params)) == len(tensors)


def test_shard_plan_cuts_in_order_and_gives_a_large_tensor_its_own_shard() -> None:
    def sized(n: int) -> LazyTensor:
        return LazyTensor((n,), np.dtype(np.uint8), lambda: np.zeros(n, np.uint8))

    tensors = {"a": sized(40), "b": sized(50), "c": sized(200), "d": sized(10), "e": sized(95)}
    assert shard_plan(tensors, 100) == [["a", "b"], ["c"], ["d"], ["e"]]
    assert parse_size("500MB") == 500 * 10**6 and parse_size("2GiB") == 2 * 2**30 and parse_size(123) == 123
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def _peak_bytes(argv: list[str]) -> int:
    """Peak traced allocation of one CLI call (imports done by an earlier call)."""
    tracemalloc.start()
    try:
        assert main(argv) == 0
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _memory_bound(tensors: dict) -> int:
    # a tensor read plus its renamed copy in flight, and a constant for headers, JSON and the CLI
    return 2 * _largest_tensor(tensors) + 256 * 1024


def test_conversion_holds_about_one_tensor_and_a_planted_full_read_breaks_the_bound(hf_dir, tmp_path, monkeypatch) -> None:
    tensors = shared.checkpoints.hf_checkpoint.read_hf_lazy(hf_dir)
    total = sum(t.nbytes for t in tensors.values())
    bound = _memory_bound(tensors)
    assert total > 3 * bound  # the model is large enough for a full read to show

    assert main(["convert", "--from", "hf", str(hf_dir), str(tmp_path / "warm")]) == 0  # imports, caches
    assert main(["export", "--to", "hf", str(tmp_path / "warm"), str(tmp_path / "warm-out")]) == 0
    convert = _peak_bytes(["convert", "--from", "hf", str(hf_dir), str(tmp_path / "ckpt")])
    export = _peak_bytes(["export", "--to", "hf", str(tmp_path / "ckpt"), str(tmp_path / "out"), "--max-shard-size", SHARD])
    assert convert <= bound and export <= bound, (convert, export, bound, total)

    # planted: every tensor read before anything is written
    read_lazy, load_lazy = shared.checkpoints.hf_checkpoint.read_hf_lazy, shared.checkpoints.checkpoint.load_checkpoint_lazy
    monkeypatch.setattr(shared.checkpoints.hf_checkpoint, "read_hf_lazy", lambda d: {k: load(v) for k, v in read_lazy(d).items()})
    monkeypatch.setattr(shared.checkpoints.checkpoint, "load_checkpoint_lazy",
                        lambda d: (lambda c, t: (c, {k: load(v) for k, v in t.items()}))(*load_lazy(d)))
    planted_convert = _peak_bytes(["convert", "--from", "hf", str(hf_dir), str(tmp_path / "ckpt2")])
    planted_export = _peak_bytes(["export", "--to", "hf", str(tmp_path / "ckpt2"), str(tmp_path / "out2")])
    assert planted_convert > bound and planted_export > bound, (planted_convert, planted_export, bound)
    print(f"traced peak / bound: convert {convert / bound:.2f}, export {export / bound:.2f}; planted full read: "
          f"convert {planted_convert / bound:.2f}, export {planted_export / bound:.2f}")
