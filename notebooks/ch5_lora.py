# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 5: LoRA fine-tuning, object-oriented and functional
#
# LoRA freezes a pre-trained weight W and learns a low-rank update: a targeted Linear computes
# `y = x Wᵀ + b + scaling · (x Aᵀ) Bᵀ`, with A (r, in), B (out, r) and `scaling = alpha / r`.
# The book's chapter 5 uses Hugging Face PEFT. Here `torch_impl.lora` *is* PEFT (the model is
# wrapped in a `PeftModel`), and `jax_impl.lora` is its functional twin: the adapters are a pytree
# of their own, added to the unchanged Flax model at call time. Both read and write the same PEFT
# adapter files.

# %%
import jax
import jax.numpy as jnp
import numpy as np
import torch

import jax_impl
import torch_impl
from _check import agree, same
from jax_impl import lora as jax_lora
from shared.config.model_config import ModelConfig
from shared.checkpoints.init import initial_tensors
from shared.checkpoints.lora_config import LoRAConfig
from torch_impl import lora as torch_lora
from twinformer.devices import pin_precision

pin_precision("float32")
torch.set_num_threads(1)

config = ModelConfig(
    src_vocab_size=12, tgt_vocab_size=12, d_model=16, num_heads=2, d_ff=32,
    num_encoder_layers=1, num_decoder_layers=1, max_len=12,
    dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0,
)
lora = LoRAConfig(r=2, alpha=4, dropout=0.0, target_modules=("q_proj", "v_proj"))  # the book's targets
print("scaling = alpha / r =", lora.scaling)

base = initial_tensors(config, seed=0)  # the "pre-trained" base weights, one copy for each stack
src = np.array([[4, 5, 6, 7, 2], [8, 9, 2, 0, 0]], dtype=np.int32)  # (B, S)
tgt = np.array([[1, 10, 11, 4], [1, 5, 0, 0]], dtype=np.int32)  # (B, T)
src_t, tgt_t = torch.as_tensor(src, dtype=torch.long), torch.as_tensor(tgt, dtype=torch.long)
jax_model = jax_impl.Transformer(config)
params = jax_impl.params_from_state_dict(config, base)
with torch.no_grad():
    base_logits = torch_impl.from_numpy(config, {k: v.copy() for k, v in base.items()}).eval()(src_t, tgt_t)

# %% [markdown] concept="lora_init"
# ## Adding fresh adapters
#
# PyTorch/PEFT: `get_peft_model` replaces each targeted `nn.Linear` *in place* by a LoRA layer that
# holds the original Linear plus `lora_A`, `lora_B` sub-layers, and sets `requires_grad=False` on
# everything else. JAX: `init_adapters` returns a new pytree `{"lora": {path: {"lora_A",
# "lora_B"}}}`; the base params are not touched. In both, A starts kaiming-uniform (bound
# 1/√in) and B at zero, so a fresh adapter leaves the model's output unchanged.
#
# **Pitfall (PARITY_PITFALLS item 9):** PEFT stores A as (r, in) and B as (out, r); Flax kernels are
# (in, out), so here A is (in, r) and B is (r, out): transposes, not a swap of the names.

# %% concept="lora_init" side="torch"
peft_model = torch_lora.apply_lora(torch_impl.from_numpy(config, {k: v.copy() for k, v in base.items()}), lora).eval()
q_lora = peft_model.base_model.model.encoder.layers[0].self_attn.q_proj  # a peft LoraLayer now
print(type(q_lora).__name__, "A", tuple(q_lora.lora_A["default"].weight.shape), "B", tuple(q_lora.lora_B["default"].weight.shape))
with torch.no_grad():
    fresh_logits_t = peft_model(src_t, tgt_t)

# %% concept="lora_init" side="jax"
adapters = jax_lora.init_adapters(config, lora, params, jax.random.key(0))
q_pair = adapters["lora"]["encoder"]["layers_0"]["self_attn"]["q_proj"]
print("A", q_pair["lora_A"]["kernel"].shape, "B", q_pair["lora_B"]["kernel"].shape)
# jit compiles the whole adapted forward once (op by op, every new op would compile on its own)
adapted_forward = jax.jit(lambda adapters, params: jax_lora.lora_apply(jax_model, params, adapters, lora, src, tgt))
fresh_logits_j = adapted_forward(adapters, params)

