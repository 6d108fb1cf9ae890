"""The fast paths compute the same function as the explicit ones, in each stack and across them.

attention="fused": torch F.scaled_dot_product_attention with one q/k/v GEMM on the concatenated
weights; jax jax.nn.dot_product_attention. Compared with attention="math" (the written-out
reference) on logits and gradients, and across the stacks, under the run's tolerance row; a fully
padded source row included (the sources strategy draws them). The fused torch AdamW against the
foreach one. Dropout is off (SDPA's dropout draws its own masks, so only its distribution is shared).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import jax_impl
import torch_impl
from parity_tests.helpers import _jax_loss_and_grads, assert_all_close, torch_loss_and_grads
from parity_tests.test_decoding import few, sources, tiny_models
from shared.config.model_config import ModelConfig
from shared.checkpoints.lora_config import LoRAConfig
from shared.training.train_config import TrainConfig
from torch_impl import lora as torch_lora
from torch_impl.families.transformer import set_attention_kernel
from torch_impl.numpy_bridge import to_numpy
from torch_impl.training import build_optimizer


@pytest.fixture
def tiny_config() -> ModelConfig:
    return ModelConfig.from_preset("tiny", src_vocab_size=16, tgt_vocab_size=16, d_model=16, num_heads=2, d_ff=24)


def targets(data, config, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(tgt_in, tgt_out) (B, T) with PAD tails; every row has at least its first target."""
    T = data.draw(st.integers(1, config.max_len))
    ids = np.asarray(data.draw(st.lists(st.integers(1, config.tgt_vocab_size - 1), min_size=batch * (T + 1),
                                        max_size=batch * (T + 1))), np.int32).reshape(batch, T + 1)
    for row in range(batch):
        ids[row, 1 + data.draw(st.integers(1, T)):] = config.pad_id
    return ids[:, :-1], ids[:, 1:]


@few(2)
@given(data=st.data())
def test_fused_attention_matches_math_in_both_stacks(data, parity_env):
    model, params = data.draw(tiny_models())
    config = dataclasses.replace(model.config, dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0)
    model = torch_impl.from_numpy(config, torch_impl.state_dict_numpy(model)).to(parity_env.torch_device)
    params = parity_env.jax_put(params)
    src = data.draw(sources(config))
    tgt_in, tgt_out = targets(data, config, src.shape[0])
    context = f"src={src.tolist()} tgt_in={tgt_in.tolist()}"
    low = kernel_results(config, model, params, src, tgt_in, tgt_out, parity_env)
    # The same runs in float64 (exact copies of the weights): each path's own rounding error.
    model64 = torch_impl.from_numpy(config, parity_env.reference(torch_impl.state_dict_numpy(model)))
    with jax.enable_x64():
        params64 = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)
        high = kernel_results(config, model64.to(parity_env.torch_device), parity_env.jax_put(params64),
                              src, tgt_in, tgt_out, parity_env)

    def quads(a, b):
        """{name: (a_low, b_low, a_f64, b_f64)} for the loss and every gradient of runs a and b."""
        (loss_a, grads_a), (loss_b, grads_b) = low[a], low[b]
        (loss_a64, grads_a64), (loss_b64, grads_b64) = high[a], high[b]
        return {"loss": (np.float64(loss_a), np.float64(loss_b), np.float64(loss_a64), np.float64(loss_b64)),
                **{k: (grads_a[k], grads_b[k], grads_a64[k], grads_b64[k]) for k in grads_a}}

    def logits(a, b):
        return {"logits": (low[a], low[b], high[a], high[b])}

    precision = parity_env.precision
    for stack in ("torch", "jax"):
        assert_all_close(f"fused vs math attention, logits ({stack})",
                         logits((f"{stack} logits", "math"), (f"{stack} logits", "fused")), precision, context)
        assert_all_close(f"fused vs math attention, gradients ({stack})", quads((stack, "math"), (stack, "fused")),
                         precision, context)
    assert_all_close("fused attention, torch vs jax logits",
                     logits(("torch logits", "fused"), ("jax logits", "fused")), precision, context)
    assert_all_close("fused attention, torch vs jax gradients", quads(("torch", "fused"), ("jax", "fused")),
                     precision, context)


