"""Adapters move between jax_impl, torch_impl and the real Hugging Face PEFT library, unchanged.

Covers: jax-saved adapter -> peft.PeftModel.from_pretrained; PEFT-trained and PEFT-saved adapter ->
jax_impl; byte-identical round trip torch -> jax -> torch; target resolution equal to PEFT's;
the `twinformer merge` command in both stacks; errors for adapters that do not fit.
"""

from __future__ import annotations

import copy

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import jax_impl
import torch_impl
from jax_impl import lora as jax_lora
from shared.checkpoints.adapter_io import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, AdapterError, load_adapter
from shared.config.model_config import ModelConfig
from shared.checkpoints.lora_config import LoRAConfig, resolve_targets
from parity_tests.helpers import assert_all_close
from torch_impl import lora as torch_lora
from twinformer.cli import main as twinformer

jax.config.update("jax_default_matmul_precision", "highest")
CONFIG = ModelConfig(src_vocab_size=10, tgt_vocab_size=10, d_model=8, num_heads=2, d_ff=8,
                     num_encoder_layers=1, num_decoder_layers=1, max_len=8, tie_embeddings="tgt_out")
LORA = LoRAConfig(r=2, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj", "fc2"), modules_to_save=("tgt_embed",))
SRC = np.array([[3, 4, 5, 6, 2], [7, 8, 2, 0, 0]], dtype=np.int32)
TGT = np.array([[1, 5, 6, 7], [1, 9, 0, 0]], dtype=np.int32)


def base_checkpoint(tmp_path, seed: int = 0):
    """A saved base model: (directory, torch state dict as numpy)."""
    torch.manual_seed(seed)
    model = torch_impl.Transformer(CONFIG)
    directory = torch_impl.save(model, tmp_path / "base")
    return directory, torch_impl.state_dict_numpy(model)


def torch_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(SRC), torch.from_numpy(TGT)).numpy()


def jax_logits(params, adapters, lora) -> np.ndarray:
    return np.asarray(jax_lora.lora_apply(jax_impl.Transformer(CONFIG), params, adapters, lora, SRC, TGT))


def assert_same_logits(prop: str, torch_model, params, adapters, lora) -> None:
    """A (PEFT or merged) torch model and jax's adapted forward agree, under the bound their float64 runs give."""
    to64 = lambda tree: jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x, np.float64)), tree)  # noqa: E731
    torch64 = torch_logits(copy.deepcopy(torch_model).double())
    with jax.enable_x64():
        jax64 = jax_logits(to64(params), to64(adapters), lora)
    quad = (torch_logits(torch_model), jax_logits(params, adapters, lora), torch64, jax64)
    assert_all_close(prop, {"logits": quad}, "float32", str(lora))