# %% concept="lora_init" side="check"
bound = 1 / np.sqrt(config.d_model)
assert np.all(q_lora.lora_B["default"].weight.detach().numpy() == 0) and np.all(np.asarray(q_pair["lora_B"]["kernel"]) == 0)
assert np.abs(q_lora.lora_A["default"].weight.detach().numpy()).max() <= bound
assert np.abs(np.asarray(q_pair["lora_A"]["kernel"])).max() <= bound
same("fresh adapter: torch output unchanged", fresh_logits_t, base_logits)
agree("fresh adapter: jax vs torch", fresh_logits_t, fresh_logits_j)

# %% [markdown] concept="lora_forward"
# ## The adapted forward pass
#
# To compare something non-trivial, both stacks get the same *trained-looking* adapter (A and B
# non-zero), moved through the PEFT tensor format: PEFT keys such as
# `base_model.model.encoder.layers.0.self_attn.q_proj.lora_A.weight`. PyTorch then just calls the
# wrapped model; JAX calls `lora_apply`, which runs `model.apply` under
# `flax.linen.intercept_methods` and adds `scaling · (x A) B` to each targeted `Dense` output. The
# model code knows nothing of LoRA in either stack.

# %% concept="lora_forward" side="torch"
rng = np.random.default_rng(1)
trained = {
    key: (rng.standard_normal(value.shape) / (4 if key.endswith("lora_A.weight") else lora.scaling)).astype(np.float32)
    for key, value in torch_lora.adapter_tensors(peft_model).items()
}  # {PEFT key: array}
torch_lora.set_adapter_tensors(peft_model, trained)
with torch.no_grad():
    lora_logits_t = peft_model(src_t, tgt_t)  # (B, T, V)

# %% concept="lora_forward" side="jax"
adapters = jax_lora.adapters_from_tensors(config, lora, trained)  # transposes only: bit-exact
lora_logits_j = adapted_forward(adapters, params)  # (B, T, V), same shapes: no recompile

# %% concept="lora_forward" side="check"
agree("LoRA-adapted logits", lora_logits_t, lora_logits_j)
assert np.abs(lora_logits_t.numpy() - base_logits.numpy()).max() > 1e-2  # the adapter does change the output

# %% [markdown] concept="frozen_base"
# ## A frozen base: `requires_grad` vs a separate pytree
#
# PyTorch marks the base frozen *on the parameters* (`requires_grad=False`): autograd skips them,
# and only the trainable ones go to the optimizer. JAX has no such flag: you differentiate with
# respect to the argument you want, here `adapters`; the base `params` are an ordinary argument that
# `jax.grad` never sees as a variable. The optimizer state is then adapter-shaped too.

# %% concept="frozen_base" side="torch"
weights = np.random.default_rng(2).standard_normal((2, 4, config.tgt_vocab_size)).astype(np.float32)
peft_model.zero_grad(set_to_none=True)
(peft_model(src_t, tgt_t) * torch.as_tensor(weights)).sum().backward()  # a scalar that uses every logit
trainable_t = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
frozen_grads = [p.grad for p in peft_model.parameters() if not p.requires_grad]
grads_t = {n.replace(".default", ""): p.grad.numpy() for n, p in trainable_t.items()}  # PEFT keys
print(torch_lora.parameter_report(peft_model))

# %% concept="frozen_base" side="jax"
def adapted_loss(adapters, params):
    return jnp.sum(jax_lora.lora_apply(jax_model, params, adapters, lora, src, tgt) * weights)


grad_tree = jax.jit(jax.grad(adapted_loss))(adapters, params)  # d loss / d adapters only (argument 0)
grads_j = jax_lora.tensors_from_adapters(config, lora, grad_tree)  # back to PEFT keys and layouts
print(jax_lora.parameter_report(params, adapters))