def kernel_results(config, model, params, src, tgt_in, tgt_out, env) -> dict:
    """{(stack, kernel): (loss, grads), (stack + " logits", kernel): logits} in the weights' dtype."""
    results = {}
    for kernel in ("math", "fused"):
        set_attention_kernel(model, kernel)
        results["torch", kernel] = torch_loss_and_grads(model, src, tgt_in, tgt_out, env)
        with torch.no_grad():
            results["torch logits", kernel] = to_numpy(model(env.torch_ids(src), env.torch_ids(tgt_in)))
        jax_model = jax_impl.Transformer(config, attention=kernel)
        loss, grads = _jax_loss_and_grads(jax_model, params, *env.jax_put((src, tgt_in, tgt_out)))
        results["jax", kernel] = float(loss), jax_impl.state_dict_from_params(config, grads)
        forward = jax.jit(jax_model.apply)  # one compile; op by op is slower even for a tiny model
        results["jax logits", kernel] = np.asarray(forward({"params": params}, *env.jax_put((src, tgt_in))))
    return results


def test_fused_attention_keeps_the_checkpoint_layout(tmp_path, tiny_config):
    """Separate q/k/v in the module tree and the file, whichever kernel runs."""
    math_model = torch_impl.Transformer(tiny_config)
    fused_model = torch_impl.Transformer(tiny_config, attention="fused")
    assert list(fused_model.state_dict()) == list(math_model.state_dict())
    torch_impl.save(fused_model, tmp_path / "ckpt")
    loaded = torch_impl.load(tmp_path / "ckpt")
    assert "encoder.layers.0.self_attn.q_proj.weight" in loaded.state_dict()
    jax_model, params = jax_impl.load(tmp_path / "ckpt")
    ids = np.ones((1, 2), np.int32)
    shapes = jax.eval_shape(lambda: jax_impl.Transformer(tiny_config, attention="fused").init(jax.random.key(0), ids, ids))
    assert jax.tree_util.tree_structure(shapes["params"]) == jax.tree_util.tree_structure(params)


def test_fused_projection_keeps_lora_adapters(tiny_config):
    """With PEFT LoRA layers on q/v, the fused kernel must still apply the adapters (no weight concat)."""
    torch.manual_seed(0)
    config = dataclasses.replace(tiny_config, dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0)
    peft_model = torch_lora.apply_lora(torch_impl.Transformer(config), LoRAConfig(r=2, alpha=4, dropout=0.0))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_()  # nonzero adapters: a dropped adapter would change the output
    base = peft_model.base_model.model
    src = torch.tensor([[5, 6, 7, 2], [8, 2, 0, 0]])
    tgt = torch.tensor([[1, 9, 10], [1, 11, 0]])
    base.eval()
    outputs = {}
    for kernel in ("math", "fused"):
        set_attention_kernel(base, kernel)
        with torch.no_grad():
            outputs[kernel] = to_numpy(base(src, tgt))
    np.testing.assert_allclose(outputs["fused"], outputs["math"], rtol=1e-5, atol=1e-5)


def test_fused_adamw_matches_foreach(tiny_config, parity_env):
    """build_optimizer's fused implementation (its GPU default) takes the same steps as foreach.

    Without biases: a k_proj bias has an exactly zero true gradient (softmax ignores a constant
    added to a query's scores), so its computed gradient is rounding noise, which Adam's
    g / sqrt(v) scales up to full-size steps of arbitrary sign in either implementation.
    """
    tiny_config = dataclasses.replace(tiny_config, bias=False)
    train = TrainConfig(optimizer="adamw", lr=1e-2, weight_decay=0.1)
    src = torch.tensor([[5, 6, 7, 2], [8, 2, 0, 0]])
    tgt_in, tgt_out = torch.tensor([[1, 9, 10], [1, 11, 0]]), torch.tensor([[9, 10, 2], [11, 2, 0]])
    params = {}
    for dtype in (torch.float32, torch.float64):  # float64: each implementation's own rounding error
        for fused in (False, True):
            torch.manual_seed(0)
            model = torch_impl.Transformer(tiny_config).to(dtype)
            optimizer = build_optimizer(model, train, fused=fused)
            assert bool(optimizer.defaults.get("fused")) is fused
            for _ in range(3):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(src, tgt_in).flatten(0, 1), tgt_out.flatten(), ignore_index=0).backward()
                optimizer.step()
            params[fused, dtype] = torch_impl.state_dict_numpy(model)
    low, high = torch.float32, torch.float64
    quads = {k: (params[False, low][k], params[True, low][k], params[False, high][k], params[True, high][k])
             for k in params[False, low]}
    assert_all_close("fused vs foreach AdamW, 3 steps", quads, parity_env.precision, "tiny config")
