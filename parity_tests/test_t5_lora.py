"""LoRA on the T5 family: adapters made and trained in one stack, saved in PEFT's format, give the
same logits and adapter gradients in the other (the generic LoRA code, on T5's module names)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F

import jax_impl
import torch_impl
from jax_impl import lora as jax_lora
from parity_tests.t5_reference import check, float64_reference_norms, random_tensors
from shared.config.model_config import ModelConfig
from shared.checkpoints.lora_config import LoRAConfig
from torch_impl import lora as torch_lora
from torch_impl.numpy_bridge import to_numpy

CONFIG = ModelConfig.from_preset(
    "flan-t5-small", d_model=8, num_heads=2, head_size=3, d_ff=6, num_encoder_layers=2, num_decoder_layers=2,
    src_vocab_size=13, tgt_vocab_size=13, max_len=16, dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0,
)
BOOK_LORA = LoRAConfig(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj"))  # the book's targets
SRC = np.array([[5, 6, 7, 1, 0], [8, 9, 10, 11, 1]])
TGT_IN = np.array([[0, 3, 4, 5], [0, 6, 7, 0]])
TGT_OUT = np.array([[3, 4, 5, 1], [6, 7, 1, 0]])


def torch_side(tensors, dtype, adapter_dir):
    model = torch_impl.from_numpy(CONFIG, tensors).to(dtype)
    wrapped = torch_lora.load_adapter(model, adapter_dir, is_trainable=True).to(dtype)
    logits = wrapped(torch.as_tensor(SRC), torch.as_tensor(TGT_IN))
    nll = F.cross_entropy(logits.flatten(0, 1), torch.as_tensor(TGT_OUT).flatten(), ignore_index=0)
    nll.backward()
    grads = {n: to_numpy(p.grad) for n, p in wrapped.named_parameters() if p.requires_grad}
    return logits.detach().numpy(), grads


def jax_side(tensors, dtype, adapter_dir):
    def run():
        params = jax_impl.params_from_state_dict(CONFIG, {k: v.astype(dtype) for k, v in tensors.items()})
        lora, adapters = jax_lora.load_adapter(adapter_dir, CONFIG)
        adapters = jax.tree_util.tree_map(lambda a: a.astype(dtype), adapters)
        model = jax_impl.build_model(CONFIG)

        def loss(a):
            logits = jax_lora.lora_apply(model, params, a, lora, jnp.asarray(SRC), jnp.asarray(TGT_IN))
            nll = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(TGT_OUT))
            keep = jnp.asarray(TGT_OUT != 0, nll.dtype)
            return jnp.sum(nll * keep) / jnp.sum(keep), logits

        (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(adapters)
        # adapter gradients in PEFT's key layout, to compare with torch's parameter names
        return np.asarray(logits), jax_lora.tensors_from_adapters(CONFIG, lora, grads)

    if dtype == np.float64:
        with jax.enable_x64(True):
            return run()
    return run()


def test_t5_adapter_saved_by_torch_runs_and_trains_identically_in_jax(tmp_path):
    tensors = random_tensors(CONFIG, seed=5)
    peft_model = torch_lora.apply_lora(torch_impl.from_numpy(CONFIG, tensors), BOOK_LORA)
    with torch.no_grad():  # a trained-looking adapter: B is zero when fresh
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    torch_lora.save_adapter(peft_model, tmp_path / "adapter")
    t32, tg32 = torch_side(tensors, torch.float32, tmp_path / "adapter")
    t64, tg64 = torch_side(tensors, torch.float64, tmp_path / "adapter")
    j32, jg32 = jax_side(tensors, np.float32, tmp_path / "adapter")
    j64, jg64 = jax_side(tensors, np.float64, tmp_path / "adapter")
    check("T5 + LoRA logits, torch vs jax", t32, j32, t64, j64)
    assert len(jg32) == 2 * 2 * (2 + 2 * 2)  # q and v, A and B, in 2 encoder + 2x2 decoder attentions
    for key, grad in jg32.items():
        torch_name = key.replace(".weight", ".default.weight")  # PEFT's parameter name for the saved key
        check(f"d loss / d {key}", tg32[torch_name], grad, tg64[torch_name], jg64[key])
    # the same file also loads back into torch bit for bit
    again = torch_lora.load_adapter(torch_impl.from_numpy(CONFIG, tensors), tmp_path / "adapter")
    loaded, saved = torch_lora.adapter_tensors(again), torch_lora.adapter_tensors(peft_model)
    assert loaded.keys() == saved.keys() and all(loaded[k].tobytes() == saved[k].tobytes() for k in saved)


def test_t5_adapter_exports_to_peft_on_transformers(tmp_path):
    """export --to hf --adapter: transformers + PeftModel.from_pretrained give torch_impl's logits."""
    import peft
    from transformers import T5ForConditionalGeneration

    from shared.checkpoints.checkpoint import save_checkpoint
    from twinformer.cli import main

    tensors = random_tensors(CONFIG, seed=6)
    peft_model = torch_lora.apply_lora(torch_impl.from_numpy(CONFIG, tensors), BOOK_LORA)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
        ours = peft_model(torch.as_tensor(SRC), torch.as_tensor(TGT_IN)).numpy()
    torch_lora.save_adapter(peft_model, tmp_path / "adapter")
    save_checkpoint(tmp_path / "ckpt", CONFIG, tensors)
    assert main(["export", "--to", "hf", str(tmp_path / "ckpt"), str(tmp_path / "hf"), "--adapter", str(tmp_path / "adapter")]) == 0
    reference = peft.PeftModel.from_pretrained(T5ForConditionalGeneration.from_pretrained(tmp_path / "hf"), tmp_path / "hf" / "adapter").eval()
    src = torch.as_tensor(SRC)

    def theirs():
        with torch.no_grad():
            return reference(input_ids=src, attention_mask=(src != 0).long(), decoder_input_ids=torch.as_tensor(TGT_IN)).logits.numpy()

    theirs32 = theirs()
    reference = reference.double()
    with float64_reference_norms():
        theirs64 = theirs()
    with torch.no_grad():
        ours64 = peft_model.double()(torch.as_tensor(SRC), torch.as_tensor(TGT_IN)).numpy()
    check("torch_impl + adapter vs transformers + exported adapter", ours, theirs32, ours64, theirs64)