def random_jax_adapters(base, seed: int = 1) -> dict:
    """jax_impl's own init, then B (and the saved copy) moved away from their initial values."""
    params = jax_impl.params_from_state_dict(CONFIG, base)
    adapters = jax_lora.init_adapters(CONFIG, LORA, params, jax.random.key(seed))
    leaves, tree = jax.tree_util.tree_flatten(adapters)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return tree.unflatten([x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def test_jax_saved_adapter_loads_into_peft(tmp_path) -> None:
    _, base = base_checkpoint(tmp_path)
    adapters = random_jax_adapters(base)
    jax_lora.save_adapter(tmp_path / "adapter", CONFIG, LORA, adapters)

    peft_model = peft.PeftModel.from_pretrained(torch_impl.from_numpy(CONFIG, base), tmp_path / "adapter")
    assert_same_logits("peft interop: jax-saved adapter in PEFT", peft_model, jax_impl.params_from_state_dict(CONFIG, base), adapters, LORA)
    ours = torch_lora.load_adapter(torch_impl.from_numpy(CONFIG, base), tmp_path / "adapter")
    np.testing.assert_array_equal(torch_logits(ours), torch_logits(peft_model))


def test_peft_trained_and_saved_adapter_loads_into_jax(tmp_path) -> None:
    """A few SGD steps with PEFT itself, saved by PEFT's save_pretrained, read by jax_impl."""
    _, base = base_checkpoint(tmp_path)
    peft_model = peft.get_peft_model(torch_impl.from_numpy(CONFIG, base), torch_lora.peft_config(LORA))
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    labels = torch.from_numpy(np.roll(TGT, -1, axis=1)).long()
    for _ in range(3):
        logits = peft_model(torch.from_numpy(SRC), torch.from_numpy(TGT))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 10), labels.reshape(-1), ignore_index=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    peft_model.save_pretrained(tmp_path / "peft_adapter")
    trained = torch_logits(peft_model)
    assert np.abs(trained - torch_logits(torch_impl.from_numpy(CONFIG, base))).max() > 1e-3  # it moved

    lora, adapters = jax_lora.load_adapter(tmp_path / "peft_adapter", CONFIG)
    assert lora == LORA
    assert_same_logits("peft interop: PEFT-saved adapter in jax", peft_model, jax_impl.params_from_state_dict(CONFIG, base), adapters, lora)


def test_round_trip_through_both_stacks_is_byte_identical(tmp_path) -> None:
    _, base = base_checkpoint(tmp_path)
    peft_model = torch_lora.apply_lora(torch_impl.from_numpy(CONFIG, base), LORA)
    rng = np.random.default_rng(0)
    torch_lora.set_adapter_tensors(peft_model, {k: rng.standard_normal(v.shape).astype(np.float32)
                                                for k, v in torch_lora.adapter_tensors(peft_model).items()})
    torch_lora.save_adapter(peft_model, tmp_path / "torch")
    lora, adapters = jax_lora.load_adapter(tmp_path / "torch", CONFIG)
    jax_lora.save_adapter(tmp_path / "jax", CONFIG, lora, adapters)
    for name in (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE):
        assert (tmp_path / "torch" / name).read_bytes() == (tmp_path / "jax" / name).read_bytes()
    again = torch_lora.load_adapter(torch_impl.from_numpy(CONFIG, base), tmp_path / "jax")
    for key, value in torch_lora.adapter_tensors(peft_model).items():
        np.testing.assert_array_equal(torch_lora.adapter_tensors(again)[key], value)


@settings(max_examples=8, deadline=None)
@given(
    targets=st.one_of(
        st.lists(st.sampled_from(["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "output_proj"]), min_size=1, unique=True),
        st.sampled_from([r".*self_attn\.(q|k)_proj", r"decoder\.layers\.0\.ffn\.fc1", r".*_proj"]),
    ),
    save=st.lists(st.sampled_from(["output_proj", "tgt_embed"]), unique=True),
)
def test_target_resolution_matches_peft(targets, save) -> None:
    """Our framework-free matching picks exactly the Linear layers PEFT wraps."""
    config = CONFIG.replace(tie_embeddings="none")
    lora = LoRAConfig(r=2, alpha=2, target_modules=targets if isinstance(targets, str) else tuple(targets),
                      modules_to_save=tuple(save))
    wrapped = peft.get_peft_model(torch_impl.Transformer(config), torch_lora.peft_config(lora))
    peft_targets = sorted(name.removeprefix("base_model.model.") for name, module in wrapped.named_modules()
                          if isinstance(module, peft.tuners.lora.LoraLayer))
    assert sorted(t.module for t in resolve_targets(config, lora)) == peft_targets


@pytest.mark.parametrize("stack", ["torch", "jax"])
def test_merge_command_writes_a_full_checkpoint(tmp_path, stack, capsys) -> None:
    base_dir, base = base_checkpoint(tmp_path)
    adapters = random_jax_adapters(base)
    jax_lora.save_adapter(tmp_path / "adapter", CONFIG, LORA, adapters)
    code = twinformer(["merge", "--base", str(base_dir), "--adapter", str(tmp_path / "adapter"),
                       "--out", str(tmp_path / "merged"), "--stack", stack])
    assert code == 0 and "merged 8 adapted layer(s)" in capsys.readouterr().out
    merged = torch_impl.load(tmp_path / "merged")
    assert_same_logits("peft interop: merged checkpoint", merged, jax_impl.params_from_state_dict(CONFIG, base), adapters, LORA)


def test_merge_command_reports_a_misfit_cleanly(tmp_path, capsys) -> None:
    base_dir, base = base_checkpoint(tmp_path)
    jax_lora.save_adapter(tmp_path / "adapter", CONFIG, LORA, random_jax_adapters(base))
    other = CONFIG.replace(d_model=4)
    torch_impl.save(torch_impl.Transformer(other), tmp_path / "other")
    assert twinformer(["merge", "--base", str(tmp_path / "other"), "--adapter", str(tmp_path / "adapter"),
                       "--out", str(tmp_path / "merged")]) == 2
    assert "shape mismatch" in capsys.readouterr().err
    assert not (tmp_path / "merged").exists()


# -- errors ----------------------------------------------------------------------------------------
@pytest.fixture
def saved_adapter(tmp_path):
    _, base = base_checkpoint(tmp_path)
    return jax_lora.save_adapter(tmp_path / "adapter", CONFIG, LORA, random_jax_adapters(base))


def test_adapter_for_another_base_size_lists_every_shape_problem(saved_adapter) -> None:
    with pytest.raises(AdapterError) as error:
        load_adapter(saved_adapter, CONFIG.replace(d_model=4, d_ff=6))
    message = str(error.value)
    assert message.count("shape mismatch") == 17  # 8 layers x (A, B) + the saved tgt_embed
    assert "another size" in message


def test_adapter_with_unknown_module_and_wrong_rank(saved_adapter) -> None:
    from safetensors.numpy import load_file, save_file

    path = saved_adapter / ADAPTER_WEIGHTS_FILE
    tensors = load_file(path)
    tensors["base_model.model.encoder.layers.5.self_attn.q_proj.lora_A.weight"] = np.zeros((2, 8), np.float32)
    key = "base_model.model.decoder.layers.0.cross_attn.v_proj.lora_A.weight"
    tensors[key] = np.zeros((3, 8), np.float32)
    save_file(tensors, path)
    with pytest.raises(AdapterError) as error:
        jax_lora.load_adapter(saved_adapter, CONFIG)
    message = str(error.value)
    assert "no module 'encoder.layers.5.self_attn.q_proj'" in message
    assert f"shape mismatch for {key}: expected (2, 8), found (3, 8) (rank 3 in the file, r=2 in the config)" in message


def test_adapter_config_with_unsupported_or_misfit_settings(saved_adapter) -> None:
    config_path = saved_adapter / ADAPTER_CONFIG_FILE
    data = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**data, "use_dora": True, "peft_type": "IA3"}))
    with pytest.raises(AdapterError) as error:
        load_adapter(saved_adapter, CONFIG)
    assert "use_dora=True is not supported" in str(error.value) and "peft_type is 'IA3'" in str(error.value)
    config_path.write_text(json.dumps({**data, "target_modules": ["q_proj", "attention"]}))
    with pytest.raises(AdapterError, match="unknown target module 'attention'"):
        load_adapter(saved_adapter, CONFIG)
    shutil.rmtree(saved_adapter)
    with pytest.raises(AdapterError, match="does not exist"):
        load_adapter(saved_adapter, CONFIG)