# %% concept="frozen_base" side="check"
assert all(g is None for g in frozen_grads)  # autograd never touched the frozen base
assert torch_lora.parameter_counts(peft_model) == jax_lora.parameter_counts(params, adapters)
assert sorted(grads_t) == sorted(grads_j)
agree("adapter gradients", np.concatenate([grads_t[k].ravel() for k in sorted(grads_t)]),
      np.concatenate([grads_j[k].ravel() for k in sorted(grads_j)]))

# %% [markdown] concept="peft_format"
# ## The PEFT file format
#
# An adapter directory holds `adapter_config.json` (PEFT's `LoraConfig` fields) and
# `adapter_model.safetensors` (PEFT keys, PEFT layouts). Both stacks write it with one writer
# (`shared/checkpoints/adapter_io.py`), so the files are byte-identical, and an adapter trained in JAX loads
# into plain `peft.PeftModel.from_pretrained`.

# %% concept="peft_format" side="torch"
import tempfile
from pathlib import Path

import peft

workdir = Path(tempfile.mkdtemp())
torch_lora.save_adapter(peft_model, workdir / "torch_adapter")
print(sorted(p.name for p in (workdir / "torch_adapter").iterdir()))

# %% concept="peft_format" side="jax"
jax_lora.save_adapter(workdir / "jax_adapter", config, lora, adapters)
# ... and the JAX-written adapter loaded by PEFT itself, on a fresh copy of the base:
fresh_base = torch_impl.from_numpy(config, {k: v.copy() for k, v in base.items()})
from_jax = peft.PeftModel.from_pretrained(fresh_base, str(workdir / "jax_adapter")).eval()
with torch.no_grad():
    from_jax_logits = from_jax(src_t, tgt_t)

# %% concept="peft_format" side="check"
for name in ("adapter_model.safetensors", "adapter_config.json"):
    same(name, (workdir / "torch_adapter" / name).read_bytes(), (workdir / "jax_adapter" / name).read_bytes())
agree("JAX adapter in peft.PeftModel.from_pretrained vs jax_impl", from_jax_logits, lora_logits_j)

# %% [markdown] concept="merge"
# ## Merging the adapter into the weights
#
# For deployment, `W ← W + scaling · B A` and the LoRA branch disappears. PEFT's
# `merge_and_unload()` rewrites the wrapped model's Linear weights in place and returns the plain
# model; `jax_lora.merge` returns a new params pytree and leaves `params` as it was.

# %% concept="merge" side="torch"
merged_t = torch_lora.merged_model(peft_model)  # a plain torch_impl.Transformer again
with torch.no_grad():
    merged_logits_t = merged_t(src_t, tgt_t)

# %% concept="merge" side="jax"
merged_params = jax_lora.merge(params, adapters, lora)  # a new pytree; `params` is unchanged
merged_logits_j = jax.jit(jax_model.apply)({"params": merged_params}, src, tgt)

# %% concept="merge" side="check"
merged_weights_t = torch_impl.state_dict_numpy(merged_t)
merged_weights_j = jax_impl.state_dict_from_params(config, merged_params)
key = "encoder.layers.0.self_attn.q_proj.weight"
agree("merged q_proj weight", merged_weights_t[key], merged_weights_j[key])
agree("merged model logits", merged_logits_t, merged_logits_j)
agree("merged (torch) vs unmerged adapter (jax)", merged_logits_t, lora_logits_j)
same("base params untouched by the JAX merge", np.asarray(params["encoder"]["layers_0"]["self_attn"]["q_proj"]["kernel"]),
     base[key].T)

# %% [markdown]
# ## Summary: where the LoRA state lives
#
# | state | PyTorch + PEFT | JAX |
# |---|---|---|
# | adapters | `lora_A` / `lora_B` sub-layers inside each wrapped Linear | `adapters["lora"][path]`, a separate pytree |
# | frozen base | `requires_grad=False` on the base parameters | `params`, an argument `jax.grad` does not differentiate |
# | optimizer state | moments for the trainable parameters only | `tx.init(adapters)` |
# | applying LoRA | the model object was modified (`get_peft_model`) | `lora_apply` intercepts `Dense` calls; the model is unchanged |
# | merge | in place: `merge_and_unload()` | `merge(params, adapters)` returns new params |
# | on disk | `adapter_config.json` + `adapter_model.safetensors` (PEFT) | the same files, byte for byte |
